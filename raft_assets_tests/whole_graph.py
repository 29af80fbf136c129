"""The whole graph as a user runs it, shared by the end-to-end and the resume tests.

The sample sources plus a sitemap source served on loopback (`SiteServer`, which can hold a page: a hung fetch),
the run config, the generator and the judge behind OpenAI-compatible test servers. `run_end_to_end` is the suite's
one uninterrupted whole-graph run with endpoints (the demo's runs offline): test_end_to_end checks what it wrote,
and test_resume_everywhere compares a run killed three times with it. Its servers fail requests (429, 5xx, dropped
connections), which the client retries: the files are those of a run without faults, so the resumed run, on servers
without faults, must write the same. `run_new_recipes` adds two recipes to its experiments file and runs them alone.
`WholeGraph` runs both in a background thread, so that the killed and resumed run goes on meanwhile.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import CompletedProcess

import dagster as dg
import yaml

from raft_assets.contracts.recipes import DEFAULT_RECIPE
from raft_assets.evaluation.calibration import verdicts_file
from raft_assets_tests.conftest import (
    ONE_PROMPT_PER_BATCH,
    ONE_TRAINING_PROCESS,
    QUICK_VALIDATION,
    REPO,
    run_cli,
    write_sources,
)
from raft_assets_tests.openai_server import OpenAITestServer, last_user_message
from raft_assets_tests.raft_model import raft_responder

STEPS = 4
RUN_CONFIG = {
    "ops": {
        "questions": {"config": {"questions_per_chunk": 2}},
        "eval_set": {"config": {"size": 20}},  # enough for every system's numbers; each is answered and judged
        "fsdp_checkpoint": {
            "config": {"max_steps": STEPS, "save_every_steps": 2, "context_length": 2048, **QUICK_VALIDATION}
        },
        "eval_report": {
            "config": {"top_k": [3], "max_new_tokens": 8, "reference_endpoint": True, **ONE_PROMPT_PER_BATCH}
        },
    }
}
# Faults the client retries: they cost attempts, not rows, and change no file (content faults, which are new
# requests with another seed, are tested in test_generation and test_curation).
GENERATOR_FAULTS = {"http_429": 0.04, "http_500": 0.04, "reset": 0.02}
# The judge gets about 5 requests per eval question (70 with 13 questions): at 10%, that none fails has a chance
# under 0.1%.
JUDGE_FAULTS = {"http_503": 0.1}
SITE = "site"  # the sitemap source's name


def generator(body: dict) -> str:
    """The 70B stand-in: RAFT questions and answers, and plain answers when evaluated as the reference."""
    if body["messages"][0]["content"].startswith("You are a helpful chatbot"):
        return "The documents answer it. <ANSWER>: FSDP"
    return raft_responder(body)


def judge(body: dict) -> str:
    return ("YES", "NO")[len(last_user_message(body)) % 2]


def endpoint_env(servers: dict[str, OpenAITestServer], keys: dict[str, str]) -> dict[str, str]:
    """The variables that point a run at the generator and judge test servers, with their keys."""
    return {
        "RAFT_LLM_BASE_URL": servers["generator"].base_url,
        "RAFT_LLM_API_KEY": keys["generator"],
        "RAFT_LLM_MODEL": "llama-70b",
        "RAFT_JUDGE_BASE_URL": servers["judge"].base_url,
        "RAFT_JUDGE_API_KEY": keys["judge"],
        "RAFT_JUDGE_MODEL": "judge",
    }


PAGES = {
    "/guides/accumulation.html": (
        "Gradient accumulation",
        "Gradient accumulation runs several micro-batches forward and backward before one optimizer step, so a "
        "small GPU trains with the effective batch size of a large one. The loss of each micro-batch is divided "
        "by the number of label tokens in the whole step, which keeps long and short samples weighted fairly.",
    ),
    "/guides/warmup.html": (
        "Learning-rate warmup",
        "Warmup raises the learning rate linearly over the first steps of fine-tuning, before the cosine decay "
        "begins. Without it the first updates of a pretrained model can be large enough to undo what the model "
        "knew, and the loss jumps before it falls. A few dozen steps of warmup are usually enough.",
    ),
    "/guides/sharding.html": (
        "Sharded checkpoints",
        "A sharded checkpoint stores each rank's slice of the parameters and optimizer state in its own file, "
        "written in parallel. Resuming reads the slices back on the same number of ranks, or reshards them on a "
        "different number, and continues from the saved step with the saved data position and schedule.",
    ),
}
HELD_PAGE = "/guides/warmup.html"


class SiteServer:
    """The sitemap source's web site on loopback; while `holding`, HELD_PAGE waits for `release()` (a hung page)."""

    def __init__(self) -> None:
        self.holding = False
        self.held = threading.Event()  # HELD_PAGE was requested while holding
        self.released = threading.Event()
        self.requests: Counter[str] = Counter()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                site.requests[self.path] += 1
                if self.path == HELD_PAGE and site.holding:
                    site.held.set()
                    site.released.wait(timeout=300)
                body, kind = site.page(self.path)
                try:
                    self.send_response(200 if body else 404)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the run that asked was killed

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.sitemap_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/sitemap.xml"

    def page(self, path: str) -> tuple[bytes, str]:
        if path == "/sitemap.xml":
            base = self.sitemap_url.removesuffix("/sitemap.xml")
            entries = "".join(f"<url><loc>{base}{page}</loc></url>" for page in PAGES)
            xml = f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'
            return xml.encode(), "application/xml"
        if path in PAGES:
            title, text = PAGES[path]
            html = f"<html><head><title>{title}</title></head><body><nav>Guides</nav><h1>{title}</h1><p>{text}</p>"
            return (html + "</body></html>").encode(), "text/html; charset=utf-8"
        return b"", "text/plain"

    def hold(self) -> None:
        self.holding = True
        self.held.clear()
        self.released.clear()

    def release(self) -> None:
        self.holding = False
        self.released.set()

    def __enter__(self) -> SiteServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._httpd.shutdown()
        self._httpd.server_close()


@dataclass
class Workspace:
    """A DAGSTER_HOME, data and checkpoint folders, and the sources and run config of the runs in it."""

    root: Path
    sources: Path
    config: Path

    @property
    def data(self) -> Path:
        return self.root / "generated"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def args(self) -> list[str]:
        return ["--config", str(self.config)]

    def latest_checkpoint(self) -> str | None:
        """What `checkpoints/fsdp/<run>/latest` names, once a run saved a checkpoint."""
        pointers = list((self.checkpoints / "fsdp").glob("*/latest"))
        return pointers[0].read_text().strip() if pointers else None

    def fsdp_materializations(self) -> list[dict]:
        """The metadata of every fsdp_checkpoint materialization of the default recipe, oldest first, from the
        Dagster instance."""
        with dg.DagsterInstance.from_config(str(self.root / "dagster_home")) as instance:
            records = instance.fetch_materializations(dg.AssetKey("fsdp_checkpoint"), limit=100).records
            return [
                {key: value.value for key, value in record.asset_materialization.metadata.items()}
                for record in sorted(records, key=lambda record: record.storage_id)
                if record.asset_materialization.partition == DEFAULT_RECIPE
            ]


def workspace(root: Path, site: SiteServer) -> Workspace:
    """The sample sources (data/sources.yaml) with the sitemap source `site` between them."""
    sample = yaml.safe_load((REPO / "data" / "sources.yaml").read_text(encoding="utf-8"))["sources"]
    local = [{**source, "path": str(REPO / "data" / source["path"])} for source in sample]
    remote = {"name": SITE, "kind": "sitemap", "sitemap": site.sitemap_url, "timeout_s": 300, "retries": 0}
    remote["requests_per_second"] = 50
    sources = write_sources(root / "sources.yaml", [local[0], remote, *local[1:]])
    config = root / "run_config.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG), encoding="utf-8")
    return Workspace(root, sources, config)


@dataclass(frozen=True)
class EndToEndRun:
    """The uninterrupted run: its workspace, output, keys, servers and the requests they answered (each
    fingerprint with its count of replies, as the run left them)."""

    space: Workspace
    result: CompletedProcess
    keys: dict[str, str]
    servers: dict[str, OpenAITestServer]
    generator: Counter[str]
    judge: Counter[str]
    experiment_report: dict  # as this run wrote it: the new recipes' run writes it again


def run_end_to_end(space: Workspace) -> EndToEndRun:
    """The whole graph from a fresh DAGSTER_HOME with `raft-assets run`, on servers with faults and keys."""
    keys = {"generator": f"gen-{uuid.uuid4().hex}", "judge": f"judge-{uuid.uuid4().hex}"}
    servers = {
        "generator": OpenAITestServer(
            generator, models=["llama-70b"], api_key=keys["generator"], faults=GENERATOR_FAULTS, retry_after_s=0.01
        ),
        "judge": OpenAITestServer(
            judge, models=["judge"], api_key=keys["judge"], faults=JUDGE_FAULTS, retry_after_s=0.01
        ),
    }
    with servers["generator"], servers["judge"]:
        result = run_cli(space.root, *space.args(), sources=space.sources, **endpoint_env(servers, keys))
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    stats = {name: server.stats for name, server in servers.items()}
    return EndToEndRun(
        space,
        result,
        keys,
        servers,
        stats["generator"].completed_fingerprints,
        stats["judge"].completed_fingerprints,
        json.loads((space.data / "reports" / "experiment_report.json").read_text()),
    )


# The new recipes train 2 steps in one process (the whole graph's run trains 4 in two, for the resume module's kill
# at step 2 of 4).
NEW_RECIPES_CONFIG = {
    "resources": ONE_TRAINING_PROCESS,
    "ops": {
        **RUN_CONFIG["ops"],
        "fsdp_checkpoint": {
            "config": {**RUN_CONFIG["ops"]["fsdp_checkpoint"]["config"], "max_steps": 2, "save_every_steps": 2}
        },
    },
}
NEW_RECIPES = {"oracle_always": {"dataset": {"p": 1.0}}, "lora": {"fine_tune": {"method": "lora", "lr": 1.0e-3}}}
PLANTED = 6  # people's verdicts planted on the default recipe's judged answers
DISAGREEING = 2  # of them, the ones that say the opposite of the judge


@dataclass(frozen=True)
class NewRecipes:
    """The run of the recipes added after the uninterrupted run, in its workspace: its output and its servers."""

    root: Path
    result: CompletedProcess
    servers: dict[str, OpenAITestServer]


def plant_verdicts(space: Workspace, curation_file: Path) -> None:
    """People's verdicts on the default recipe's first PLANTED judged answers, beside the curation file: the first
    DISAGREEING say the opposite of the judge."""
    report = json.loads((space.data / "reports" / "eval_report.json").read_text())
    judged = [row for row in report["answers"]["finetuned RAG k=3"] if row["judgement"] is not None][:PLANTED]
    verdicts = [
        {
            "question": row["question"],
            "reference": row["reference"],
            "answer": row["answer"],
            "verdict": "correct" if row["judgement"] == (i >= DISAGREEING) else "incorrect",
            "reviewer": "test",
            "at": "2026-12-02T00:00:00+00:00",
            "system": "finetuned RAG k=3",
        }
        for i, row in enumerate(judged)
    ]
    verdicts_file(curation_file).write_text("".join(json.dumps(v) + "\n" for v in verdicts))


def run_new_recipes(reference: EndToEndRun) -> NewRecipes:
    """Two recipes added to the experiments file after the run, then `raft-assets run --recipe` for each alone, with
    the same endpoints (fresh servers, the same keys), and people's verdicts planted beside the curation file."""
    space, keys = reference.space, reference.keys
    root = space.root
    experiments = root / "experiments.yaml"  # the file of cli_env's RAFT_EXPERIMENTS
    experiments.write_text(yaml.safe_dump({"recipes": {"default": {}, **NEW_RECIPES}}), encoding="utf-8")
    curation = root / "eval_curation.yaml"
    plant_verdicts(space, curation)
    config = root / "new_recipes_config.yaml"
    config.write_text(yaml.safe_dump(NEW_RECIPES_CONFIG), encoding="utf-8")
    servers = {
        "generator": OpenAITestServer(generator, models=["llama-70b"], api_key=keys["generator"]),
        "judge": OpenAITestServer(judge, models=["judge"], api_key=keys["judge"]),
    }
    with servers["generator"], servers["judge"]:
        result = run_cli(
            root,
            "--config",
            str(config),
            *(argument for recipe in NEW_RECIPES for argument in ("--recipe", recipe)),
            sources=space.sources,
            **endpoint_env(servers, keys),
            RAFT_EVAL_CURATION=str(curation),
        )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return NewRecipes(root, result, servers)


class WholeGraph:
    """The uninterrupted run, then (when a test asks for them) the new recipes on it, in a thread of their own from
    the start: test_resume_everywhere's run, killed and resumed in another workspace, goes on meanwhile, and is
    compared with it at the end. One after the other they took 369 s of a 508 s suite on one xdist worker; side by
    side, 311 s of a 542 s suite (a slower hour: 922 CPU-s against 873), and 145 s alone on 2 cores.

    The killed run's first kill counts the sitemap site's requests: it starts once this run has fetched the site
    (`wait_until_site_fetched`), after which this run fetches nothing more."""

    def __init__(self, root: Path, site: SiteServer, *, new_recipes: bool) -> None:
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="whole-graph")
        self._space = workspace(root, site)
        self._reference = self._threads.submit(run_end_to_end, self._space)
        self._new_recipes: Future[NewRecipes] | None = None
        if new_recipes:
            self._new_recipes = self._threads.submit(lambda: run_new_recipes(self._reference.result()))

    def reference(self) -> EndToEndRun:
        return self._reference.result()

    def new_recipes(self) -> NewRecipes:
        assert self._new_recipes is not None, "no collected test asked for the new recipes when the run started"
        return self._new_recipes.result()

    def wait_until_site_fetched(self, timeout: float = 600) -> None:
        """Until the run has written the sitemap source's documents (or ended: then its error, if it failed)."""
        documents = self._space.data / "documents" / f"{SITE}.parquet"
        deadline = time.monotonic() + timeout
        while not documents.exists():
            if self._reference.done():
                self.reference()
                return
            assert time.monotonic() < deadline, "the uninterrupted run never fetched the sitemap source"
            time.sleep(0.2)

    def __enter__(self) -> WholeGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self._threads.shutdown(wait=True)
