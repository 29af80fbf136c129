"""The `eval_report` asset: the eval set answered by every system worth comparing, scored and compared."""

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from raft_assets.contracts.layout import Layout
from raft_assets.defs.dataset.assets import eval_set
from raft_assets.defs.deployment import gpu_op_tags
from raft_assets.defs.evaluation.vllm import VLLMResource
from raft_assets.defs.metadata import file_link
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets.defs.retrieval.assets import retrieval_index
from raft_assets.defs.training.assets import base_model, hf_checkpoint
from raft_assets.evaluation.metrics import JUDGE_PROMPT, aggregate, extract_answer, parse_judgement, score_question
from raft_assets.evaluation.report import write_report
from raft_assets.generation.extractive import EXTRACTIVE_MODEL
from raft_assets.hashing import tree_fingerprint
from raft_assets.inference.answering import AnswerBackend, AnswerRequest, EndpointBackend, TransformersBackend
from raft_assets.llm.asking import ask
from raft_assets.llm.client import Endpoint
from raft_assets.llm.reply_cache import ReplyCache
from raft_assets.retrieval.retriever import Retriever
from raft_assets.settings import load_settings
from raft_assets.training.base_model import read_pointer


class EvalReportConfig(dg.Config):
    models: list[str] = Field(
        default=["finetuned", "base"], description="Local models to evaluate: `finetuned` (hf_checkpoint), `base`."
    )
    top_k: list[int] = Field(default=[3, 5, 7], description="RAG variants: documents retrieved per question.")
    without_context: bool = Field(default=True, description="Also answer each question without documents.")
    reference_endpoint: bool = Field(
        default=False, description="Also evaluate the `llm` endpoint (the 70B generator), with and without RAG."
    )
    max_new_tokens: int = Field(default=256, gt=0)
    batch_size: int = Field(default=8, gt=0)
    max_questions: int | None = Field(default=None, gt=0)
    judge_attempts: int = Field(default=3, gt=0, description="Tries for a judge reply that is not YES or NO.")
    serve_with_vllm: bool = Field(
        default=False, description="Serve each local model with the `vllm` resource instead of in-process transformers."
    )


def variants(config: EvalReportConfig) -> list[int | None]:
    """None: without context; k: with the top k retrieved documents."""
    return ([None] if config.without_context else []) + sorted(config.top_k)


def model_paths(config: EvalReportConfig, paths: ProjectPaths) -> dict[str, Path]:
    found = {"base": read_pointer(paths.layout).path}
    if (finetuned := Layout.latest_run(paths.layout.hf_folder)) is not None:
        found["finetuned"] = finetuned
    missing = [name for name in config.models if name not in found]
    if missing:
        raise dg.Failure(f"No {', '.join(missing)} model to evaluate: materialize hf_checkpoint first.")
    return {name: found[name] for name in config.models}


def stand_in_note(writers: list[str | None]) -> str | None:
    """What the report must say first when the extractive stand-in, not a model, wrote the eval questions."""
    by_stand_in = writers.count(EXTRACTIVE_MODEL)
    if not by_stand_in:
        return None
    share = f"All {len(writers)}" if by_stand_in == len(writers) else f"{by_stand_in} of the {len(writers)}"
    return (
        f"**Stand-in data:** {share} eval questions were written by the `{EXTRACTIVE_MODEL}` stand-in (no generator "
        "endpoint), not by a model: these numbers test the machinery, not a model."
    )


def cache_note(answers: dict[str, list[dict]]) -> str | None:
    """How many answers came from the reply cache, and what their times are."""
    rows = [row for system_rows in answers.values() for row in system_rows]
    cached = sum(row["cached"] for row in rows)
    if not cached:
        return None
    return (
        f"{cached} of {len(rows)} answers from the cache; seconds per answer are those of the run that computed them."
    )


def seconds_per_answer(rows: list[dict]) -> float | None:
    """The mean time of the answers whose time is known (a cached answer's: the run's that computed it)."""
    known = [row["seconds"] for row in rows if row["seconds"] is not None]
    return sum(known) / len(known) if known else None


async def answer_system(backend: AnswerBackend, questions: list[str], contexts: list[list[str]], k: int | None):
    requests = [AnswerRequest(q, [] if k is None else docs[:k]) for q, docs in zip(questions, contexts, strict=True)]
    return requests, await backend.answer_all(requests)


@contextmanager
def local_backend(
    name: str, path: Path, config: EvalReportConfig, vllm: VLLMResource, cache: ReplyCache, log: logging.Logger
) -> Iterator[AnswerBackend]:
    """A local checkpoint, answering in this process, or served by vLLM for the block (one server at a time).

    Its answers are cached under the identity of its files, not its name or path (a `tiny` rebuilt in place, a
    fixed served_model_name): a killed evaluation resumes with the answers it had, never with older weights'.
    """
    weights = cache.scoped(tree_fingerprint(path))
    if not config.serve_with_vllm:
        yield TransformersBackend(path, config.batch_size, config.max_new_tokens, cache=weights)
        return
    with vllm.serve(path, log=log) as served:
        endpoint = Endpoint.at(served.base_url, model=served.model, api_key=served.api_key or "EMPTY")
        yield EndpointBackend(endpoint, weights, config.max_new_tokens, name=name)


async def judge_all(judge: LLMResource, cache: ReplyCache, items: list[tuple[str, str, str]], attempts: int):
    """The judge's verdict on each (question, reference, student answer): True, False, or None (it failed)."""
    async with judge.client(cache) as client:
        outcomes = await asyncio.gather(
            *(
                ask(
                    client,
                    JUDGE_PROMPT,
                    {"question": q, "reference_answer": r, "student_answer": s},
                    parse_judgement,
                    attempts,
                )
                for q, r, s in items
            )
        )
    return [outcome.value if outcome.status == "ok" else None for outcome in outcomes]


@dg.asset(
    group_name="evaluation",
    kinds={"python", "markdown"},
    deps=[eval_set, hf_checkpoint, base_model, retrieval_index],
    pool="gpu",
    op_tags=gpu_op_tags(load_settings().eval_gpus),
)
def eval_report(
    context: dg.AssetExecutionContext,
    config: EvalReportConfig,
    paths: ProjectPaths,
    llm: LLMResource,
    judge: LLMResource,
    vllm: VLLMResource,
) -> dg.MaterializeResult:
    """Every configured system on the eval set, with and without retrieved documents; EM, F1, ROUGE, judge."""
    items = json.loads(paths.layout.eval_set_file.read_text(encoding="utf-8"))
    items = items[: config.max_questions] if config.max_questions else items
    if not items:
        raise dg.Failure("The eval set is empty: nothing to evaluate.")
    questions = [item["question"] for item in items]
    references = [item["answer"] for item in items]
    writers = [item.get("generator") for item in items]  # absent from an eval set written before it was recorded
    stand_in = stand_in_note(writers)
    retrieved = Retriever.load(paths.layout).top_k(questions, max(config.top_k))
    contexts = [[chunk.text for chunk in found] for found in retrieved]
    cache = ReplyCache(paths.layout.reply_cache_file)

    answers: dict[str, list[dict]] = {}
    documents_of: dict[str, int | None] = {}  # system -> documents given per question (None: no context)

    def answer_variants(name: str, backend: AnswerBackend) -> None:
        for k in variants(config):
            system = f"{name} {'no context' if k is None else f'RAG k={k}'}"
            context.log.info(f"answering the eval set: {system}")
            _, replies = asyncio.run(answer_system(backend, questions, contexts, k))
            answers[system] = [
                {
                    "question": q,
                    "reference": r,
                    "answer": reply.text,
                    "error": reply.error,
                    "seconds": reply.seconds,
                    "cached": reply.cached,
                }
                for q, r, reply in zip(questions, references, replies, strict=True)
            ]
            documents_of[system] = k

    for name, path in model_paths(config, paths).items():
        with local_backend(name, path, config, vllm, cache, context.log) as backend:
            answer_variants(name, backend)
    if config.reference_endpoint:
        if not llm.configured:
            raise dg.Failure("reference_endpoint is set but RAFT_LLM_BASE_URL is not.")
        answer_variants("reference", EndpointBackend(llm.endpoint(), cache, config.max_new_tokens, name=llm.model))

    notes = [
        *([stand_in] if stand_in else []),
        f"{len(items)} questions from `eval_set.json`; top-k retrieval with the `retrieval_index`.",
        *([note] if (note := cache_note(answers)) else []),
    ]
    verdicts: dict[str, list[bool | None]] = {}
    if judge.configured:
        for system, rows in answers.items():
            triples = [(row["question"], row["reference"], extract_answer(row["answer"])) for row in rows]
            verdicts[system] = asyncio.run(judge_all(judge, cache, triples, config.judge_attempts))
        notes.append(f"Judge: `{judge.model}` (YES/NO on matching the reference answer; failures are not scored).")
    else:
        notes.append("Judge skipped: no judge endpoint is configured (set RAFT_JUDGE_BASE_URL).")
    cache.close()

    summaries: dict[str, dict] = {}
    for system, rows in answers.items():
        k = documents_of[system]
        judged = verdicts.get(system, [None] * len(rows))
        scores = [
            score_question(
                row["answer"],
                row["reference"],
                contexts[i][:k] if k else [],
                judgement=judged[i],
                judge_failed=judge.configured and judged[i] is None,
            )
            for i, row in enumerate(rows)
        ]
        for row, score in zip(rows, scores, strict=True):
            row["correct"] = score.judgement if score.judgement is not None else bool(score.exact_match)
        summaries[system] = {
            **aggregate(scores),
            "seconds_per_answer": seconds_per_answer(rows),
            "cached": sum(row["cached"] for row in rows),
        }

    headline = "judge_accuracy" if judge.configured else "f1"
    files = write_report(paths.layout.reports_folder, summaries, answers, notes, headline)
    context.log.info(files["markdown"].read_text(encoding="utf-8").split("## Questions")[0])
    return dg.MaterializeResult(
        metadata={
            **file_link(files["markdown"]),
            "json": dg.MetadataValue.path(str(files["json"].resolve())),
            "questions": len(items),
            "generator": ", ".join(sorted({writer or "unknown" for writer in writers})),
            **({"stand_in": stand_in} if stand_in else {}),
            "cached_answers": sum(summary["cached"] for summary in summaries.values()),
            "judge": judge.model if judge.configured else "skipped",
            "comparison": dg.MetadataValue.md(files["markdown"].read_text(encoding="utf-8").split("## Questions")[0]),
            "scores_plot": dg.MetadataValue.path(str(files["scores_plot"].resolve())),
            **{
                f"{system.replace(' ', '_').replace('=', '')}/{metric}": float(value)
                for system, summary in summaries.items()
                for metric, value in summary.items()
                if metric in ("judge_accuracy", "f1", "exact_match", "rouge_l", "refusal_rate", "seconds_per_answer")
                and value is not None
            },
        }
    )
