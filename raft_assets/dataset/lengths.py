"""Token lengths of RAFT samples under the target model's chat template, and fitting the long ones.

A sample's length is its parts' token counts plus the template's own tokens (counted once); parts are
counted in batches, so 100,000 samples cost seconds. Samples near the limit are counted exactly.
"""

from __future__ import annotations

from typing import Any

from raft_assets.contracts.raft_format import chat_messages, documents_block

_EXACT_ABOVE = 0.9  # estimates above this share of the limit are checked with the full template
_COUNT_BATCH = 2048  # texts tokenized at once: all 100,000 at once held 1.7 GB of encodings
_MIN_TOKENS_PER_DOCUMENT = 16


class TokenLengths:
    def __init__(self, tokenizer: Any, limit: int) -> None:
        self.tokenizer = tokenizer
        self.limit = limit
        self._template = self.exact("", [], "")
        self._per_document = len(self._encode(documents_block([""])))

    def counts(self, texts: list[str]) -> list[int]:
        found: list[int] = []
        for start in range(0, len(texts), _COUNT_BATCH):
            batch = texts[start : start + _COUNT_BATCH]
            encoded = self.tokenizer(batch, add_special_tokens=False, return_attention_mask=False)
            found += [len(ids) for ids in encoded["input_ids"]]
        return found

    def exact(self, question: str, texts: list[str], answer: str) -> int:
        messages = chat_messages(question, documents_block(texts).strip(), answer)
        return len(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))

    def fit(
        self,
        question: str,
        question_tokens: int,
        texts: list[str],
        text_tokens: list[int],
        answer: str,
        answer_tokens: int,
        overlength: str,
    ) -> tuple[list[str], int] | None:
        """(texts, tokens) of a sample that fits the limit — truncating each document evenly when
        `overlength` is "truncate" — or None when it does not fit and is to be dropped."""
        tokens = self._template + question_tokens + answer_tokens + sum(text_tokens) + self._per_document * len(texts)
        if tokens > _EXACT_ABOVE * self.limit:
            tokens = self.exact(question, texts, answer)
        if tokens <= self.limit:
            return texts, tokens
        if overlength != "truncate":
            return None
        fixed = tokens - sum(text_tokens)
        per_document = (self.limit - fixed) // max(len(texts), 1) - 1
        if per_document < _MIN_TOKENS_PER_DOCUMENT:
            return None
        truncated = [self.tokenizer.decode(self._encode(text)[:per_document]) for text in texts]
        tokens = self.exact(question, truncated, answer)
        return (truncated, tokens) if tokens <= self.limit else None

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]
