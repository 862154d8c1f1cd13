"""A full disk while writing a commit out is one clear error and leaves nothing half-written.

Runs on a real, tiny tmpfs (mounted for the test; skipped where this process
may not mount one): the commands check the space first, and when the disk
fills up during the write anyway, the errors the real writers raise
(safetensors' ``SafetensorError``, ``torch.save``'s ``RuntimeError``, DCP's
``CheckpointException``) become a ``DiskFullError`` and what the write created
is removed.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from helpers import tiny_disk as mount_tiny_disk

from ledger import Ledger
from ledger.errors import DiskFullError
from ledger.interop.space import guarded_output


@pytest.fixture
def tiny_disk() -> Iterator[Path]:
    """A 1 MiB tmpfs."""
    with mount_tiny_disk("1m") as where:
        yield where


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """A ledger whose one commit holds 2.4 MB of tensors (more than the tiny disk)."""
    root = tmp_path / "ckpt"
    with Ledger.open(root, create=True, fsync=False) as lg:
        lg.commit({"w": torch.randn(600_000)}, step=1, rng=False)
    return root


@pytest.mark.parametrize(
    "args",
    [
        ("checkout", "HEAD", "--out", "{d}/out"),
        ("export", "HEAD", "{d}/model.pt", "--format", "torch"),
        ("export", "HEAD", "{d}/st", "--format", "safetensors"),
        ("export", "HEAD", "{d}/dcp", "--format", "dcp"),
    ],
    ids=["checkout --out", "export torch", "export safetensors", "export dcp"],
)
def test_a_write_out_too_big_for_the_disk_is_refused_before_writing(
    big: Path, tiny_disk: Path, args: tuple[str, ...]
) -> None:
    result = run_cli("--dir", big, *(a.format(d=tiny_disk) for a in args))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "needs about 2.4 MiB" in lines[0] and "1.0 MiB free" in lines[0]
    assert list(tiny_disk.iterdir()) == []


def _torch_save(out: Path) -> None:
    torch.save({"w": torch.zeros(512 << 10)}, out)


def _safetensors_save(out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir()
    save_file({"w": torch.zeros(512 << 10)}, out / "model.safetensors")


def _dcp_save(out: Path) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save(
        {"w": torch.zeros(512 << 10)}, storage_writer=dcp.FileSystemWriter(str(out)), no_dist=True
    )


@pytest.mark.parametrize(
    "write", [_torch_save, _safetensors_save, _dcp_save], ids=["torch", "safetensors", "dcp"]
)
def test_a_disk_that_fills_up_while_writing_is_a_disk_full_error_and_the_output_goes(
    tiny_disk: Path, write: Callable[[Path], None]
) -> None:
    out = tiny_disk / "out"
    # the estimate says it fits (0 bytes claimed): the real writer then hits ENOSPC
    with (
        pytest.raises(
            DiskFullError, match=r"filled up during the export.*nothing was left"
        ) as info,
        guarded_output(out, 0, "export"),
    ):
        write(out)
    assert info.value.errno == errno.ENOSPC
    assert not out.exists()
    assert list(tiny_disk.iterdir()) == []


def test_an_output_that_existed_is_never_removed(tiny_disk: Path) -> None:
    out = tiny_disk / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("the user's")
    with pytest.raises(DiskFullError, match="may hold partial files"), guarded_output(out, 0, "x"):
        _safetensors_save(out / "inner")
    assert (out / "keep.txt").read_text() == "the user's"


def test_any_other_failure_also_leaves_nothing_and_keeps_its_own_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="a bug in the writer"), guarded_output(out, 0, "x"):
        out.mkdir()
        (out / "half.bin").write_bytes(b"x" * 100)
        raise ValueError("a bug in the writer")
    assert not out.exists()
