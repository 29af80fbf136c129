"""Training data: RAFT records to chat tokens with loss masks, packed into context-length blocks, sharded by rank.

- `record_messages` and `tokenize_chats` format a record as the reference loader does (documents and question split at the last
  `</DOCUMENT>`, system/user/assistant messages, the tokenizer's own chat template) and puts labels on the
  assistant's answer only, found from the template's rendering rather than from hard-coded token ids, so it
  works for any chat template.
- `pack` places whole samples into blocks of at most `context_length` tokens (best-fit decreasing). A sample
  longer than the context is dropped (truncating it would cut the answer, the part that carries the loss) and
  counted. Blocks are not padded: `collate` pads a micro-batch to its longest block only.
- Inside a block every sample has its own `position_ids` (0, 1, 2, ...), its first label is -100 (so the
  shifted loss never predicts across a boundary), and attention is block-diagonal causal: a 4D mask for
  sdpa/eager, the restarting `position_ids` alone for flash attention.
- `RankShards` gives each rank a disjoint, equally long slice of the blocks, reshuffled (seeded) every epoch.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from raft_assets.contracts.raft_format import chat_messages, split_instruction

IGNORE_INDEX = -100  # label of a token that carries no loss (torch's cross_entropy default ignore_index)


# --- tokenization and loss masks -------------------------------------------------------------------------


def record_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The reference loader's chat: system, user (question and documents), assistant (`cot_answer`)."""
    documents, question = split_instruction(record["instruction"])
    return chat_messages(question, documents, record["cot_answer"])


def tokenize_chats(
    tokenizer: PreTrainedTokenizerBase, chats: Sequence[list[dict[str, str]]], batch_size: int = 256
) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of chats whose last message is the assistant's: only that answer carries labels.

    The answer starts where the prompt ends: the prompt (every message but the last, plus the generation
    prompt) rendered by the same template is a token prefix of the whole chat for ordinary templates. Where it
    is not (a template that renders earlier turns differently once an answer follows), the answer's start is
    found from its characters in the rendered text through the token offsets. The answer ends with its last
    content token plus the template's end-of-turn token: the first special token after the content, so that
    the model learns to stop (the newline some templates add after it carries no label). A template without
    any special token after the answer has its whole remainder labelled.

    The rendered texts are tokenized `batch_size` at a time (the fast tokenizer encodes a batch in parallel).
    """
    specials = set(tokenizer.all_special_ids) | {
        token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special
    }
    out = []
    for first in range(0, len(chats), batch_size):
        batch = chats[first : first + batch_size]
        for messages in batch:
            if not messages or messages[-1]["role"] != "assistant":
                raise ValueError("the last message of a chat must be the assistant's answer")
        texts = [tokenizer.apply_chat_template(messages, tokenize=False) for messages in batch]
        prompts = [
            tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            for messages in batch
        ]
        # apply_chat_template(tokenize=True) is exactly this: the rendered text, tokenized without added specials
        full = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        for k, messages in enumerate(batch):
            content = messages[-1]["content"].strip()  # templates often trim the content (Llama 3's does)
            out.append(
                _mask(list(full["input_ids"][k]), full["offset_mapping"][k], prompt_ids[k], texts[k], content, specials)
            )
    return out


def _mask(
    input_ids: list[int],
    offsets: Sequence[tuple[int, int]],
    prompt_ids: list[int],
    text: str,
    content: str,
    specials: set[int],
) -> tuple[list[int], list[int]]:
    content_start = text.rfind(content) if content else -1
    if input_ids[: len(prompt_ids)] == prompt_ids:
        start = len(prompt_ids)
    elif content_start >= 0:
        start = next(i for i, (_, end) in enumerate(offsets) if end > content_start)
    else:
        raise ValueError("cannot find the assistant's answer in the rendered chat: the chat template changes it")
    stop = len(input_ids)
    if content_start >= 0:
        content_end = content_start + len(content)
        last = max((i for i, (begin, _) in enumerate(offsets) if begin < content_end), default=start - 1)
        stop = next((i + 1 for i in range(max(last + 1, start), len(input_ids)) if input_ids[i] in specials), stop)
    labels = [IGNORE_INDEX] * start + input_ids[start:stop] + [IGNORE_INDEX] * (len(input_ids) - stop)
    return input_ids, labels


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def tokenize_file(tokenizer: PreTrainedTokenizerBase, path: Path) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of every record of a RAFT JSON-lines file, in file order."""
    return tokenize_chats(tokenizer, [record_messages(record) for record in read_records(path)])


# --- packing ---------------------------------------------------------------------------------------------


@dataclass
class Block:
    """Whole samples one after another: at most `context_length` tokens, no padding."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # of its samples, in order: the boundaries

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, input_ids: Sequence[int], labels: Sequence[int]) -> None:
        self.input_ids.extend(input_ids)
        # The first token of a sample is never a target: after the shift it would be predicted from the
        # previous sample's last token (it is the BOS or a header in every chat template anyway).
        self.labels.extend([IGNORE_INDEX, *labels[1:]])
        self.position_ids.extend(range(len(input_ids)))
        self.lengths.append(len(input_ids))

    @property
    def label_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


@dataclass
class Packing:
    blocks: list[Block]
    context_length: int
    samples: int  # packed
    dropped: int  # longer than the context, left out
    tokens: int  # in the blocks

    @property
    def efficiency(self) -> float:
        """Share of the blocks' context that holds sample tokens (the rest would be padding at full length)."""
        return self.tokens / (len(self.blocks) * self.context_length) if self.blocks else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "blocks": len(self.blocks),
            "samples": self.samples,
            "dropped_samples": self.dropped,
            "tokens": self.tokens,
            "label_tokens": sum(block.label_tokens for block in self.blocks),
            "packing_efficiency": round(self.efficiency, 4),
        }


def pack(samples: Iterable[tuple[Sequence[int], Sequence[int]]], context_length: int) -> Packing:
    """Best-fit decreasing: the longest sample first, each into the fullest block that still has room for it.

    Deterministic (ties keep the input order). Samples longer than `context_length` are dropped and counted.
    """
    samples = list(samples)
    fitting = [i for i, (ids, _) in enumerate(samples) if 0 < len(ids) <= context_length]
    fitting.sort(key=lambda i: -len(samples[i][0]))
    blocks: list[Block] = []
    free: list[tuple[int, int]] = []  # (room left, block index), sorted
    for i in fitting:
        ids, labels = samples[i]
        slot = bisect.bisect_left(free, (len(ids), -1))
        if slot < len(free):
            room, index = free.pop(slot)
        else:
            room, index = context_length, len(blocks)
            blocks.append(Block())
        blocks[index].add(ids, labels)
        if room - len(ids) > 0:
            bisect.insort(free, (room - len(ids), index))
    return Packing(
        blocks=blocks,
        context_length=context_length,
        samples=len(fitting),
        dropped=sum(1 for ids, _ in samples if len(ids) > context_length),
        tokens=sum(len(block) for block in blocks),
    )


# --- batches ---------------------------------------------------------------------------------------------


def filler_block() -> Block:
    """An empty block: what a rank trains on when the blocks do not divide evenly (`collate` makes it one pad
    token without a label, so it adds nothing to the loss or the gradients)."""
    return Block()


def collate(blocks: Sequence[Block], pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors of a micro-batch, padded to its longest block (pad tokens form their own segment, no labels).

    `segment_ids` numbers the samples of each row (the padding is one more segment); `block_causal_mask`
    turns it into the attention mask.
    """
    length = max(1, *(len(block) for block in blocks))
    rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": [], "segment_ids": []}
    for block in blocks:
        padding = length - len(block)
        segments = [s for s, n in enumerate(block.lengths) for _ in range(n)]
        rows["input_ids"].append(block.input_ids + [pad_id] * padding)
        rows["labels"].append(block.labels + [IGNORE_INDEX] * padding)
        rows["position_ids"].append(block.position_ids + list(range(padding)))
        rows["segment_ids"].append(segments + [len(block.lengths)] * padding)
    return {key: torch.tensor(value, dtype=torch.long) for key, value in rows.items()}


def block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """(batch, 1, seq, seq) bool, True where a query may attend: the same sample and not in the future."""
    seq = segment_ids.shape[-1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segment_ids.device).tril()
    return (same & causal)[:, None]


def model_inputs(batch: dict[str, torch.Tensor], attn_implementation: str, dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments of the model's forward that keep attention inside each sample.

    Flash attention (and flex) read the sample boundaries from the restarting `position_ids`; sdpa gets a
    block-diagonal causal bool mask, which transformers passes on as is (a 4D mask is "already prepared");
    eager attention adds its mask to the scores, so it gets the same mask as 0 / -inf floats.
    """
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if attn_implementation.startswith(("flash_attention", "flex_attention")):
        return inputs
    mask = block_causal_mask(batch["segment_ids"])
    if attn_implementation == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return {**inputs, "attention_mask": mask}


# --- sharding across ranks -------------------------------------------------------------------------------


class RankShards:
    """The micro-batches of one rank: a disjoint slice of the blocks, the same number of them on every rank.

    Every epoch the blocks are shuffled with a generator seeded by (seed, epoch), the same on all ranks; rank r
    takes blocks r, r + world, r + 2·world, ... of that order. When the blocks do not divide evenly, the short
    ranks get empty filler blocks (one pad token once collated, no label) (never a repeated sample), so that all ranks run the
    same number of forward and backward passes, as FSDP requires.
    """

    def __init__(
        self,
        blocks: Sequence[Block],
        *,
        rank: int,
        world_size: int,
        batch_size: int = 1,
        seed: int = 42,
        shuffle: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size}")
        self.blocks = list(blocks)
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.seed, self.shuffle = seed, shuffle

    def __len__(self) -> int:
        """Micro-batches per epoch (on every rank)."""
        return math.ceil(len(self.blocks) / (self.world_size * self.batch_size))

    def order(self, epoch: int) -> list[int]:
        """The block indices of this rank for `epoch`; -1 is a filler block."""
        indices = list(range(len(self.blocks)))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(indices)
        mine = indices[self.rank :: self.world_size]
        return mine + [-1] * (len(self) * self.batch_size - len(mine))

    def epoch(self, epoch: int) -> list[list[Block]]:
        """The micro-batches of `epoch`, each a list of `batch_size` blocks."""
        blocks = [self.blocks[i] if i >= 0 else filler_block() for i in self.order(epoch)]
        return [blocks[i : i + self.batch_size] for i in range(0, len(blocks), self.batch_size)]
