"""``hf`` and ``peft`` exports: folders that from_pretrained loads, equal to the commit bitwise."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import bits, flip_stored_byte
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from ledger import File, Ledger
from ledger.adapters._common import AdapterError
from ledger.adapters._hf_files import hf_files
from ledger.errors import CorruptionError, ExportError
from ledger.history.tree import tensor_table
from ledger.interop.export import export_commit


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(30)} | {"[UNK]": 30, "[PAD]": 31}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")


def _gpt2(seed: int = 0, layers: int = 2) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=32, n_positions=8, n_embd=16, n_layer=layers, n_head=2, bos_token_id=0,
        eos_token_id=1, pad_token_id=31,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def _shards(out: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def test_hf_export_is_a_sharded_save_pretrained_folder_that_loads_with_identical_outputs(
    lg: Ledger, tmp_path: Path
) -> None:
    model, tok = _gpt2(), _tokenizer()
    c = lg.commit({"model": model, "hf_files": hf_files(model, tok)}, rng=False)
    assert model.config.architectures is None  # hf_files changed a copy of the config only
    out = tmp_path / "hf"
    written = export_commit(lg, "HEAD", "hf", out, max_shard_size="4KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= set(written.files)
    assert written.commit == c.id and sum(1 for f in written.files if f in shards) == len(shards)
    stored = lg.checkout(c.id)["model"]
    assert bits(_shards(out)) == bits(dict(stored))  # every name, bit for bit (tied ones too)

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded) is GPT2LMHeadModel
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()
    ids = AutoTokenizer.from_pretrained(out)("w1 w2 w7 w3", return_tensors="pt").input_ids
    assert ids.tolist() == [[1, 2, 7, 3]]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]


def test_hf_export_below_the_shard_size_is_one_model_safetensors(
    lg: Ledger, tmp_path: Path
) -> None:
    model = _gpt2(1)
    lg.commit({"model": model, "hf_files": hf_files(model)}, rng=False)
    written = export_commit(lg, "HEAD", "hf", tmp_path / "hf")
    assert sorted(written.files) == ["config.json", "generation_config.json", "model.safetensors"]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert bits(loaded.state_dict()) == bits(model.state_dict())


def test_hf_export_reads_only_the_model_and_its_files(lg: Ledger, tmp_path: Path) -> None:
    model = _gpt2(2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.tensor([[1, 2]])).logits.sum().backward()
    opt.step()
    c = lg.commit({"model": model, "hf_files": hf_files(model), "optim": opt}, rng=False)
    _, manifest = lg.manifest(c.id)
    moments = tensor_table(manifest.root)["optim/state/0/exp_avg"]
    flip_stored_byte(lg, moments.chunks[0])  # damage the optimizer, not the model
    export_commit(lg, c.id, "hf", tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert bits(loaded.state_dict()) == bits(model.state_dict())
    with pytest.raises(CorruptionError, match="exp_avg"):
        export_commit(lg, c.id, "torch", tmp_path / "all.pt")  # the whole state: read, refused


_CUSTOM = """
import torch
from transformers import PreTrainedConfig, PreTrainedModel


class TinyConfig(PreTrainedConfig):
    model_type = "ledger-tiny"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = torch.nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, x):
        return torch.tanh(self.proj(x)) * 3
"""


def test_a_custom_code_model_keeps_its_code_and_loads_with_trust_remote_code(
    lg: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ledger_tiny_model.py").write_text(_CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    import ledger_tiny_model as mod

    mod.TinyConfig.register_for_auto_class()
    mod.TinyModel.register_for_auto_class("AutoModel")
    torch.manual_seed(3)
    model = mod.TinyModel(mod.TinyConfig(width=4)).eval()
    files = hf_files(model)
    assert "ledger_tiny_model.py" in files
    assert json.loads(files["config.json"].text())["auto_map"]["AutoModel"].endswith("TinyModel")
    lg.commit({"model": model, "hf_files": files}, rng=False)
    sys.modules.pop("ledger_tiny_model")
    export_commit(lg, "HEAD", "hf", tmp_path / "hf")
    loaded = AutoModel.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    x = torch.randn(2, 4)
    assert type(loaded).__name__ == "TinyModel" and torch.equal(loaded(x), model(x))


def test_hf_export_refuses_a_commit_without_its_files_and_names_the_fix(
    lg: Ledger, tmp_path: Path
) -> None:
    lg.commit({"model": _gpt2()}, rng=False)
    with pytest.raises(ExportError, match=r"no config\.json under 'hf_files'.*hf_files\(model"):
        export_commit(lg, "HEAD", "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    with pytest.raises(ExportError, match="inside the ledger"):
        export_commit(lg, "HEAD", "torch", lg.root / "objects" / "x.pt")
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        export_commit(lg, "HEAD", "onnx", tmp_path / "x")
    with pytest.raises(AdapterError, match="no transformers config"):
        hf_files(torch.nn.Linear(2, 2))


def test_hf_export_refuses_file_names_that_leave_the_folder(lg: Ledger, tmp_path: Path) -> None:
    files = {"config.json": File(b"{}"), "..": {"evil.py": File(b"x")}}
    lg.commit({"model": {"w": torch.ones(1)}, "hf_files": files}, rng=False)
    with pytest.raises(ExportError, match="not a plain relative path"):
        export_commit(lg, "HEAD", "hf", tmp_path / "hf")
    assert not (tmp_path / "evil.py").exists()


# -- peft ----------------------------------------------------------------------------------


def _peft(base: GPT2LMHeadModel) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=2, lora_alpha=4, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True
    )
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p))  # LoRA starts at B = 0: make the adapter matter
    return model.eval()


def test_peft_export_loads_with_peft_model_from_pretrained_and_matches(
    lg: Ledger, tmp_path: Path
) -> None:
    from peft import PeftModel

    base = _gpt2(5)
    pristine = copy.deepcopy(base)
    model = _peft(base)
    lg.commit({"model": model, "hf_files": hf_files(model)}, rng=False)
    out = tmp_path / "adapter"
    written = export_commit(lg, "HEAD", "peft", out)
    assert sorted(written.files) == ["adapter_config.json", "adapter_model.safetensors"]
    saved = load_file(out / "adapter_model.safetensors")
    assert saved and all("lora_" in k and ".default." not in k for k in saved)
    loaded = PeftModel.from_pretrained(pristine, out).eval()
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        assert not torch.equal(loaded(ids).logits, _gpt2(5)(ids).logits)  # the adapter acts


def test_committing_a_peft_model_stores_its_frozen_base_once(lg: Ledger) -> None:
    model = _peft(_gpt2(6, layers=3))
    first = lg.commit({"model": model, "hf_files": hf_files(model)}, rng=False)
    adapter = [p for n, p in model.named_parameters() if "lora_" in n]
    for step in range(2, 5):
        with torch.no_grad():
            for p in adapter:
                p.add_(0.01)
        c = lg.commit({"model": model, "hf_files": hf_files(model)}, rng=False)
        # only the adapter's tensors are new: one chunk each; base and files are shared
        assert c.stats.chunks_written == len(adapter), step
        assert c.stats.bytes_written < first.stats.bytes_written / 10
    with pytest.raises(ExportError, match="no tensors of adapter 'other'"):
        export_commit(lg, "HEAD", "peft", lg.root.parent / "a", adapter_name="other")
    with pytest.raises(ExportError, match=r"holds a PEFT model.*--format peft"):
        export_commit(lg, "HEAD", "hf", lg.root.parent / "hf")
