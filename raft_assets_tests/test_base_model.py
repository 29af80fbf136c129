"""The base model: the tiny Llama built from the corpus, local and cached checkpoints, the pointer file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raft_assets.contracts.layout import Layout
from raft_assets.training.base_model import (
    BEGIN_OF_TEXT,
    END_HEADER,
    EOT,
    PAD,
    SPECIAL_TOKENS,
    START_HEADER,
    TINY,
    TINY_CONTEXT_LENGTH,
    BaseModel,
    BaseModelMissing,
    BaseModelUnavailable,
    build_tiny_model,
    load_tokenizer,
    read_pointer,
    resolve_base_model,
    write_pointer,
)

DATA = Path(__file__).resolve().parents[1] / "data"
MESSAGES = [
    {"role": "system", "content": "You answer from the documents."},
    {"role": "user", "content": "What does FSDP shard?"},
    {"role": "assistant", "content": "Parameters, gradients and optimizer state."},
]


def sample_corpus() -> list[str]:
    """The markdown and text pages of the shipped sample corpus."""
    return [path.read_text(encoding="utf-8") for path in sorted([*DATA.rglob("*.md"), *DATA.rglob("*.txt")])]


def no_corpus() -> list[str]:
    raise AssertionError("the corpus is only read for the tiny model")


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    return build_tiny_model(tmp_path_factory.mktemp("base") / TINY, sample_corpus())


def test_tiny_model_loads_and_generates(tiny: BaseModel):
    model = AutoModelForCausalLM.from_pretrained(tiny.path)
    tokenizer = load_tokenizer(tiny)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert model.config.rope_parameters["rope_theta"] == 500000.0
    assert tiny.built and tiny.context_length == TINY_CONTEXT_LENGTH == tokenizer.model_max_length
    assert tiny.parameters == sum(parameter.numel() for parameter in model.parameters())
    assert 1_000_000 < tiny.parameters < 5_000_000
    assert tiny.vocab_size == len(tokenizer) == model.config.vocab_size
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids(EOT)
    assert model.generation_config.pad_token_id == tokenizer.convert_tokens_to_ids(PAD)

    inputs = tokenizer(["Fully sharded data parallel"], return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5)
    assert output.shape == (1, inputs.input_ids.shape[1] + 5)
    assert isinstance(tokenizer.decode(output[0, -5:]), str)


def test_chat_template_has_the_llama3_structure(tiny: BaseModel):
    tokenizer = AutoTokenizer.from_pretrained(tiny.path)
    text = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou answer from the documents.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat does FSDP shard?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tokenizer.apply_chat_template(MESSAGES, tokenize=False).endswith("optimizer state.<|eot_id|>")

    ids = tokenizer.apply_chat_template(MESSAGES[:2], tokenize=True, add_generation_prompt=True, return_dict=False)
    special = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)), strict=True))
    assert len(set(special.values())) == len(SPECIAL_TOKENS)
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    assert ids[:2] == [special[BEGIN_OF_TEXT], special[START_HEADER]]
    assert ids[-2:] == tokenizer.encode(f"{END_HEADER}\n\n", add_special_tokens=False)
    assert ids.count(special[EOT]) == 2 and ids.count(special[START_HEADER]) == 3
    for token in SPECIAL_TOKENS:
        assert tokenizer.encode(token, add_special_tokens=False) == [special[token]]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (BEGIN_OF_TEXT, EOT, PAD)


@pytest.mark.parametrize(
    "text",
    [
        "Llama 3 uses grouped-query attention — with 8 key/value heads.",
        "café, naïve, élève; 日本語; emoji 🦙\ttabs\n\n  and  spaces ",
        "Unseen words: Zyxwvut qqqq 1234567890 ##begin_quote## <ANSWER>: x",
    ],
)
def test_text_round_trips(tiny: BaseModel, text: str):
    tokenizer = load_tokenizer(tiny)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    with_bos = tokenizer.encode(text)
    assert with_bos == [tokenizer.bos_token_id, *ids]
    assert tokenizer.decode(with_bos, skip_special_tokens=True) == text


def test_build_is_deterministic(tmp_path: Path):
    first = build_tiny_model(tmp_path / "first", sample_corpus())
    second = build_tiny_model(tmp_path / "second", sample_corpus())
    assert file_bytes(first.path) == file_bytes(second.path)
    assert set(file_bytes(first.path)) >= {"model.safetensors", "tokenizer.json", "config.json", "build.json"}

    reseeded = build_tiny_model(tmp_path / "reseeded", sample_corpus(), seed=1)
    assert (reseeded.path / "tokenizer.json").read_bytes() == (first.path / "tokenizer.json").read_bytes()
    assert (reseeded.path / "model.safetensors").read_bytes() != (first.path / "model.safetensors").read_bytes()


def test_a_failed_rebuild_keeps_the_previous_build(tmp_path: Path):
    target = tmp_path / "base" / TINY
    build_tiny_model(target, sample_corpus())
    before = file_bytes(target)
    with pytest.raises(TypeError):
        build_tiny_model(target, ["a text", 42])  # fails while training the tokenizer, half way through the build
    assert file_bytes(target) == before
    assert [path.name for path in target.parent.iterdir()] == [TINY]


def test_resolver_reuses_the_build_until_the_corpus_changes(tmp_path: Path):
    corpus = sample_corpus()
    built = resolve_base_model(TINY, Layout.of(tmp_path, tmp_path), lambda: corpus)
    assert built.built and built.path == (tmp_path / "base" / TINY).resolve()
    weights = built.path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    reused = resolve_base_model(TINY, Layout.of(tmp_path, tmp_path), lambda: corpus)
    assert not reused.built
    assert reused == BaseModel(**{**vars(built), "built": False})
    assert weights.stat().st_mtime_ns == mtime

    changed = [*corpus, "A new page about retrieval augmented fine tuning and its distractor documents."]
    rebuilt = resolve_base_model(TINY, Layout.of(tmp_path, tmp_path), lambda: changed)
    assert rebuilt.built
    assert json.loads((rebuilt.path / "build.json").read_text())["documents"] == len(changed)

    weights.unlink()  # an incomplete folder is rebuilt, not used
    assert resolve_base_model(TINY, Layout.of(tmp_path, tmp_path), lambda: changed).built
    assert weights.is_file()


def test_local_directory(tiny: BaseModel, tmp_path: Path):
    model = resolve_base_model(str(tiny.path), Layout.of(tmp_path, tmp_path), no_corpus)
    assert model == BaseModel(**{**vars(tiny), "name": str(tiny.path), "built": False})

    local = tmp_path / "long_context"
    shutil.copytree(tiny.path, local)
    config = json.loads((local / "config.json").read_text())
    (local / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 131072}))
    assert resolve_base_model(str(local), Layout.of(tmp_path, tmp_path), no_corpus).context_length == 8192


def test_sharded_local_directory(tiny: BaseModel, tmp_path: Path):
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny.path).save_pretrained(sharded, max_shard_size="2MB")
    load_tokenizer(tiny).save_pretrained(sharded)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    assert resolve_base_model(str(sharded), Layout.of(tmp_path, tmp_path), no_corpus).parameters == tiny.parameters


def test_local_directory_without_tokenizer_or_safetensors_is_a_clear_error(tiny: BaseModel, tmp_path: Path):
    local = tmp_path / "no_tokenizer"
    shutil.copytree(tiny.path, local)
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (local / name).unlink()
    (local / "pytorch_model.bin").write_bytes(b"a pickle is never loaded")
    with pytest.raises(BaseModelUnavailable) as error:
        resolve_base_model(str(local), Layout.of(tmp_path, tmp_path), no_corpus)
    message = str(error.value)
    assert "cannot be used: missing tokenizer_config.json, tokenizer.json (or tokenizer.model)" in message
    assert "model.safetensors" in message and ".bin weights are not loaded" in message


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of our own, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    return tmp_path / "hf_home" / "hub"


@pytest.mark.parametrize("name", ["meta-llama/Meta-Llama-3-8B-Instruct", "/models/no-such-folder"])
def test_a_model_neither_local_nor_cached_is_a_clear_offline_error(hf_cache: Path, tmp_path: Path, name: str):
    with pytest.raises(BaseModelUnavailable) as error:
        resolve_base_model(name, Layout.of(tmp_path, tmp_path), no_corpus)
    assert str(error.value) == (
        f"Base model {name!r} is neither a local directory nor in the Hugging Face cache, and models are never "
        f"downloaded at run time: download it first (hf download {name} --exclude 'original/*') "
        "or set RAFT_BASE_MODEL to a local path."
    )


def test_a_cached_hub_model_is_found(hf_cache: Path, tiny: BaseModel, tmp_path: Path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_cache / "models--acme--tiny-llama"
    shutil.copytree(tiny.path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    model = resolve_base_model("acme/tiny-llama", Layout.of(tmp_path, tmp_path), no_corpus)
    assert model.path == (repo / "snapshots" / commit).resolve()
    assert (model.name, model.parameters, model.vocab_size) == ("acme/tiny-llama", tiny.parameters, tiny.vocab_size)


def test_pointer_round_trips(tiny: BaseModel, tmp_path: Path):
    with pytest.raises(BaseModelMissing, match="materialize base_model first") as error:
        read_pointer(Layout.of(tmp_path, tmp_path))
    assert isinstance(error.value, FileNotFoundError)

    path = write_pointer(tiny, Layout.of(tmp_path, tmp_path))
    assert path == tmp_path / "base" / "base_model.json"
    assert read_pointer(Layout.of(tmp_path, tmp_path)) == tiny
    assert BaseModel.from_json(tiny.to_json()) == tiny
    assert json.loads(path.read_text())["path"] == str(tiny.path)
