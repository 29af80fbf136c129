"""Where every asset's files live: the one place that the code writing a file and the code reading it both ask.

    <data_dir>/                               RAFT_DATA_DIR, default data/generated
        documents/<source>.parquet            documents     (one file per source partition)
        chunks/<source>.parquet               chunks
        questions/<source>.parquet            questions
        cot_answers/<source>.parquet          cot_answers
        curated_answers/<source>.parquet      curated_answers, and <source>.scores.png: its score histogram
        index/                                retrieval_index
        raft/raft.jsonl, raft_train.jsonl,    raft_dataset, and splits.parquet: every sample's split
             raft_test.jsonl, raft_chat.jsonl
        eval/eval_set.json                    eval_set
        reports/eval_report.{md,json}, *.png  eval_report
        reports/experiment_report.{md,json,png}  experiment_report: the recipes side by side
        recipes/<recipe>/raft/, reports/      raft_dataset and eval_report of a recipe other than `default`
        recipes/<recipe>/chunks.parquet,      a recipe with its own chunking: its corpus (the columns of
                         index/               `read_corpus`) and its retrieval index, both written by raft_dataset
        llm_cache/replies.sqlite              every model reply, content-addressed (generation, evaluation)
        llm_cache/batches/<stage>/<source>.json  the Batch API batches a stage submitted and has not fetched yet
        embedding_cache/embeddings.sqlite     every text embedded, by model (index, curation, evaluation), unless
                                              RAFT_EMBEDDING_CACHE names a file shared with other projects
    <checkpoint_dir>/                         RAFT_CHECKPOINT_DIR, default checkpoints
        base/base_model.json                  base_model: which model to fine-tune (base/tiny/ when built)
        fsdp/<run>/, fsdp/latest_run          fsdp_checkpoint: a run's DCP checkpoints; the newest run's name
        hf/<run>/, hf/latest_run              hf_checkpoint: the run exported; the newest export's name
        recipes/<recipe>/fsdp/, hf/           fsdp_checkpoint and hf_checkpoint of a recipe other than `default`

A source or recipe name becomes a file name only if the sources file would accept it (`contracts.sources`): a
partition key added by hand (`../x`) never reads or writes outside `data_dir`. The `default` recipe keeps the paths
above; another recipe's `Layout` (`of_recipe`) puts what depends on the recipe under `recipes/<recipe>/`. A recipe
with its own chunking (`own_chunking`) has its corpus and index there too: `index_folder` and the corpus readers
(`contracts.corpus.read_corpus`, the retriever) give its own files for its layout and the shared ones otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from raft_assets.contracts.recipes import DEFAULT_RECIPE
from raft_assets.contracts.sources import SOURCE_NAME_PATTERN, is_valid_source_name
from raft_assets.files import write_text_atomically

RAFT_FILES = {"all": "raft.jsonl", "train": "raft_train.jsonl", "test": "raft_test.jsonl", "chat": "raft_chat.jsonl"}
LATEST_RUN = "latest_run"


class InvalidSourceName(ValueError):
    """A partition key that is not a valid source or recipe name, so never a file name."""


class MissingInput(FileNotFoundError):
    """An asset's input has not been written: the asset that writes it must be materialized first."""


def under(root: str, *parts: str) -> property:
    """A `Layout` property: `parts` joined under its `root` folder (`data_dir` or `checkpoint_dir`)."""
    return property(lambda layout: getattr(layout, root).joinpath(*parts))


@dataclass(frozen=True)
class Layout:
    data_dir: Path
    checkpoint_dir: Path
    recipe: str = DEFAULT_RECIPE
    own_chunking: bool = False  # the recipe's own corpus and index, under its folder
    shared_embedding_cache: Path | None = None  # an embedding cache outside data_dir, shared with other projects

    @classmethod
    def of(
        cls, data_dir: str | Path, checkpoint_dir: str | Path, shared_embedding_cache: str | Path | None = None
    ) -> Layout:
        shared = Path(shared_embedding_cache) if shared_embedding_cache else None
        return cls(Path(data_dir), Path(checkpoint_dir), shared_embedding_cache=shared)

    def of_recipe(self, recipe: str, own_chunking: bool = False) -> Layout:
        """The files of `recipe`: its own dataset, runs and reports, and with `own_chunking` its own corpus and
        index; everything else shared."""
        if not is_valid_source_name(recipe):
            raise InvalidSourceName(
                f"Recipe name {recipe!r} does not follow {SOURCE_NAME_PATTERN}: remove that partition."
            )
        if own_chunking and recipe == DEFAULT_RECIPE:
            raise ValueError(
                f"The {DEFAULT_RECIPE!r} recipe's chunks are the shared ones: it has no chunking of its own."
            )
        return dataclasses.replace(self, recipe=recipe, own_chunking=own_chunking)

    @property
    def with_shared_chunks(self) -> Layout:
        """This layout with the shared corpus and index (those the questions were asked about)."""
        return dataclasses.replace(self, own_chunking=False)

    @property
    def recipe_data_dir(self) -> Path:
        return self.data_dir if self.recipe == DEFAULT_RECIPE else self.data_dir / "recipes" / self.recipe

    @property
    def chunking_dir(self) -> Path:
        """Where the index is: the recipe's folder for a recipe with its own chunking, else `data_dir`."""
        return self.recipe_data_dir if self.own_chunking else self.data_dir

    @property
    def recipe_checkpoint_dir(self) -> Path:
        return self.checkpoint_dir if self.recipe == DEFAULT_RECIPE else self.checkpoint_dir / "recipes" / self.recipe

    def stage_file(self, stage: str, source: str) -> Path:
        """`<data_dir>/<stage>/<source>.parquet`: one source partition of a per-source table."""
        if not is_valid_source_name(source):
            raise InvalidSourceName(
                f"Source name {source!r} is not a valid source name (pattern {SOURCE_NAME_PATTERN}): "
                "it is never used as a file name. Remove that partition of doc_sources."
            )
        return self.data_dir / stage / f"{source}.parquet"

    def curation_histogram(self, source: str) -> Path:
        """The score histogram of one source's `curated_answers`, beside its table."""
        return self.stage_file("curated_answers", source).with_suffix(".scores.png")

    def llm_batch_file(self, stage: str, source: str) -> Path:
        """The ids of the Batch API batches that `stage` submitted for one source (`mode: batch`), kept until their
        replies are in the reply cache, so that a killed run polls them again instead of submitting again."""
        name = self.stage_file(stage, source).with_suffix(".json").name  # refuses a source that is no file name
        return self.reply_cache_file.parent / "batches" / stage / name

    def stage_sources(self, stage: str) -> list[str]:
        """The sources that have a file of `stage`, whatever the partitions say (for readers outside a run)."""
        return sorted(path.stem for path in (self.data_dir / stage).glob("*.parquet"))

    @property
    def embedding_cache_file(self) -> Path:
        return self.shared_embedding_cache or self.data_dir / "embedding_cache" / "embeddings.sqlite"

    def raft_file(self, part: str) -> Path:
        """`all`, `train`, `test` or `chat` (`RAFT_FILES`)."""
        return self.raft_folder / RAFT_FILES[part]

    # Every other file or folder: (the root it is under, its path there).
    index_folder = under("chunking_dir", "index")
    eval_set_file = under("data_dir", "eval", "eval_set.json")
    experiment_reports_folder = under("data_dir", "reports")
    reply_cache_file = under("data_dir", "llm_cache", "replies.sqlite")
    base_folder = under("checkpoint_dir", "base")
    base_pointer_file = under("checkpoint_dir", "base", "base_model.json")
    # The recipe's own.
    raft_folder = under("recipe_data_dir", "raft")
    splits_file = under("recipe_data_dir", "raft", "splits.parquet")
    own_corpus_file = under("recipe_data_dir", "chunks.parquet")  # read only with own_chunking (`read_corpus`)
    reports_folder = under("recipe_data_dir", "reports")
    fsdp_folder = under("recipe_checkpoint_dir", "fsdp")
    hf_folder = under("recipe_checkpoint_dir", "hf")

    @staticmethod
    def latest_run(folder: Path) -> Path | None:
        """The newest run's folder in `fsdp_folder` or `hf_folder`, or None before the first."""
        pointer = folder / LATEST_RUN
        return folder / pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None

    @staticmethod
    def set_latest_run(run_folder: Path) -> None:
        write_text_atomically(run_folder.parent / LATEST_RUN, run_folder.name)
