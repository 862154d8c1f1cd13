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
    model = torch.nn.Sequential(*[torch.nn.Linear(2048, 2048) for _ in range(8)])  # ~128 MiB
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # + ~256 MiB of moments
    model(torch.randn(2, 2048)).sum().backward()
    opt.step()
    state = {"model": model, "optim": opt}
    moments = lambda: [t.clone() for s in opt.state.values() for t in s.values()]
    out = {}
    with Ledger.open(sys.argv[1], create=True, fsync=True) as lg:
        lg.commit(state, rng=False)  # warm up: imports, thread pool, metadata
        committed = moments()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        base = rss("VmRSS"); reset_peak()
        lg.commit(state, rng=False)
        out["commit"] = rss("VmHWM") - base
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            for s in opt.state.values():
                for t in s.values():
                    t.zero_()
        base = rss("VmRSS"); reset_peak()
        lg.restore(state, "HEAD~1", rng=False)
        out["restore"] = rss("VmHWM") - base
        out["restored_nonzero"] = bool(model[0].weight.abs().sum() > 0)
        out["moments_exact"] = all(torch.equal(a, b) for a, b in zip(committed, moments()))
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset"
)
def test_commit_and_restore_of_model_and_optimizer_add_far_less_than_the_state_size(
    tmp_path: Path,
) -> None:
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
    assert figures["restored_nonzero"] and figures["moments_exact"]
    # A few 4 MiB chunks per worker plus encoder buffers: not a copy of the 128 MiB
    # model, nor of the 256 MiB of optimizer moments (read into the live ones).
    limit = 96 << 20
    assert figures["commit"] < limit, figures
    assert figures["restore"] < limit, figures
