"""The resources every stage shares: where the project's files are (`paths`) and the model endpoints (`llm`, `judge`,
`curator`).

Their defaults come from the `RAFT_*` variables (`raft_assets.settings`); an API key is passed as `dg.EnvVar`, so
the UI and the run config show the variable's name, never the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from raft_assets.contracts.layout import Layout
from raft_assets.contracts.recipes import Recipe, RecipesError, load_recipes
from raft_assets.contracts.sources import SourceSpec, load_sources
from raft_assets.llm.client import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT_S,
    ChatClient,
    Endpoint,
)
from raft_assets.llm.reply_cache import ReplyCache
from raft_assets.settings import EndpointVariables, Settings


class ProjectPaths(dg.ConfigurableResource):
    """The sources and experiments files and the output folders. Relative paths are relative to the working
    directory."""

    sources_file: str = "data/sources.yaml"
    experiments_file: str = "data/experiments.yaml"
    data_dir: str = "data/generated"
    checkpoint_dir: str = "checkpoints"
    embedding_cache: str | None = Field(
        default=None,
        description="An embedding cache file shared with other projects (texts embedded once per model, whoever "
        "asked); unset: data_dir's own.",
    )

    @classmethod
    def from_settings(cls, settings: Settings) -> ProjectPaths:
        return cls(
            sources_file=settings.sources_file,
            experiments_file=settings.experiments_file,
            data_dir=settings.data_dir,
            checkpoint_dir=settings.checkpoint_dir,
            embedding_cache=settings.embedding_cache,
        )

    @property
    def layout(self) -> Layout:
        """Where every asset's files are (`contracts/layout.py`)."""
        return Layout.of(self.data_dir, self.checkpoint_dir, self.embedding_cache)

    def sources(self) -> list[SourceSpec]:
        return load_sources(Path(self.sources_file))

    def source(self, name: str) -> SourceSpec:
        by_name = {spec.name: spec for spec in self.sources()}
        if name not in by_name:
            raise dg.Failure(
                f"Source {name!r} is not in {self.sources_file} (sources there: {', '.join(by_name) or 'none'})."
            )
        return by_name[name]

    def recipes(self) -> list[Recipe]:
        """The recipes of the experiments file, `default` first (only `default` without the file)."""
        return load_recipes(Path(self.experiments_file))

    def recipe(self, name: str) -> Recipe:
        try:
            by_name = {recipe.name: recipe for recipe in self.recipes()}
        except RecipesError as error:
            raise dg.Failure(str(error)) from None
        if name not in by_name:
            raise dg.Failure(
                f"Recipe {name!r} is not in {self.experiments_file} (recipes there: {', '.join(by_name)}): remove the "
                "partition or add the recipe."
            )
        return by_name[name]

    def stage_file(self, stage: str, source: str) -> Path:
        """`<data_dir>/<stage>/<source>.parquet`; a partition key that is not a valid source name is refused."""
        return self.layout.stage_file(stage, source)


class LLMResource(dg.ConfigurableResource):
    """An OpenAI-compatible chat endpoint (vLLM, TGI, a cloud API), or several replicas of one."""

    base_url: str | None = Field(
        default=None, description="Endpoint URL(s), comma-separated replicas; unset: no endpoint (see each use)."
    )
    api_key: str = Field(default="EMPTY", repr=False, description="Set it with an environment variable (dg.EnvVar).")
    model: str = DEFAULT_MODEL
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY,
        gt=0,
        description="Most requests in flight at once, over all replicas: the level adapts below it to what the "
        "server answers fastest; set a cap on a shared server.",
    )
    adaptive_concurrency: bool = Field(
        default=True, description="False: keep exactly max_concurrency requests in flight (no adapting)."
    )
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0, description="Counts prompt + max_tokens per request.")
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="Per HTTP attempt.")
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0)
    token_budget: int | None = Field(
        default=None, gt=0, description="Most tokens one materialization may spend; requests past it are not sent."
    )
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="batch: the first requests of questions, cot_answers and curated_answers not in the reply cache "
        "go through the endpoint's OpenAI Batch API first (half price at many providers, replies within 24 h); what a "
        "batch does not answer, and every retry, is asked online. Batches go to the first URL; the judge is always "
        "asked online.",
    )
    batch_poll_interval_s: float = Field(
        default=60.0, gt=0, description="Seconds between two status checks of a submitted batch (mode: batch)."
    )

    @classmethod
    def from_variables(cls, variables: EndpointVariables) -> LLMResource:
        settings: dict = {"base_url": variables.base_url}
        if variables.api_key_variable:
            settings["api_key"] = dg.EnvVar(variables.api_key_variable)
        if variables.model:
            settings["model"] = variables.model
        if variables.max_concurrency:
            settings["max_concurrency"] = variables.max_concurrency
        return cls(**settings)

    @property
    def configured(self) -> bool:
        return bool(self.base_url)

    def endpoint(self) -> Endpoint:
        if not self.configured:
            raise dg.Failure("No endpoint is configured for this model (set its *_BASE_URL variable).")
        return Endpoint.at(
            self.base_url or "",
            model=self.model,
            api_key=self.api_key,
            max_concurrency=self.max_concurrency,
            adaptive_concurrency=self.adaptive_concurrency,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            token_budget=self.token_budget,
        )

    def client(self, cache: ReplyCache) -> ChatClient:
        return ChatClient(self.endpoint(), cache)
