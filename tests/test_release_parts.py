"""The parts of ``release`` that need no Hub: URL and ref-name parsing, canonical safetensors
headers, the card's auto class and the files an earlier release's card lists.

Property tests (hypothesis) for the parsers and for the header rewrite: whatever
safetensors wrote, the rewrite keeps every tensor bit-exact, is idempotent, and
makes files with equal tensors equal bytes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from ledger.errors import RefNameError, RemoteURLError
from ledger.remotes.card import auto_class, released_files
from ledger.remotes.release import canonical_safetensors, check_revision, parse_hub_url

NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)


@given(NAME, NAME)
def test_a_hub_url_parses_to_its_repo_id(org: str, name: str) -> None:
    assert parse_hub_url(f"hf://{org}/{name}") == f"{org}/{name}"
    assert parse_hub_url(f"hf://{org}/{name}/") == f"{org}/{name}"


@given(st.text(max_size=40))
def test_any_text_is_a_repo_id_or_a_url_error(text: str) -> None:
    try:
        repo_id = parse_hub_url(text)
    except RemoteURLError:
        return
    org, name = repo_id.split("/")
    assert text.startswith("hf://") and org and name and "@" not in repo_id


@given(st.text(max_size=60))
def test_a_ref_name_is_valid_or_refused(text: str) -> None:
    try:
        assert check_revision(text, "branch") == text
    except RefNameError:
        return
    assert ".." not in text and " " not in text and not text.startswith(("-", "/", "."))


tensors = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9_.]{0,12}", fullmatch=True),
    st.tuples(
        st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.bool]),
        st.lists(st.integers(0, 5), max_size=3),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(tensors, st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=70), max_size=4))
def test_canonical_headers_keep_the_tensors_and_depend_on_them_alone(
    spec: dict[str, tuple[torch.dtype, list[int]]], metadata: dict[str, str]
) -> None:
    torch.manual_seed(0)
    state = {k: (torch.rand(shape) * 100).to(dtype) for k, (dtype, shape) in spec.items()}
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "a.safetensors", Path(tmp) / "b.safetensors"
        save_file(state, str(a), metadata={"format": "pt", **metadata})
        save_file(state, str(b), metadata={"format": "pt", "ledger.commit": "x" * 64})
        canonical_safetensors(a)
        canonical_safetensors(b)
        assert a.read_bytes() == b.read_bytes()
        assert not canonical_safetensors(a)  # idempotent
        back = load_file(str(a))
        assert back.keys() == state.keys()
        for k, t in state.items():
            assert back[k].dtype == t.dtype and torch.equal(back[k], t)
        header_len = int.from_bytes(a.read_bytes()[:8], "little")
        assert header_len % 8 == 0


def test_the_card_names_the_auto_class_and_lists_earlier_files() -> None:
    assert auto_class(b'{"architectures": ["LlamaForCausalLM"]}') == "AutoModelForCausalLM"
    assert auto_class(b'{"architectures": ["BertForMaskedLM"]}') == "AutoModelForMaskedLM"
    assert auto_class(b'{"architectures": ["CLIPModel"]}') == "AutoModel"
    assert auto_class(b"not json") == auto_class(None) == "AutoModel"
    card = "---\ntraining_ledger:\n  files:\n  - config.json\n  - model.safetensors\n---\n# x\n"
    assert released_files(card) == ["config.json", "model.safetensors"]
    assert released_files("# a hand-written card\n") == []
    assert released_files("---\ntraining_ledger: 3\n---\n") == []


@pytest.mark.parametrize("bad", ["hf://org/a/b", "hf://org", "hf://-x/y", "org/name", "s3://o/n"])
def test_bad_urls_name_the_form(bad: str) -> None:
    with pytest.raises(RemoteURLError, match=r"hf://<user or org>/<name>"):
        parse_hub_url(bad)
