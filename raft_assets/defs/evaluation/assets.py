"""The `eval_report` asset, one partition per recipe: the eval set answered by every system worth comparing (the
recipe's fine-tuned model, the base model, the reference endpoint, a running service), scored and compared.

The asset gathers what the evaluation needs (the eval set with its retrieved documents, the systems, the judge)
and writes the report; `evaluation/run.py` does the work.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg
from pydantic import Field

from raft_assets.contracts.inline_images import inline_png
from raft_assets.contracts.layout import Layout
from raft_assets.defs.dataset.assets import eval_set
from raft_assets.defs.deployment import gpu_op_tags
from raft_assets.defs.evaluation.vllm import VLLMResource
from raft_assets.defs.metadata import CHUNKS_FINGERPRINT, EVAL_SET_VERSION, file_link
from raft_assets.defs.partitions import recipes
from raft_assets.defs.recipes import recipe_metadata, recipe_run
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets.defs.retrieval.assets import retrieval_index
from raft_assets.defs.training.assets import hf_checkpoint
from raft_assets.defs.training.base_model import base_model
from raft_assets.evaluation.report import write_report
from raft_assets.evaluation.run import EvalItem, System, evaluate, stand_in_note
from raft_assets.hashing import chunks_fingerprint, content_hash, tree_fingerprint
from raft_assets.inference.answering import SERVED_PROMPT, AnswerBackend, EndpointBackend
from raft_assets.llm.client import Endpoint
from raft_assets.llm.reply_cache import ReplyCache
from raft_assets.retrieval.retriever import Retriever
from raft_assets.serving.protocol import API_KEY_VARIABLE, service_info
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
    serve_endpoint: str | None = Field(
        default=None,
        description="URL (ending in /v1) of a running `raft-assets serve`: also evaluate what it answers, as the system "
        "`served` (RAG with its own retrieval; its key from RAFT_SERVE_API_KEY).",
    )


def variants(config: EvalReportConfig) -> list[int | None]:
    """None: without context; k: with the top k retrieved documents."""
    return ([None] if config.without_context else []) + sorted(config.top_k)


def model_paths(config: EvalReportConfig, layout: Layout) -> dict[str, Path]:
    found = {"base": read_pointer(layout).path}
    if (finetuned := Layout.latest_run(layout.hf_folder)) is not None:
        found["finetuned"] = finetuned
    missing = [name for name in config.models if name not in found]
    if missing:
        raise dg.Failure(
            f"No {', '.join(missing)} model of recipe {layout.recipe!r} to evaluate: materialize its hf_checkpoint first."
        )
    return {name: found[name] for name in config.models}


@dataclass(frozen=True)
class EvalInputs:
    items: list[EvalItem]
    eval_set_version: str  # the eval set file's content hash: the same for every recipe evaluated on it
    chunks_fingerprint: str  # of the index's chunks, to set against those the recipe's dataset was built from


def eval_inputs(config: EvalReportConfig, layout: Layout) -> EvalInputs:
    """The eval set (its first `max_questions`), each question with the documents retrieved for it."""
    text = layout.eval_set_file.read_text(encoding="utf-8")
    items = json.loads(text)
    items = items[: config.max_questions] if config.max_questions else items
    if not items:
        raise dg.Failure("The eval set is empty: nothing to evaluate.")
    retriever = Retriever.load(layout, cache_questions=True)
    retrieved = retriever.top_k([item["question"] for item in items], max(config.top_k))
    return EvalInputs(
        [
            EvalItem(item["question"], item["answer"], [chunk.text for chunk in found], item.get("generator"))
            for item, found in zip(items, retrieved, strict=True)
        ],
        content_hash(text),
        chunks_fingerprint(retriever.index.chunk_ids),
    )


def systems(
    config: EvalReportConfig, layout: Layout, llm: LLMResource, vllm: VLLMResource, cache: ReplyCache, log
) -> list[System]:
    """The local models (in this process, or each served by vLLM while it answers) and the reference endpoint."""

    @contextmanager
    def local(name: str, path: Path) -> Iterator[AnswerBackend]:
        # Answers are cached under the identity of the files, not the name or path (a `tiny` rebuilt in place, a
        # fixed served_model_name): a killed evaluation resumes with the answers it had, never older weights'.
        weights = cache.scoped(tree_fingerprint(path))
        if not config.serve_with_vllm:
            from raft_assets.inference.local_model import TransformersBackend  # here: torch, seconds to import

            yield TransformersBackend(path, config.batch_size, config.max_new_tokens, cache=weights)
            return
        with vllm.serve(path, log=log) as served:
            endpoint = Endpoint.at(served.base_url, model=served.model, api_key=served.api_key or "EMPTY")
            yield EndpointBackend(endpoint, weights, config.max_new_tokens, name=name)

    found = [System(name, partial(local, name, path)) for name, path in model_paths(config, layout).items()]
    if config.reference_endpoint:
        if not llm.configured:
            raise dg.Failure("reference_endpoint is set but RAFT_LLM_BASE_URL is not.")
        reference = EndpointBackend(llm.endpoint(), cache, config.max_new_tokens, name=llm.model)
        found.append(System("reference", partial(nullcontext, reference)))
    if config.serve_endpoint:
        found.append(served_system(config.serve_endpoint, config.max_new_tokens, cache))
    return found


def served_system(url: str, max_new_tokens: int, cache: ReplyCache) -> System:
    """A running `raft-assets serve`, asked the questions alone. Its answers are cached under its fingerprint (its
    weights, index and top k): a new deployment is asked again."""
    api_key = dg.EnvVar(API_KEY_VARIABLE).get_value() or "EMPTY"
    try:
        info = service_info(url, api_key)
    except (OSError, ValueError) as error:
        raise dg.Failure(f"serve_endpoint {url}: no `raft-assets serve` answers there ({error}).") from error
    endpoint = Endpoint.at(url, model=info.model, api_key=api_key)
    backend = EndpointBackend(endpoint, cache.scoped(info.fingerprint), max_new_tokens, "served", SERVED_PROMPT)
    return System("served", partial(nullcontext, backend), variants=(info.top_k,))


@dg.asset(
    group_name="evaluation",
    kinds={"python", "markdown"},
    partitions_def=recipes,
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
    """Every configured system on the eval set, with and without retrieved documents; EM, F1, ROUGE, judge. The
    systems that no recipe changes (the base model, the reference) answer from the reply cache after the first."""
    run = recipe_run(context, paths)
    inputs = eval_inputs(config, run.layout)
    items = inputs.items
    cache = ReplyCache(run.layout.reply_cache_file)
    try:
        evaluation = evaluate(
            items,
            systems(config, run.layout, llm, vllm, cache, context.log),
            variants(config),
            judge.endpoint() if judge.configured else None,
            cache,
            config.judge_attempts,
            context.log,
        )
    finally:
        cache.close()
    files = write_report(
        run.layout.reports_folder, evaluation.summaries, evaluation.answers, evaluation.notes, evaluation.headline
    )
    comparison = files["markdown"].read_text(encoding="utf-8").split("## Questions")[0]
    context.log.info(comparison)
    stand_in = stand_in_note([item.generator for item in items])
    return dg.MaterializeResult(
        metadata={
            **file_link(files["markdown"]),
            **recipe_metadata(run.recipe),
            "json": dg.MetadataValue.path(str(files["json"].resolve())),
            "questions": len(items),
            EVAL_SET_VERSION: inputs.eval_set_version,
            CHUNKS_FINGERPRINT: inputs.chunks_fingerprint,
            "generator": ", ".join(sorted({item.generator or "unknown" for item in items})),
            **({"stand_in": stand_in} if stand_in else {}),
            "cached_answers": evaluation.cached_answers,
            "judge": judge.model if judge.configured else "skipped",
            "comparison": dg.MetadataValue.md(comparison),
            "scores_plot": dg.MetadataValue.md(inline_png(files["scores_plot"], "scores by system")),
            **{
                f"{system.replace(' ', '_').replace('=', '')}/{metric}": float(value)
                for system, summary in evaluation.summaries.items()
                for metric, value in summary.items()
                if metric in ("judge_accuracy", "f1", "exact_match", "rouge_l", "refusal_rate", "seconds_per_answer")
                and value is not None
            },
        }
    )
