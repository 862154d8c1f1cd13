"""Metadata capture: what every commit records, and that secrets never enter the ledger."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import torch
from helpers import git_repo, stored_byte_strings

from ledger import Ledger
from ledger.metadata import redact_argv, strip_url_credentials

SCRIPT = Path(__file__).parent / "scripts" / "commit_with_secrets.py"


def test_planted_secrets_appear_nowhere_in_the_ledger(tmp_path: Path) -> None:
    planted = {
        name: secrets.token_urlsafe(24) for name in ("hf", "aws", "wandb", "pw", "tok", "eq")
    }
    repo = git_repo(
        tmp_path / "repo", f"https://alice:{planted['pw']}@git.example.com/org/repo.git"
    )
    env = dict(os.environ)
    env.update(
        HF_TOKEN=planted["hf"],
        AWS_SECRET_ACCESS_KEY=planted["aws"],
        WANDB_API_KEY=planted["wandb"],
        HF_HOME="/tmp/hf-home-kept",
    )
    ledger_dir = tmp_path / "ckpt"
    subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(ledger_dir),
            "--token",
            planted["tok"],
            f"--api-key={planted['eq']}",
        ],
        cwd=repo,
        env=env,
        check=True,
    )
    stored = stored_byte_strings(ledger_dir)
    for name, value in planted.items():
        assert not any(value.encode() in blob for blob in stored), f"secret {name} leaked"
    with Ledger.open(ledger_dir) as lg:
        meta = lg.head.meta  # type: ignore[union-attr]
    # What should be there is there: the remote without credentials, redacted flags, safe env.
    assert meta["code"]["git"]["remote"] == "https://git.example.com/org/repo.git"
    assert meta["code"]["argv"][-3:] == ["--token", "<redacted>", "--api-key=<redacted>"]
    assert meta["env"]["env"]["HF_HOME"] == "/tmp/hf-home-kept"
    assert "HF_TOKEN" not in meta["env"]["env"]
    assert meta["data"] == {"dataset": "synthetic", "revision": "v1"}


def test_commit_records_code_env_hardware_and_model_summary(lg: Ledger) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model[1].requires_grad_(False)
    c = lg.commit({"model": model}, step=3)
    meta = c.meta
    assert meta["model"]["model"]["parameters"] == 4 * 8 + 8 + 8 * 2 + 2
    assert meta["model"]["model"]["trainable"] == 4 * 8 + 8
    assert meta["model"]["model"]["children"] == {"0": 40, "1": 18}
    assert meta["model"]["model"]["dtypes"] == {"float32": 58}
    assert meta["env"]["versions"]["torch"] == torch.__version__
    assert meta["hardware"]["cpu_count"] == os.cpu_count()
    assert meta["hardware"]["world_size"] == 1
    # The package list is stored once as an object and shared by every commit.
    packages = lg.store.read(bytes.fromhex(meta["env"]["packages"]), "packages")
    assert b"torch==" in packages
    c2 = lg.commit({"model": model}, step=4)
    assert c2.meta["env"]["packages"] == meta["env"]["packages"]
    c3 = lg.commit({"model": model}, rng=False)
    assert c3.stats.logical_bytes == sum(p.numel() * 4 for p in model.parameters())
    assert c3.stats.chunks_written == 0


def test_redaction_rules() -> None:
    assert redact_argv(["x", "--password", "p", "--hf-token=t", "--lr=3"]) == [
        "x",
        "--password",
        "<redacted>",
        "--hf-token=<redacted>",
        "--lr=3",
    ]
    assert (
        strip_url_credentials("see s3://key:secret@bucket/x and http://h/y")
        == "see s3://bucket/x and http://h/y"
    )
    assert strip_url_credentials("https://token@github.com/a") == "https://github.com/a"
