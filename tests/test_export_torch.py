"""``torch``, ``safetensors``, ``dcp`` and ``lightning`` exports read back with each tool's own loader."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import bits, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger import File, Ledger
from ledger.adapters.lightning import LedgerCheckpoint
from ledger.errors import ExportError
from ledger.interop.export import export_commit
from ledger.interop.export_torch import weights_only_tree

DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
    torch.uint32, torch.uint64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2,
]  # fmt: skip


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """Any of DTYPES, 0-d to 3-d (empty too), arbitrary bits (NaNs included), maybe a strided view."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 4), max_size=3))
    n = int(np.prod(shape)) if shape else 1
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = draw(st.binary(min_size=n * itemsize, max_size=n * itemsize))
    t = (
        torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        if raw
        else torch.empty(0, dtype=torch.uint8)
    )
    t = t.view(dtype).reshape(shape) if dtype != torch.bool else (t % 2).bool().reshape(shape)
    if t.dim() >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # not contiguous
    return t


STATES = st.dictionaries(st.sampled_from(["a", "b", "c.d"]), tensors(), min_size=1, max_size=3)
SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(weights=STATES)
def test_torch_export_reads_back_with_weights_only_load_bitwise(
    lg: Ledger, tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    state = {"model": weights, "step": 3, "name": "run", "pair": (1.5, None)}
    lg.commit(state, rng=False)
    out = tmp_path / f"{len(list(tmp_path.iterdir()))}.pt"
    export_commit(lg, "HEAD", "torch", out)
    assert bits(torch.load(out, weights_only=True)) == bits(state)
    export_commit(lg, "HEAD", "torch", out, force=True, key="model")
    assert bits(torch.load(out, weights_only=True)) == bits(weights)


@SETTINGS
@given(weights=STATES)
def test_safetensors_export_reads_back_with_load_file_bitwise(
    lg: Ledger, tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    lg.commit({"model": weights}, rng=False)
    out = tmp_path / str(len(list(tmp_path.iterdir())))
    written = export_commit(lg, "HEAD", "safetensors", out)
    assert sorted(written.files) == ["metadata.json", "model.safetensors"]
    assert bits(load_file(out / "model.safetensors")) == bits(weights)


@SETTINGS
@given(weights=STATES)
def test_dcp_export_reads_back_with_dcp_load_bitwise(
    lg: Ledger, tmp_path: Path, weights: dict[str, torch.Tensor]
) -> None:
    state = {"model": weights, "step": 7}
    lg.commit(state, rng=False)
    out = tmp_path / str(len(list(tmp_path.iterdir())))
    export_commit(lg, "HEAD", "dcp", out)
    template: dict[str, Any] = {
        "model": {k: torch.empty(v.shape, dtype=v.dtype) for k, v in weights.items()},
        "step": 0,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dcp warns that no process group is initialised
        dcp.load(template, storage_reader=dcp.FileSystemReader(str(out)), no_dist=True)
    assert bits(template) == bits(state)


def test_safetensors_export_writes_file_values_as_files(lg: Ledger, tmp_path: Path) -> None:
    files = {"config.json": File(b'{"a": 1}'), "sub": {"vocab.txt": File(b"x\ny\n")}}
    lg.commit(
        {"model": {"w": torch.ones(2)}, "hf_files": files, "top.json": File(b"[]")}, rng=False
    )
    written = export_commit(lg, "HEAD", "safetensors", tmp_path / "st")
    assert sorted(written.files) == [
        "files/top.json", "hf_files/config.json", "hf_files/sub/vocab.txt", "metadata.json",
        "model.safetensors",
    ]  # fmt: skip
    assert (tmp_path / "st" / "hf_files" / "sub" / "vocab.txt").read_bytes() == b"x\ny\n"
    meta = json.loads((tmp_path / "st" / "metadata.json").read_text())
    assert meta["file_values"]["hf_files/config.json"] == "hf_files/config.json"
    assert meta["values"] == {}


def test_weights_only_tree_turns_numpy_files_and_generators_into_safe_types() -> None:
    g = torch.Generator().manual_seed(4)
    tree = weights_only_tree({"a": np.arange(3, dtype=np.int16), "s": np.float64(0.25),
                              "f": File(b"cfg"), "g": g, "l": [np.bool_(True)]})  # fmt: skip
    assert bits(tree["a"]) == bits(torch.arange(3, dtype=torch.int16)) and tree["s"] == 0.25
    assert tree["f"] == b"cfg" and torch.equal(tree["g"], g.get_state()) and tree["l"] == [True]
    with pytest.raises(ExportError, match=r"state\['u'\] is a numpy <U1 array"):
        weights_only_tree({"u": np.array(["x"])})


def test_file_exports_refuse_to_overwrite_and_name_their_options(
    lg: Ledger, tmp_path: Path
) -> None:
    lg.commit({"model": {"w": torch.ones(2)}}, rng=False)
    (tmp_path / "taken.pt").write_bytes(b"mine")
    with pytest.raises(ExportError, match="exists; choose a new file name or pass force=True"):
        export_commit(lg, "HEAD", "torch", tmp_path / "taken.pt")
    assert (tmp_path / "taken.pt").read_bytes() == b"mine"
    with pytest.raises(ExportError, match=r"takes no option 'max_shard_size' \(it takes: key\)"):
        export_commit(lg, "HEAD", "torch", tmp_path / "m.pt", max_shard_size="1GB")
    with pytest.raises(ExportError, match="has no key 'optim'"):
        export_commit(lg, "HEAD", "dcp", tmp_path / "d", key="optim")


def test_ledger_export_on_the_command_line(lg: Ledger, tmp_path: Path) -> None:
    c = lg.commit({"model": {"w": torch.arange(4.0)}}, rng=False)
    out = tmp_path / "w.pt"
    result = run_cli(
        "--dir", lg.root, "export", "HEAD", "--format", "torch", "--key", "model", out, "--json"
    )
    assert result.exit_code == 0, result.output
    assert f'"commit":"{c.id}"' in result.output
    assert torch.equal(torch.load(out, weights_only=True)["w"], torch.arange(4.0))
    bad = run_cli("--dir", lg.root, "export", "HEAD", "--format", "hf", tmp_path / "hf")
    assert bad.exit_code != 0 and "no config.json" in bad.output


# -- lightning -----------------------------------------------------------------------------


class Tiny(L.LightningModule):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.steps_run = 0

    def training_step(self, batch: Any, _idx: int) -> torch.Tensor:
        self.steps_run += 1
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader[Any]:
        g = torch.Generator().manual_seed(0)
        return DataLoader(
            TensorDataset(torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)),
            batch_size=4,
        )


def _trainer(epochs: int, **kw: Any) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, accelerator="cpu", **kw)  # fmt: skip


def test_lightning_export_resumes_with_fit_ckpt_path_and_loads_from_checkpoint(
    lg: Ledger, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    module = Tiny()
    _trainer(1, callbacks=[LedgerCheckpoint(lg)], enable_checkpointing=True).fit(module)
    out = tmp_path / "last.ckpt"
    export_commit(lg, "HEAD", "lightning", out)
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["epoch"] == 0
    assert bits(ckpt["state_dict"]) == bits(lg.checkout("HEAD")["state_dict"])

    loaded = Tiny.load_from_checkpoint(out)
    assert bits(loaded.state_dict()) == bits(module.state_dict())
    resumed = Tiny()
    trainer = _trainer(2, enable_checkpointing=False)
    trainer.fit(resumed, ckpt_path=out)
    assert resumed.steps_run == 4 and trainer.global_step == 8  # one epoch more, not two


def test_a_multi_process_lightning_commit_exports_without_its_per_rank_entries(
    lg: Ledger, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    _trainer(1, callbacks=[LedgerCheckpoint(lg)], enable_checkpointing=True).fit(Tiny())
    one = {k: v for k, v in lg.checkout("HEAD").items() if k != "__rng__"}
    ranks = [{"rng": {"torch": torch.get_rng_state()}, "loaders": []} for _ in range(2)]
    lg.commit({**one, "__ranks__": ranks}, rng=False)  # the layout a ddp job commits
    export_commit(lg, "HEAD", "lightning", tmp_path / "ddp.ckpt")
    ckpt = torch.load(tmp_path / "ddp.ckpt", weights_only=True)
    assert "__ranks__" not in ckpt and "__rng__" not in ckpt
    assert bits(ckpt) == bits(one)


def test_a_plain_commit_exports_as_a_weights_only_lightning_checkpoint(
    lg: Ledger, tmp_path: Path
) -> None:
    module = Tiny(hidden=5)
    lg.commit({"model": module.state_dict()}, step=12, epoch=2, params={"hidden": 5}, rng=False)
    export_commit(lg, "HEAD", "lightning", tmp_path / "w.ckpt")
    loaded = Tiny.load_from_checkpoint(tmp_path / "w.ckpt")
    assert loaded.hparams.hidden == 5 and bits(loaded.state_dict()) == bits(module.state_dict())
    assert torch.load(tmp_path / "w.ckpt", weights_only=True)["global_step"] == 12
