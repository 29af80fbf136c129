"""The model to fine-tune: a local checkpoint, one in the Hugging Face cache, or `tiny`, a small Llama built here.

Only JSON and safetensors files are read: nothing is unpickled, and nothing is downloaded at run time.

torch, transformers, tokenizers and huggingface_hub are imported by the functions that use them: the Dagster code
location imports this module to read the pointer, and every step of a run imports the code location.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from raft_assets.contracts.layout import Layout
from raft_assets.files import replace_dir, staging_dir, write_text_atomically
from raft_assets.hashing import content_hash

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast

TINY = "tiny"
TINY_VERSION = 1  # bump when the tiny recipe changes, so that existing builds are rebuilt
TINY_SEED = 0
TINY_VOCAB_SIZE = 4096
TINY_CONTEXT_LENGTH = 4096  # a RAFT sample of five 1,000-character chunks is about 2,000 tiny tokens
MAX_CONTEXT_LENGTH = 8192  # the reference fine-tunes with 8192 tokens
BUILD_FILE = "build.json"
# The files of a Hugging Face checkpoint that fine-tuning reads (not, say, the original/ folder of Meta's repos).
CHECKPOINT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template.jinja",
)

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
PAD = "<|finetune_right_pad_id|>"
SPECIAL_TOKENS = (BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, EOT, PAD)

# Llama 3's pre-tokenization pattern (tiktoken's cl100k): words, numbers of up to 3 digits, punctuation, spaces.
LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
# The chat template of Meta-Llama-3-8B-Instruct, verbatim.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


class BaseModelMissing(FileNotFoundError):
    """The pointer file is not there: the `base_model` asset has not been materialized."""


class BaseModelUnavailable(FileNotFoundError):
    """The named model is not on this machine, or its folder lacks files needed to fine-tune it."""


@dataclasses.dataclass(frozen=True)
class BaseModel:
    """A model checkpoint folder ready to load with `from_pretrained`, and the facts training needs."""

    name: str
    path: Path
    context_length: int
    parameters: int
    vocab_size: int
    built: bool

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "path": str(self.path)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BaseModel:
        data = json.loads(text)
        return cls(**{**data, "path": Path(data["path"])})


def write_pointer(model: BaseModel, layout: Layout) -> Path:
    """Record which model later assets fine-tune (`layout.base_pointer_file`)."""
    write_text_atomically(layout.base_pointer_file, model.to_json())
    return layout.base_pointer_file


def read_pointer(layout: Layout) -> BaseModel:
    path = layout.base_pointer_file
    if not path.is_file():
        raise BaseModelMissing(f"No base model pointer at {path}: materialize base_model first.")
    return BaseModel.from_json(path.read_text(encoding="utf-8"))


def load_tokenizer(model: BaseModel) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.path)


def resolve_base_model(name: str, layout: Layout, corpus: Callable[[], Iterable[str]]) -> BaseModel:
    """`tiny` (built under `<checkpoint_dir>/base/tiny` from the corpus when needed), a local folder or a cached hub id."""
    if name == TINY:
        return _resolve_tiny(layout.base_folder / TINY, list(corpus()))
    path = Path(name).expanduser()
    return describe_checkpoint(name, path if path.is_dir() else _cached_snapshot(name))


def describe_checkpoint(name: str, path: Path) -> BaseModel:
    """The facts of a checkpoint folder, read from its config and safetensors headers (no weights loaded)."""
    missing = missing_files(path)
    if missing:
        raise BaseModelUnavailable(f"Base model {name!r} at {path} cannot be used: missing {', '.join(missing)}.")
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    return BaseModel(
        name=name,
        path=path.resolve(),
        context_length=min(config.get("max_position_embeddings", MAX_CONTEXT_LENGTH), MAX_CONTEXT_LENGTH),
        parameters=count_parameters(weight_files(path)),
        vocab_size=config["vocab_size"],
        built=False,
    )


def missing_files(path: Path) -> list[str]:
    """What a checkpoint folder lacks: config, tokenizer and safetensors weights (pickled .bin weights do not count)."""
    missing = [file for file in ("config.json", "tokenizer_config.json") if not (path / file).is_file()]
    if not any((path / file).is_file() for file in ("tokenizer.json", "tokenizer.model")):
        missing.append("tokenizer.json (or tokenizer.model)")
    weights = weight_files(path)
    if not weights:
        missing.append(
            "model.safetensors (or model.safetensors.index.json with its shards; .bin weights are not loaded)"
        )
    missing.extend(file.name for file in weights if not file.is_file())
    return missing


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards its index names, or `model.safetensors`."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return [path / shard for shard in sorted(set(shards))]
    single = path / "model.safetensors"
    return [single] if single.is_file() else []


def count_parameters(files: Iterable[Path]) -> int:
    """The number of weights in safetensors files, from their headers."""
    total = 0
    for file in files:
        with safe_open(file, framework="pt") as tensors:
            names = tensors.keys()
            total += sum(math.prod(tensors.get_slice(name).get_shape()) for name in names)
    return total


def build_tiny_model(
    target: Path,
    corpus: Iterable[str],
    *,
    seed: int = TINY_SEED,
    vocab_size: int = TINY_VOCAB_SIZE,
    context_length: int = TINY_CONTEXT_LENGTH,
) -> BaseModel:
    """A small Llama (a few million parameters) with a byte-level BPE tokenizer trained on the corpus, at `target`.

    Deterministic: the same corpus and arguments give the same files. The folder is built beside `target` and
    renamed into place, so an interrupted build never leaves a model that looks complete.
    """
    texts = list(corpus)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target, "building")
    staging.mkdir()
    try:
        tokenizer = train_tokenizer(texts, vocab_size=vocab_size, context_length=context_length)
        tokenizer.save_pretrained(staging)
        tiny_llama(tokenizer, seed=seed, context_length=context_length).save_pretrained(
            staging, safe_serialization=True
        )
        recipe = tiny_recipe(texts, seed=seed, vocab_size=vocab_size, context_length=context_length)
        (staging / BUILD_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(describe_checkpoint(TINY, target), built=True)


def tiny_recipe(texts: list[str], *, seed: int, vocab_size: int, context_length: int) -> dict[str, Any]:
    """What a tiny build depends on (recorded in its `build.json`): same recipe, same files."""
    return {
        "version": TINY_VERSION,
        "corpus_hash": content_hash(*texts),
        "documents": len(texts),
        "seed": seed,
        "vocab_size": vocab_size,
        "context_length": context_length,
    }


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, context_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like Llama 3's: any text round-trips, special tokens are single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.TemplateProcessing(  # a BOS before every text, as Llama 3's tokenizer does
        single=f"{BEGIN_OF_TEXT} $A",
        pair=f"{BEGIN_OF_TEXT} $A {BEGIN_OF_TEXT}:1 $B:1",
        special_tokens=[(BEGIN_OF_TEXT, backend.token_to_id(BEGIN_OF_TEXT))],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BEGIN_OF_TEXT,
        eos_token=EOT,
        pad_token=PAD,
        model_max_length=context_length,
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


def tiny_llama(tokenizer: PreTrainedTokenizerFast, *, seed: int, context_length: int) -> LlamaForCausalLM:
    """A Llama 3 shaped model (GQA, RoPE theta 500k, untied embeddings), initialised from `seed`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context_length,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=256,
    )
    return model


def _resolve_tiny(target: Path, texts: list[str]) -> BaseModel:
    """The tiny model at `target`, rebuilt unless a complete build from the same recipe is there."""
    recipe = tiny_recipe(texts, seed=TINY_SEED, vocab_size=TINY_VOCAB_SIZE, context_length=TINY_CONTEXT_LENGTH)
    build_file = target / BUILD_FILE
    complete = build_file.is_file() and not missing_files(target)
    if complete and json.loads(build_file.read_text(encoding="utf-8")) == recipe:
        return describe_checkpoint(TINY, target)
    return build_tiny_model(target, texts)


def _cached_snapshot(name: str) -> Path:
    """The folder of a hub model in the local Hugging Face cache; never downloads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, IncompleteSnapshotError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=list(CHECKPOINT_PATTERNS)))
    except IncompleteSnapshotError as error:
        raise BaseModelUnavailable(f"Base model {name!r} is only partly in the Hugging Face cache: {error}") from error
    except (LocalEntryNotFoundError, HFValidationError) as error:
        raise BaseModelUnavailable(
            f"Base model {name!r} is neither a local directory nor in the Hugging Face cache, and models are never "
            f"downloaded at run time: download it first (hf download {name} --exclude 'original/*') "
            "or set RAFT_BASE_MODEL to a local path."
        ) from error
