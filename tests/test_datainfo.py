"""Where the data came from: ``data`` metadata filled from real datasets, loaders and files.

Uses the real ``datasets`` library (in-memory datasets, no download), real
``torch`` loaders and the real adapters (the torch ``Checkpointer``, the
Transformers ``Trainer`` and Lightning), and reads the commits back.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import blake3
import pytest
import torch
from helpers import run_cli
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from ledger import Ledger
from ledger.adapters.torch import Checkpointer
from ledger.datainfo import describe, described, file_hashes
from ledger.errors import DataFileError

datasets = pytest.importorskip("datasets")


def _rows(n: int) -> Any:
    return datasets.Dataset.from_dict({"x": list(range(n)), "y": [i % 2 for i in range(n)]})


def test_a_datasets_dataset_gives_its_rows_split_and_a_fingerprint_each_transform_changes() -> None:
    ds = datasets.Dataset.from_dict({"x": [1, 2, 3]}, split="train")
    info = describe(ds)
    assert info is not None
    assert info["num_rows"] == 3 and info["split"] == "train"
    assert info["fingerprint"] == ds._fingerprint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mapped = ds.map(lambda r: {"x": r["x"] * 2}, keep_in_memory=True)
    assert describe(mapped)["fingerprint"] != info["fingerprint"]  # type: ignore[index]


def test_a_dataset_dict_gives_every_split_size() -> None:
    dd = datasets.DatasetDict({"train": _rows(10), "test": _rows(3)})
    info = describe(dd)
    assert info is not None
    assert {k: v["num_rows"] for k, v in info["splits"].items()} == {"train": 10, "test": 3}


def test_a_loader_gives_its_dataset_class_length_batch_size_and_sampler() -> None:
    loader = DataLoader(TensorDataset(torch.zeros(10, 2)), batch_size=3, shuffle=True)
    assert describe(loader) == {
        "class": "torch.utils.data.dataloader.DataLoader",
        "dataset": {"class": "torch.utils.data.dataset.TensorDataset", "length": 10},
        "batch_size": 3,
        "sampler": "torch.utils.data.sampler.RandomSampler",
        "drop_last": False,
        "batches": 4,
    }
    over_hf = describe(DataLoader(_rows(8).with_format("torch"), batch_size=4))
    assert over_hf is not None and over_hf["dataset"]["num_rows"] == 8


class _Stream(IterableDataset[int]):
    def __iter__(self) -> Any:
        return iter(range(3))


def test_a_stream_without_a_length_is_described_without_one() -> None:
    info = describe(DataLoader(_Stream(), batch_size=2))
    assert info is not None
    assert "length" not in info["dataset"] and "batches" not in info
    assert info["dataset"]["class"].endswith("_Stream")


def test_file_hashes_are_blake3_read_once_while_size_and_mtime_stay(tmp_path: Path) -> None:
    f = tmp_path / "train.jsonl"
    f.write_bytes(b'{"x": 1}\n')
    first = file_hashes([f])[str(f)]
    assert first == {"blake3": blake3.blake3(b'{"x": 1}\n').hexdigest(), "bytes": 9}
    st = f.stat()
    f.write_bytes(b'{"x": 2}\n')  # same size; put the old mtime back: the cached hash stands
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_hashes([f])[str(f)] == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: read again
    assert file_hashes([f])[str(f)]["blake3"] == blake3.blake3(b'{"x": 2}\n').hexdigest()
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a")
    (folder / "b.bin").write_bytes(b"bb")
    assert sorted(file_hashes([folder])) == [str(folder / "a.bin"), str(folder / "b.bin")]


def test_a_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"missing\.jsonl.*data_files="):
        file_hashes([tmp_path / "missing.jsonl"])


def test_what_the_user_passes_wins_over_what_is_found() -> None:
    found = described({"train": "wikitext@r1", "name": "mine"}, train=[1, 2, 3], eval=[1])
    assert found == {
        "train": "wikitext@r1",
        "eval": {"class": "builtins.list", "length": 1},
        "name": "mine",
    }


def test_the_checkpointer_records_the_loader_files_and_user_data(tmp_path: Path) -> None:
    data_file = tmp_path / "train.bin"
    data_file.write_bytes(b"\x00" * 100)
    model = torch.nn.Linear(2, 1)
    loader = DataLoader(_rows(12).with_format("torch"), batch_size=4)
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg:
        ckpt = Checkpointer(
            lg, model=model, dataloader=loader, data={"source": "toy"}, data_files=[data_file]
        )
        ckpt.commit(1)
        data = lg.get("HEAD").meta["data"]
        assert data["source"] == "toy"
        assert data["train"]["dataset"]["num_rows"] == 12
        assert data["files"][str(data_file)]["bytes"] == 100
    shown = run_cli("--dir", tmp_path / "ckpt", "show", "HEAD")
    assert shown.exit_code == 0 and "toy" in shown.output and "num_rows" in shown.output


def test_the_trainer_records_its_train_and_eval_datasets(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from ledger.adapters.transformers import LedgerCallback

    def tokens(n: int) -> Any:
        ids = torch.arange(n * 8).reshape(n, 8) % 32
        return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})

    train, evals = tokens(16), tokens(4)
    config = transformers.GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    torch.manual_seed(0)
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cb = LedgerCallback(lg, data={"eval": "held-out v2"})
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"),
            per_device_train_batch_size=4,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            max_steps=2,
            save_steps=2,
        )
        transformers.Trainer(
            model=transformers.GPT2LMHeadModel(config),
            args=args,
            train_dataset=train,
            eval_dataset=evals,
            callbacks=[cb],
        ).train()
        data = lg.get("HEAD").meta["data"]
    assert data["train"]["fingerprint"] == train._fingerprint
    assert data["train"]["num_rows"] == 16
    assert data["eval"] == "held-out v2"  # the user's value wins


def test_lightning_records_the_train_loader(tmp_path: Path) -> None:
    L = pytest.importorskip("lightning.pytorch")
    from ledger.adapters.lightning import LedgerCheckpoint

    class Tiny(L.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, idx: int) -> Any:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    x = torch.randn(16, 4)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            max_epochs=1,
            callbacks=[LedgerCheckpoint(lg)],
            accelerator="cpu",
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Tiny(), loader)
        data = lg.get("HEAD").meta["data"]
    assert data["train"]["dataset"] == {
        "class": "torch.utils.data.dataset.TensorDataset",
        "length": 16,
    }
    assert data["train"]["batch_size"] == 4
