"""`TransformersBackend`: a local Hugging Face checkpoint answering in this process, for evaluation, chat and serving.

A module of its own because torch and transformers take seconds to import: the code location, the CLI and every step
that does not answer with a local model import `inference/answering.py` only.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    TextIteratorStreamer,
)

from raft_assets.contracts.prompts import load_prompts
from raft_assets.inference.answering import (
    DEFAULT_MAX_NEW_TOKENS,
    Answer,
    AnswerRequest,
    answer_messages,
    greedy_params,
    prompt_ids,
)
from raft_assets.llm.reply_cache import CachedReply, ReplyCache, request_key

STOP_TOKENS = ("<|eot_id|>", "<|end_of_text|>")  # Llama 3's end of turn and end of text, when the vocabulary has them


def resolve_device(device: str) -> str:
    """ "auto": the GPU when there is one, else the CPU; anything else as given."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersBackend:
    """A Hugging Face checkpoint (safetensors only) in this process, answering in batches with greedy decoding.

    Requests are sorted by prompt length so that each batch pads little, and answered in their original order.
    `generate` runs in a worker thread, so the event loop stays free. A request is timed as its batch's time
    divided by the batch size (the batch is computed at once; per-request time is not observable). A prompt
    that leaves no room for `max_new_tokens` in the model's context is an Answer with an error, not sent.
    With a `cache` (scoped to these weights by the caller), each batch's answers are kept with their time as it
    finishes, and an answer found there is not computed again: it comes back with the time it took then.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        batch_size: int = 8,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        device: str = "auto",
        cache: ReplyCache | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model_path = Path(model_path)
        self.name = f"transformers:{self.model_path.name}"
        self.batch_size = batch_size
        self.cache = cache
        self.prompt = load_prompts()["raft_chat"]
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype="auto", use_safetensors=True)
        self.model.to(self.device).eval()
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
            self.tokenizer.pad_token_id = pad_id
        self.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self._stop_ids(), pad_token_id=pad_id
        )
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self._lock = threading.Lock()  # one generate at a time, whoever calls

    def _stop_ids(self) -> list[int]:
        """The tokenizer's eos, Llama 3's end-of-turn tokens and the checkpoint's own eos ids."""
        ids = [self.tokenizer.eos_token_id, *(self.tokenizer.convert_tokens_to_ids(t) for t in STOP_TOKENS)]
        configured = self.model.generation_config.eos_token_id
        ids += configured if isinstance(configured, list) else [configured]
        unknown = self.tokenizer.unk_token_id
        return sorted({token for token in ids if token is not None and token != unknown})

    def prompt_ids(self, requests: list[AnswerRequest]) -> list[list[int]]:
        return prompt_ids(self.tokenizer, requests)

    def _too_long(self, ids: list[int]) -> str | None:
        """Why the prompt cannot be answered within the model's context, or None when it can."""
        new_tokens = self.generation_config.max_new_tokens
        if self.context_length is None or len(ids) + new_tokens <= self.context_length:
            return None
        return (
            f"the prompt has {len(ids)} tokens: with {new_tokens} new tokens it does not fit the model's "
            f"context of {self.context_length}"
        )

    def generate(self, prompts: list[list[int]], max_new_tokens: int | None = None, **options: Any) -> list[str]:
        """Greedy answers to a batch of prompts (token ids), left-padded; blocking.

        `max_new_tokens`: this batch's limit instead of the backend's; `options` go to `model.generate` (a streamer,
        stopping criteria).
        """
        config = copy.deepcopy(self.generation_config)
        config.max_new_tokens = max_new_tokens or config.max_new_tokens
        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        with self._lock, torch.inference_mode():
            output = self.model.generate(**batch, generation_config=config, **options)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)

    def cache_key(self, request: AnswerRequest) -> str:
        params = {**greedy_params(self.generation_config.max_new_tokens), "backend": "transformers"}
        return request_key(str(self.model_path), answer_messages(request), params, self.prompt.version)

    async def answer_all(self, requests: list[AnswerRequest]) -> list[Answer]:
        prompts = self.prompt_ids(requests)
        keys = [self.cache_key(request) for request in requests] if self.cache is not None else []
        answers: list[Answer | None] = [
            None if (error := self._too_long(ids)) is None else Answer("", 0.0, error) for ids in prompts
        ]
        for i, key in enumerate(keys):
            if answers[i] is None and (hit := self.cache.get(key)) is not None:
                answers[i] = Answer(hit.text, hit.seconds, cached=True)
        pending = sorted((i for i, answer in enumerate(answers) if answer is None), key=lambda i: -len(prompts[i]))
        for start in range(0, len(pending), self.batch_size):
            batch = pending[start : start + self.batch_size]
            started = time.perf_counter()
            texts = await asyncio.to_thread(self.generate, [prompts[i] for i in batch])
            seconds = (time.perf_counter() - started) / len(batch)
            for i, text in zip(batch, texts, strict=True):
                answers[i] = Answer(text, seconds)
                if self.cache is not None:
                    completion = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                    self.cache.put(keys[i], self.name, CachedReply(text, len(prompts[i]), completion, seconds))
        return [answer for answer in answers if answer is not None]

    def stream(self, request: AnswerRequest) -> Iterator[str]:
        """The answer to one request, piece by piece as it is generated (generate runs in a thread)."""
        (ids,) = self.prompt_ids([request])
        if (error := self._too_long(ids)) is not None:
            raise ValueError(error)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        inputs = torch.tensor([ids], device=self.device)
        errors: list[BaseException] = []
        worker = threading.Thread(
            target=self._generate_streaming, args=(inputs, streamer, errors), name="raft-generate", daemon=True
        )
        worker.start()
        yield from streamer
        worker.join()
        if errors:
            raise errors[0]

    def _generate_streaming(
        self, inputs: torch.Tensor, streamer: TextIteratorStreamer, errors: list[BaseException]
    ) -> None:
        """`generate` into the streamer; an error ends the stream and is kept for `stream` to raise."""
        try:
            with self._lock, torch.inference_mode():
                self.model.generate(
                    inputs,
                    attention_mask=torch.ones_like(inputs),
                    generation_config=self.generation_config,
                    streamer=streamer,
                )
        except BaseException as error:  # noqa: BLE001 (re-raised in the caller's thread)
            errors.append(error)
            streamer.end()
