"""Training data: loss masks for any chat template, packing with sample boundaries, sharding across ranks."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from raft_assets.contracts.raft_format import Passage, Sample, raft_record
from raft_assets.training.base_model import EOT, TINY, build_tiny_model
from raft_assets.training.data import (
    IGNORE_INDEX,
    Block,
    RankShards,
    collate,
    model_inputs,
    pack,
    record_messages,
    tokenize_chats,
)
from raft_assets.training.train import loss_sum

DATA = Path(__file__).resolve().parents[1] / "data"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Marks the last message, so the prompt alone renders differently from the start of the whole chat.
CHATML_LAST_MARKED = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}{% if loop.last %} (last){% endif %}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenized(tokenizer, record: dict) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one RAFT record, as the training script tokenizes its file."""
    return tokenize_chats(tokenizer, [record_messages(record)])[0]


def paragraphs() -> list[str]:
    """Paragraphs of the sample corpus's markdown pages."""
    texts = [path.read_text(encoding="utf-8") for path in sorted(DATA.rglob("*.md"))]
    return [p.strip() for text in texts for p in text.split("\n\n") if len(p.strip()) > 150]


def records(count: int, seed: int = 0, documents: int = 3, chars: int = 400) -> list[dict]:
    """RAFT records in the dataset's own format, built from the sample corpus."""
    rng = random.Random(seed)
    pool = paragraphs()
    out = []
    for i in range(count):
        passages = [
            Passage(f"c{i}{j}", f"d{i}{j}", f"t{j}", rng.choice(pool)[: rng.randint(80, chars)])
            for j in range(documents)
        ]
        oracle = passages[0]
        quote = oracle.text[: rng.randint(20, 120)]
        cot = f"The context says ##begin_quote##{quote}##end_quote##. <ANSWER>: {quote[:30]}"
        sample = Sample(
            f"q{i:04d}", f"What is said about item {i}?", cot, quote[:30], oracle.chunk_id, oracle.doc_id, "s"
        )
        out.append(raft_record(sample, passages, oracle, split="train", refusal_answer=None, distractor_kind="random"))
    return out


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [path.read_text(encoding="utf-8") for path in sorted([*DATA.rglob("*.md"), *DATA.rglob("*.txt")])]
    return build_tiny_model(tmp_path_factory.mktemp("base") / TINY, texts).path


@pytest.fixture(scope="module")
def tokenizer(tiny_path: Path):
    return AutoTokenizer.from_pretrained(tiny_path)


def chatml_tokenizer(tokenizer, template: str = CHATML):
    other = copy.deepcopy(tokenizer)
    other.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    other.chat_template = template
    return other


def labelled(tokenizer, ids: list[int], labels: list[int]) -> str:
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels, strict=True))
    return tokenizer.decode([token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def assert_one_labelled_span(labels: list[int]) -> None:
    """The labels are one contiguous run: the answer, nothing before, nothing after (but padding)."""
    marked = [label != IGNORE_INDEX for label in labels]
    first, last = marked.index(True), len(marked) - 1 - marked[::-1].index(True)
    assert all(marked[first : last + 1])


def test_llama3_template_labels_exactly_the_answer_and_its_end_of_turn(tokenizer):
    record = records(1)[0]
    ids, labels = tokenized(tokenizer, record)
    expected = tokenizer.apply_chat_template(record_messages(record), tokenize=True, return_dict=False)
    assert ids == expected  # the tokenizer's own chat template, token for token
    assert labelled(tokenizer, ids, labels) == record["cot_answer"] + EOT
    assert labels[-1] == tokenizer.convert_tokens_to_ids(EOT) and labels[0] == IGNORE_INDEX
    assert_one_labelled_span(labels)


@pytest.mark.parametrize("template", [CHATML, CHATML_LAST_MARKED], ids=["chatml", "prompt-not-a-prefix"])
def test_another_chat_template_labels_exactly_the_answer(tokenizer, template):
    chatml = chatml_tokenizer(tokenizer, template)
    record = records(1, seed=1)[0]
    ids, labels = tokenized(chatml, record)
    assert ids == chatml.apply_chat_template(record_messages(record), tokenize=True, return_dict=False)
    assert chatml.decode(ids[-2:]) == "<|im_end|>\n"
    # the answer and the end-of-turn token that closes it; not the newline the template adds after it
    assert labelled(chatml, ids, labels) == record["cot_answer"] + "<|im_end|>"
    assert labels[-1] == IGNORE_INDEX and labels[-2] == chatml.convert_tokens_to_ids("<|im_end|>")
    assert_one_labelled_span(labels)
    prompt = chatml.apply_chat_template(
        record_messages(record)[:-1], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert (ids[: len(prompt)] == prompt) == (template == CHATML)  # the second takes the fallback path


def test_packing_keeps_samples_whole_and_separate(tokenizer):
    samples = [tokenized(tokenizer, record) for record in records(40, seed=2)]
    lengths = [len(ids) for ids, _ in samples]
    context = 4096  # the tiny model's context; samples of a few hundred tokens, like RAFT's with short chunks
    samples.append(([1] * (context + 1), [1] * (context + 1)))  # too long: dropped, not truncated
    packing = pack(samples, context)
    assert packing.dropped == 1 and packing.samples == 40
    assert sorted(n for block in packing.blocks for n in block.lengths) == sorted(lengths)
    assert packing.tokens == sum(lengths)
    assert packing.efficiency == pytest.approx(sum(lengths) / (len(packing.blocks) * context))
    assert len(packing.blocks) <= -(-sum(lengths) // context) + 1, packing.summary()
    assert packing.efficiency > 0.8, packing.summary()
    for block in packing.blocks:
        assert len(block) <= context and sum(block.lengths) == len(block)
        start = 0
        for n in block.lengths:
            assert block.position_ids[start : start + n] == list(range(n))
            assert block.labels[start] == IGNORE_INDEX  # no target predicted across a boundary
            start += n
    assert pack(samples, context).blocks == packing.blocks  # deterministic


def test_packed_logits_and_loss_equal_each_sample_alone_with_masks_and_with_flash_style_inputs_on_sdpa(
    tiny_path, tokenizer
):
    model = AutoModelForCausalLM.from_pretrained(tiny_path, attn_implementation="sdpa").eval()
    samples = [tokenized(tokenizer, record) for record in records(3, seed=3, documents=1, chars=200)]
    block = Block()
    for ids, labels in samples:
        block.add(ids, labels)
    assert block.lengths == [len(ids) for ids, _ in samples]
    short = Block()
    short.add(*samples[0])
    batch = collate([block, short], tokenizer.pad_token_id)  # the second row is padded
    alone = []
    with torch.no_grad():
        for ids, _ in samples:
            alone.append(model(input_ids=torch.tensor([ids])).logits[0])
        for implementation in ("sdpa", "eager", "flash_attention_2"):
            model.set_attn_implementation("eager" if implementation == "eager" else "sdpa")
            inputs = model_inputs(batch, implementation, torch.float32)
            if implementation == "flash_attention_2":  # boundaries from position_ids only, found by transformers
                assert "attention_mask" not in inputs
                inputs = {key: value[:1] for key, value in inputs.items()}
            else:
                assert inputs["attention_mask"].shape == (2, 1, len(block), len(block))
            logits = model(**inputs, use_cache=False).logits
            start = 0
            for (ids, _), expected in zip(samples, alone, strict=True):
                torch.testing.assert_close(logits[0, start : start + len(ids)], expected, atol=1e-5, rtol=1e-5)
                start += len(ids)
            if implementation != "flash_attention_2":
                torch.testing.assert_close(logits[1, : len(samples[0][0])], alone[0], atol=1e-5, rtol=1e-5)
        # the training loss of the packed block is the sum of the samples' own losses
        model.set_attn_implementation("sdpa")
        packed = loss_sum(model, collate([block], tokenizer.pad_token_id), "sdpa", torch.float32)
        expected = sum(
            torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(labels[1:]), reduction="sum")
            for (_, labels), logits in zip(samples, alone, strict=True)
        )
        torch.testing.assert_close(packed, expected, atol=1e-3, rtol=1e-5)


def test_rank_shards_are_disjoint_equal_and_reshuffled_each_epoch():
    blocks = [Block(input_ids=[i], labels=[IGNORE_INDEX], position_ids=[0], lengths=[1]) for i in range(11)]
    world, batch_size = 3, 2

    def shards(rank):
        return RankShards(blocks, rank=rank, world_size=world, batch_size=batch_size, seed=7)

    for epoch in (0, 1):
        per_rank = [shards(rank).epoch(epoch) for rank in range(world)]
        assert len({len(batches) for batches in per_rank}) == 1  # the same number of steps everywhere
        assert all(len(batch) == batch_size for batches in per_rank for batch in batches)
        seen = [b.input_ids[0] for batches in per_rank for batch in batches for b in batch if len(b)]
        assert sorted(seen) == list(range(11))  # disjoint, and together all of them
        fillers = [b for batches in per_rank for batch in batches for b in batch if not len(b)]
        assert len(fillers) == world * batch_size * len(per_rank[0]) - 11
        assert per_rank == [shards(rank).epoch(epoch) for rank in range(world)]  # deterministic
    assert shards(0).order(0) != shards(0).order(1)  # reshuffled
    filler = collate([Block()], pad_id=99)
    assert filler["input_ids"].tolist() == [[99]] and filler["labels"].tolist() == [[IGNORE_INDEX]]
