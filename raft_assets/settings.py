"""Every `RAFT_*` environment variable the code location reads, read here and only here (the chat command reads its
own key, `RAFT_CHAT_API_KEY`), with its default. All are optional: the defaults run offline on a CPU.

A secret is never read into these settings: for an API key they hold the variable's name, which the Dagster
resource takes as `dg.EnvVar`, so the UI and the run config show the name, never the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class EndpointVariables:
    """`<prefix>_BASE_URL`, `_API_KEY`, `_MODEL`, `_MAX_CONCURRENCY` of one model endpoint (the generator, the judge,
    the curator)."""

    base_url: str | None  # unset: no endpoint
    api_key_variable: str | None  # the name of the variable holding the key, when it is set
    model: str | None
    max_concurrency: int | None


@dataclass(frozen=True)
class Settings:
    sources_file: str
    experiments_file: str  # the recipes compared by experiment_report
    data_dir: str
    checkpoint_dir: str
    embedding_cache: str | None  # unset: the one in data_dir
    base_model: str  # a local model folder, a Hugging Face id in the local cache, or `tiny`
    eval_curation: str  # the eval set's curation file
    crawl_schedule: str  # cron, UTC
    executor: str  # multiprocess, or k8s: a pod per step
    train_gpus: int  # GPUs of the training pod (k8s)
    eval_gpus: int  # GPUs of the evaluation pod (k8s)
    generator: EndpointVariables
    judge: EndpointVariables
    curator: EndpointVariables  # unset: curated_answers asks the generator's endpoint


def endpoint_variables(prefix: str, env: Mapping[str, str]) -> EndpointVariables:
    concurrency = env.get(f"{prefix}_MAX_CONCURRENCY")
    return EndpointVariables(
        base_url=env.get(f"{prefix}_BASE_URL") or None,
        api_key_variable=f"{prefix}_API_KEY" if f"{prefix}_API_KEY" in env else None,
        model=env.get(f"{prefix}_MODEL") or None,
        max_concurrency=int(concurrency) if concurrency else None,
    )


def gpus(env: Mapping[str, str], variable: str, default: int) -> int:
    value = env.get(variable, str(default))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{variable}={value!r}: expected a whole number of GPUs, at least 1.")
    return int(value)


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """The settings as the environment gives them now."""
    return Settings(
        sources_file=env.get("RAFT_SOURCES", "data/sources.yaml"),
        experiments_file=env.get("RAFT_EXPERIMENTS", "data/experiments.yaml"),
        data_dir=env.get("RAFT_DATA_DIR", "data/generated"),
        checkpoint_dir=env.get("RAFT_CHECKPOINT_DIR", "checkpoints"),
        embedding_cache=env.get("RAFT_EMBEDDING_CACHE") or None,
        base_model=env.get("RAFT_BASE_MODEL", "tiny"),
        eval_curation=env.get("RAFT_EVAL_CURATION", "data/eval_curation.yaml"),
        crawl_schedule=env.get("RAFT_CRAWL_SCHEDULE", "0 3 * * *"),
        executor=env.get("RAFT_EXECUTOR", "multiprocess"),
        train_gpus=gpus(env, "RAFT_K8S_TRAIN_GPUS", 8),
        eval_gpus=gpus(env, "RAFT_K8S_EVAL_GPUS", 1),
        generator=endpoint_variables("RAFT_LLM", env),
        judge=endpoint_variables("RAFT_JUDGE", env),
        curator=endpoint_variables("RAFT_CURATOR", env),
    )
