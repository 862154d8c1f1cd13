"""The one-pass fingerprint + id of a new chunk equals the two separate hashes."""

from __future__ import annotations

import xxhash
from hypothesis import given
from hypothesis import strategies as st

from ledger.objects.hashing import hash_bytes
from ledger.objects.store import FUSED_PIECE, _both_hashes

sizes = st.sampled_from([0, 1, FUSED_PIECE - 1, FUSED_PIECE, FUSED_PIECE + 1, 3 * FUSED_PIECE + 7])


@given(size=sizes, seed=st.integers(0, 255))
def test_both_hashes_in_one_pass_equal_each_hash_alone(size: int, seed: int) -> None:
    data = bytes((seed + i * 31) % 256 for i in range(size % 4099)) * (size // 4099 + 1)
    view = memoryview(data[:size])
    fast, strong = _both_hashes(view)
    assert fast == xxhash.xxh3_128_digest(view)
    assert strong == hash_bytes(view)
