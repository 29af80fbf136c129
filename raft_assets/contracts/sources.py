"""The sources file (`data/sources.yaml`): one entry per document source, each a partition key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# A source name becomes a partition key and a file name: keep it to a safe alphabet.
SOURCE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_SOURCE_NAME = re.compile(SOURCE_NAME_PATTERN)
DEFAULT_INCLUDE = ["**/*.md", "**/*.markdown", "**/*.txt", "**/*.html", "**/*.htm", "**/*.pdf"]
# How an HTML page becomes text: its main content (trafilatura), or the reference recipe's cleaning.
HtmlExtraction = Literal["main_content", "reference"]


class SourcesError(ValueError):
    """The sources file is missing or invalid."""


def is_valid_source_name(name: str) -> bool:
    """Whether `name` follows SOURCE_NAME_PATTERN, the rule for names in the sources file (the whole string)."""
    return _SOURCE_NAME.fullmatch(name) is not None


class _Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=SOURCE_NAME_PATTERN)
    html_extraction: HtmlExtraction = Field(
        default="main_content",
        description="How HTML pages become text. `main_content`: the page's main content only (no sidebars, search "
        "boxes, navigation, footers, heading permalinks), headings as `#` lines, lists as `- ` lines, table rows, code "
        "blocks verbatim in ``` fences. `reference`: the reference recipe's cleaning (drops <nav>, <header>, "
        "div[role=list], scripts and styles; keeps every other text, one line per block).",
    )


class LocalSource(_Source):
    """A folder of text, markdown, HTML and PDF files."""

    kind: Literal["local"]
    path: Path
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = Field(default_factory=list)
    max_file_mb: float = Field(default=25.0, gt=0)


class SitemapSource(_Source):
    """The pages listed by a sitemap XML (a URL, or a local file with `allowed_hosts`)."""

    kind: Literal["sitemap"]
    sitemap: str
    allowed_hosts: list[str] = Field(default_factory=list)
    url_patterns: list[str] = Field(default_factory=list)
    max_pages: int = Field(default=500, gt=0)
    requests_per_second: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0)

    @property
    def is_remote(self) -> bool:
        return urlparse(self.sitemap).scheme in ("http", "https")

    @property
    def hosts(self) -> list[str]:
        """The hosts whose pages may be fetched: the allow-list, else the sitemap's own host."""
        return self.allowed_hosts or [urlparse(self.sitemap).netloc]

    @model_validator(mode="after")
    def _local_sitemap_needs_hosts(self) -> SitemapSource:
        if not self.is_remote and not self.allowed_hosts:
            raise ValueError(f"sitemap {self.sitemap!r} is a local file: list the hosts to fetch in allowed_hosts")
        return self


SourceSpec = Annotated[LocalSource | SitemapSource, Field(discriminator="kind")]


class SourcesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[SourceSpec]

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceSpec]) -> list[SourceSpec]:
        names = [source.name for source in sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicates)}")
        return sources


def load_sources(path: Path) -> list[SourceSpec]:
    """Read and validate the sources file; relative paths in it are relative to the file's folder."""
    if not path.is_file():
        raise SourcesError(f"Sources file {path} not found (set RAFT_SOURCES to point at yours).")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        parsed = SourcesFile.model_validate(raw)
    except yaml.YAMLError as error:
        raise SourcesError(f"{path} is not valid YAML: {error}") from error
    except ValidationError as error:
        raise SourcesError(f"{path} is invalid:\n{error}") from error
    return [_resolve_paths(source, path.parent) for source in parsed.sources]


def _resolve_paths(source: SourceSpec, base: Path) -> SourceSpec:
    if isinstance(source, LocalSource):
        return source.model_copy(update={"path": base / source.path})
    if not source.is_remote:
        return source.model_copy(update={"sitemap": str(base / source.sitemap)})
    return source
