"""examples/import_export.py, the second half of ``make demo``, run as a user runs it.

The script itself checks (bitwise) that a continuation from an imported Trainer
run equals the Trainer's own resume and that the ``hf`` export loads with
``from_pretrained`` to the same logits; this test runs it in a fresh process
and holds it to its exit status and to every one of those ``OK`` lines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ledger import Ledger

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "import_export.py"

CHECKS = [
    "OK one commit per checkpoint folder",
    "OK commits in step order [2, 4]",
    "OK continuation equals the Trainer's own resume (parameters, bitwise)",
    "OK same losses after step 4:",
    "OK from_pretrained(export) gives the live model's logits",
    "all checks OK",
]


def test_the_import_export_example_passes_every_check(tmp_path: Path) -> None:
    where = tmp_path / "ledger"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--dir", str(where)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    for expected in CHECKS:
        assert any(line.startswith(expected) for line in lines), (expected, done.stdout)
    assert not any(line.startswith("FAIL") for line in lines), done.stdout
    # what it left in the ledger: the imported steps 2 and 4, then the continuation to 6
    lg = Ledger.open(where)
    try:
        assert [c.step for c in lg.log("gpt2-run")][::-1] == [2, 4, 6]
    finally:
        lg.close()
