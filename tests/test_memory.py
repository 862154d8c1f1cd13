"""Peak memory: a commit and a restore add at most a few chunks per worker, never a copy of the state."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CHILD = textwrap.dedent(
    """
    import json, sys, torch
    from ledger import Ledger

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        raise SystemExit("no " + field)

    def reset_peak():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(16)])  # ~256 MiB
    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"state": state_bytes}
    with Ledger.open(sys.argv[1], create=True, fsync=True) as lg:
        lg.commit({"model": model}, rng=False)  # warm up: imports, thread pool, metadata
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        base = rss("VmRSS"); reset_peak()
        lg.commit({"model": model}, rng=False)
        out["commit"] = rss("VmHWM") - base
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        base = rss("VmRSS"); reset_peak()
        lg.restore({"model": model}, "HEAD~1", rng=False)
        out["restore"] = rss("VmHWM") - base
        out["restored_nonzero"] = bool(model[0].weight.abs().sum() > 0)
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset"
)
def test_commit_and_restore_peak_memory_stays_far_below_the_state_size(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["restored_nonzero"]
    limit = 96 << 20  # a few 4 MiB chunks per worker plus encoder buffers, not a 256 MiB copy
    assert figures["commit"] < limit, figures
    assert figures["restore"] < limit, figures
