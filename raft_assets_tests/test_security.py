"""Security review tests (docs/security.md): names that could escape the data folder, the sitemap's host
restriction, loading only safe formats, commands without a shell, and API keys kept out of everything Dagster
records. Real files, loopback servers, real subprocesses and real Dagster instances throughout."""

from __future__ import annotations

import ast
import asyncio
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from raft_assets.contracts.layout import InvalidSourceName, Layout
from raft_assets.contracts.prompts import load_prompts
from raft_assets.contracts.sources import SitemapSource, SourcesError, load_sources
from raft_assets.contracts.tables import DOCUMENT_SCHEMA
from raft_assets.defs.evaluation.vllm import VLLMResource, list_models
from raft_assets.defs.generation.assets import questions
from raft_assets.defs.ingestion.assets import chunks, documents
from raft_assets.defs.partitions import doc_sources
from raft_assets.defs.resources import LLMResource, ProjectPaths
from raft_assets.defs.training.trainer import TrainerResource
from raft_assets.evaluation.metrics import JUDGE_PROMPT
from raft_assets.evaluation.run import judge_all
from raft_assets.ingestion.sitemap import load_sitemap
from raft_assets.llm.reply_cache import ReplyCache
from raft_assets.settings import load_settings
from raft_assets.training.base_model import BaseModelUnavailable, resolve_base_model
from raft_assets.training.params import TrainParams
from raft_assets_tests.conftest import REPO, write_sources
from raft_assets_tests.openai_server import OpenAITestServer
from raft_assets_tests.raft_model import raft_responder
from raft_assets_tests.test_generation import write_corpus
from raft_assets_tests.test_sitemap import page, sitemap
from raft_assets_tests.test_vllm_resource import STAND_IN
from raft_assets_tests.web_server import Route, WebServer

# Shell metacharacters: if any of these ever reached a shell, `pwned` would appear in the working directory.
HOSTILE = "run $(touch pwned); touch pwned `touch pwned` | touch pwned && rm -rf nothing 'q' \"dq\" > out"


# --- source names and partition keys never become paths outside the data folder --------------------------

BAD_NAMES = [
    "../evil",
    "..",
    ".",
    "a/b",
    "a\\b",
    "/etc/passwd",
    "C:evil",
    "x" * 65,
    "a\x00b",
    "a\nb",
    "name\n",
    "",
    "-rf",
    ".hidden",
    "a b",
    "ünïcode",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_sources_file_with_an_unsafe_name_is_rejected_naming_it(tmp_path, name):
    path = write_sources(
        tmp_path / "sources.yaml",
        [{"name": "good", "kind": "local", "path": "."}, {"name": name, "kind": "local", "path": "."}],
    )
    with pytest.raises(SourcesError) as error:
        load_sources(path)
    message = str(error.value)
    assert str(path) in message and "sources.1" in message and "should match pattern" in message
    assert f"input_value={name!r}"[:32] in message  # the name itself (pydantic shortens a long one)


def test_the_longest_and_plainest_valid_names_are_accepted(tmp_path):
    names = ["a", "A-1_b", "9" * 64]
    path = write_sources(tmp_path / "sources.yaml", [{"name": name, "kind": "local", "path": "."} for name in names])
    assert [source.name for source in load_sources(path)] == names


@pytest.mark.parametrize("name", BAD_NAMES)
def test_stage_file_refuses_a_name_the_sources_file_would_refuse(project, name):
    with pytest.raises(InvalidSourceName, match="is not a valid source name"):
        project.stage_file("chunks", name)


def test_stage_file_stays_in_the_data_folder(project):
    path = project.stage_file("chunks", "docs")
    assert path.resolve().parent.parent == Path(project.data_dir).resolve()


def documents_frame(source: str) -> pl.DataFrame:
    text = "Some text about FSDP that is long enough to be a chunk of its own, and then some more words. " * 5
    row = ("d1", source, "a.md", "A", text, "h1", None)
    return pl.DataFrame([row], schema=DOCUMENT_SCHEMA, orient="row")


def step_errors(result: dg.ExecuteInProcessResult) -> str:
    """The messages of every failed step's error and of the errors that caused it."""
    messages = []
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None:
            messages.append(error.message)
            error = error.cause
    return "\n".join(messages)


def test_a_partition_key_added_by_hand_cannot_read_or_write_outside_the_data_folder(project, instance, tmp_path):
    write_sources(Path(project.sources_file), [{"name": "docs", "kind": "local", "path": str(tmp_path)}])
    key = "../../outside/evil"  # <data_dir>/<stage>/../../outside/evil.parquet is tmp_path/outside/evil.parquet
    planted = tmp_path / "outside" / "evil.parquet"
    planted.parent.mkdir()
    documents_frame("evil").write_parquet(planted)
    before = planted.read_bytes()
    instance.add_dynamic_partitions(doc_sources.name, [key])  # as anyone can in the UI

    for asset, resources in (
        (documents, {}),
        (chunks, {}),
        (questions, {"llm": LLMResource()}),
    ):
        result = dg.materialize(
            [asset],
            partition_key=key,
            instance=instance,
            resources={"paths": project, **resources},
            raise_on_error=False,
        )
        assert not result.success, asset.key
        message = step_errors(result)
        if asset is documents:
            assert "Source '../../outside/evil' is not in" in message
        else:
            assert "Source name '../../outside/evil' is not a valid source name" in message
    assert planted.read_bytes() == before
    assert sorted(path.name for path in planted.parent.iterdir()) == ["evil.parquet"]
    assert not Path(project.data_dir).exists()  # nothing was written anywhere


# --- sitemap URLs: fetched only on the allowed host, never turned into file paths ------------------------


@pytest.fixture
def two_sites() -> Iterator[tuple[WebServer, WebServer]]:
    """`allowed` serves the sitemap; `other` (127.0.0.1 too, another port) must never be contacted."""
    with WebServer() as allowed, WebServer() as other:
        other.routes["/x.html"] = Route(page("Other", "must never be fetched"))
        other.routes["/sitemap.xml"] = sitemap(other.url("/x.html"))
        yield allowed, other


def sitemap_source(server: WebServer, **options) -> SitemapSource:
    settings = {"timeout_s": 2.0, "retries": 0, "requests_per_second": 100.0} | options
    return SitemapSource(name="site", kind="sitemap", sitemap=server.url("/sitemap.xml"), **settings)


def test_sitemap_urls_elsewhere_or_with_other_schemes_are_never_fetched(two_sites, tmp_path):
    allowed, other = two_sites
    secret = tmp_path / "secret.txt"
    secret.write_text("local-file-secret", encoding="utf-8")
    a, b = allowed.port, other.port
    off_host = [
        f"file://{secret}",
        f"ftp://127.0.0.1:{a}/page.html",
        "javascript:alert(1)",
        "data:text/html,data-url-secret",
        other.url("/x.html"),  # same address, another port
        other.url("/x.html", host="localhost"),
        allowed.url("/x.html", host="localhost"),  # same port, another host name
        f"http://127.0.0.1:{a}@127.0.0.1:{b}/x.html",  # userinfo: the host is the part after @
        f"http://user:pw@127.0.0.1:{a}/page.html",  # credentials in a URL are refused too
        f"http://127.0.0.1:{a}\\@127.0.0.1:{b}/x.html",
        f"http://127.0.0.1:{b}#@127.0.0.1:{a}/",
        f"https://127.0.0.1:{b}/x.html",
    ]
    redirects = {
        "/to-other": other.url("/x.html"),
        "/to-other-scheme-relative": f"//127.0.0.1:{b}/x.html",
        "/to-file": f"file://{secret}",
        "/to-userinfo": f"http://127.0.0.1:{a}@127.0.0.1:{b}/x.html",
        "/to-localhost": allowed.url("/page.html", host="localhost"),
    }
    allowed.routes.update({path: Route(status=302, headers={"Location": to}) for path, to in redirects.items()})
    allowed.routes["/page.html"] = Route(page("Page", "The allowed page."))
    allowed.routes["/same-host"] = Route(status=301, headers={"Location": "/page.html"})
    on_host = [allowed.url("/page.html"), allowed.url("/same-host"), allowed.url("/docs/../../etc/passwd")]
    allowed.routes["/sitemap.xml"] = sitemap(*on_host, *[allowed.url(path) for path in redirects], *off_host)

    load = load_sitemap(sitemap_source(allowed))
    docs = {doc.uri: doc for doc in load.documents}

    assert load.off_host == off_host
    assert list(docs) == [*on_host, *[allowed.url(path) for path in redirects]]
    assert docs[allowed.url("/page.html")].error is None
    assert docs[allowed.url("/same-host")].text == docs[allowed.url("/page.html")].text
    # A `..` in a URL is a web path on the allowed host (404 there), never a file on this machine.
    assert docs[allowed.url("/docs/../../etc/passwd")].error == "HTTP 404 Not Found"
    for path in redirects:
        assert "whose host is not allowed" in docs[allowed.url(path)].error, path
    assert other.requests == []
    assert {request.host for request in allowed.requests} == {f"127.0.0.1:{a}"}
    everything = "".join(doc.text + (doc.error or "") for doc in load.documents)
    assert "local-file-secret" not in everything and "data-url-secret" not in everything


def test_a_child_sitemap_on_another_host_is_not_fetched(two_sites):
    allowed, other = two_sites
    allowed.routes["/sitemap.xml"] = Route(
        f"<sitemapindex><sitemap><loc>{other.url('/sitemap.xml')}</loc></sitemap></sitemapindex>".encode(),
        content_type="application/xml",
    )
    assert load_sitemap(sitemap_source(allowed)).documents == []
    assert other.requests == []


def test_a_sitemap_with_an_external_entity_reads_no_local_file(two_sites, tmp_path):
    allowed, _ = two_sites
    secret = tmp_path / "secret.txt"
    secret.write_text("xxe-secret", encoding="utf-8")
    allowed.routes["/sitemap.xml"] = Route(
        f'<?xml version="1.0"?><!DOCTYPE urlset [<!ENTITY e SYSTEM "file://{secret}">]>'
        f"<urlset><url><loc>{allowed.url('/p')}?q=&e;</loc></url></urlset>".encode(),
        content_type="application/xml",
    )
    load = load_sitemap(sitemap_source(allowed))
    assert "xxe-secret" not in repr(load)
    assert all("xxe-secret" not in request.path for request in allowed.requests)


def test_the_sitemap_itself_is_not_fetched_from_another_host_after_a_redirect(two_sites):
    allowed, other = two_sites
    allowed.routes["/sitemap.xml"] = Route(status=302, headers={"Location": other.url("/sitemap.xml")})
    load = load_sitemap(sitemap_source(allowed))
    assert other.requests == []
    [failed] = load.documents
    assert "whose host is not allowed" in failed.error and other.url("/sitemap.xml") in failed.error


def test_no_file_name_comes_from_a_page_url(two_sites, project, instance, tmp_path):
    allowed, _ = two_sites
    urls = [allowed.url(path) for path in ("/a.html", "/..%2F..%2Fescape.html", "/dir/../b.html")]
    for url in urls:
        allowed.routes[url.removeprefix(allowed.url(""))] = Route(page("P", "Text of a page."))
    allowed.routes["/sitemap.xml"] = sitemap(*urls)
    source = {"name": "site", "kind": "sitemap", "sitemap": allowed.url("/sitemap.xml"), "requests_per_second": 50}
    write_sources(Path(project.sources_file), [source])
    instance.add_dynamic_partitions(doc_sources.name, ["site"])
    before = {path for path in tmp_path.rglob("*")}
    result = dg.materialize(
        [documents],
        partition_key="site",
        instance=instance,
        resources={"paths": project},
        run_config={"ops": {"documents": {"config": {"max_failure_rate": 1.0}}}},
    )
    assert result.success
    assert len(pl.read_parquet(project.stage_file("documents", "site"))) == 3
    written = {path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path not in before}
    assert written == {"generated", "generated/documents", "generated/documents/site.parquet"}


# --- only safe formats are loaded; no shell, no eval ----------------------------------------------------

MODEL_CLASSES = ("AutoModel", "ForCausalLM", "PreTrainedModel", "PeftModel")
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}
UNSAFE_YAML |= {"Loader", "UnsafeLoader", "FullLoader"}
PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "shelve", "marshal", "joblib"}


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return dotted(node.func)
    return ""


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, why) for each construct that could run a shell, unpickle, or evaluate code."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [(node.lineno, f"imports {m}") for m in modules if m.split(".")[0] in PICKLING_MODULES]
            if isinstance(node, ast.ImportFrom) and node.module == "yaml":
                found += [(node.lineno, f"yaml.{a.name}") for a in node.names if a.name in UNSAFE_YAML]
        if isinstance(node, ast.Attribute) and dotted(node.value) == "yaml" and node.attr in UNSAFE_YAML:
            found.append((node.lineno, f"yaml.{node.attr} (use yaml.safe_load)"))
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        shell = keyword(node, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            found.append((node.lineno, f"{name}(shell=...)"))
        if name in {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"}:
            found.append((node.lineno, name))
        if isinstance(node.func, ast.Name) and node.func.id in {"eval", "exec", "compile", "__import__"}:
            found.append((node.lineno, f"{node.func.id}()"))
        if name.endswith("torch.load") and not is_true(keyword(node, "weights_only")):
            found.append((node.lineno, "torch.load without weights_only=True"))
        if is_true(keyword(node, "allow_pickle")) or name.endswith("read_pickle"):
            found.append((node.lineno, f"{name}: pickle"))
        remote = keyword(node, "trust_remote_code")
        if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
            found.append((node.lineno, f"{name}(trust_remote_code=...)"))
        model = name.endswith(".from_pretrained") and any(cls in name for cls in MODEL_CLASSES)
        if model and not is_true(keyword(node, "use_safetensors")):
            found.append((node.lineno, f"{name} without use_safetensors=True"))
    return found


def test_no_code_in_the_package_runs_a_shell_unpickles_or_evaluates():
    files = sorted((REPO / "raft_assets").rglob("*.py"))
    assert len(files) > 30
    violations = [
        f"{path.relative_to(REPO)}:{line}: {why}"
        for path in files
        for line, why in unsafe_calls(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    ]
    assert violations == []


def test_the_scan_finds_what_it_looks_for():
    bad = """
import pickle
from yaml import load
subprocess.run("ls", shell=True); os.system("x"); os.popen("x"); eval("1"); exec("x")
yaml.load(text); yaml.load(text, Loader=yaml.FullLoader); torch.load(f); np.load(f, allow_pickle=True)
AutoModelForCausalLM.from_pretrained(p); AutoTokenizer.from_pretrained(p, trust_remote_code=True)
"""
    good = """
subprocess.Popen(["ls"], shell=False); yaml.safe_load(text); torch.load(f, weights_only=True); model.eval()
np.load(f, allow_pickle=False); AutoModelForCausalLM.from_pretrained(p, use_safetensors=True)
AutoTokenizer.from_pretrained(p); re.compile("x")
"""
    assert len(unsafe_calls(ast.parse(bad))) == 14  # yaml.load with FullLoader counts twice
    assert unsafe_calls(ast.parse(good)) == []


class Payload:
    """Unpickling this touches `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_with_only_pickled_weights_is_refused_without_unpickling(tmp_path):
    import pickle  # noqa: PLC0415 (only to write the hostile file)

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10}), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(BaseModelUnavailable) as error:
        resolve_base_model(str(folder), Layout.of(tmp_path, tmp_path / "checkpoints"), lambda: [])
    assert str(error.value) == (
        f"Base model {str(folder)!r} at {folder} cannot be used: missing model.safetensors "
        "(or model.safetensors.index.json with its shards; .bin weights are not loaded)."
    )
    assert not marker.exists()


@pytest.mark.parametrize("what", ["train_params", "sources", "prompts"])
def test_yaml_files_are_read_with_the_safe_loader(tmp_path, what):
    marker = tmp_path / "constructed"
    hostile = f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n"
    path = tmp_path / f"{what}.yaml"
    path.write_text(hostile, encoding="utf-8")
    loaders = {"train_params": TrainParams.load, "sources": load_sources, "prompts": load_prompts}
    with pytest.raises((yaml.YAMLError, SourcesError, ValueError)) as error:
        loaders[what](path)
    assert "python/object/apply" in str(error.value) or "not valid YAML" in str(error.value)
    assert not marker.exists()


# --- commands are argument lists: metacharacters in paths and names are never run -----------------------


def test_a_stand_in_vllm_server_gets_a_hostile_path_and_name_as_single_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a shell would create `pwned` here
    stand_in = tmp_path / "vllm"
    stand_in.write_text(STAND_IN.format(python=sys.executable), encoding="utf-8")
    stand_in.chmod(0o755)
    key = f"vllm-key-{uuid.uuid4().hex}"
    pid_file = tmp_path / "pids.json"
    resource = VLLMResource(
        executable=str(stand_in),
        port=0,
        served_model_name=f"name {HOSTILE}",
        api_key=key,
        extra_args=["--delay", "0.2", "--pid-file", str(pid_file)],
    )
    model_path = tmp_path / HOSTILE
    assert resource.command(model_path)[2] == str(model_path)
    with resource.serve(model_path, log_dir=tmp_path / "logs") as served:
        assert list_models(served, use_proxies=False) == [f"name {HOSTILE}"]  # with the key: accepted
        server_pid = json.loads(pid_file.read_text())[1]
        argv = Path(f"/proc/{server_pid}/cmdline").read_bytes().split(b"\0")[:-1]
        environ = Path(f"/proc/{server_pid}/environ").read_bytes().split(b"\0")
    assert argv[2:4] == [b"serve", str(model_path).encode()]
    assert f"name {HOSTILE}".encode() in argv
    assert key.encode() not in b"\0".join(argv)  # readable by every user of the machine: no key there
    assert f"VLLM_API_KEY={key}".encode() in environ  # readable by this user only
    assert f"stand-in: loading {model_path}" in served.log_file.read_text()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


@pytest.mark.torchrun
def test_the_trainer_command_passes_a_hostile_path_as_one_argument_and_runs_no_shell(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # a shell would create `pwned` here
    run_dir = tmp_path / HOSTILE
    run_dir.mkdir()
    params_file = run_dir / "train_params.yaml"
    params_file.write_text("from_the_hostile_path: 1\n", encoding="utf-8")  # the script fails on reading it
    trainer = TrainerResource(nproc_per_node=1)
    assert trainer.command(params_file)[-2:] == ["--config", str(params_file)]

    @dg.asset
    def fine_tune(context, trainer: TrainerResource):
        return trainer.run(context, params_file)

    # An ephemeral instance: no compute-log capture, so the script's stderr reaches capfd.
    result = dg.materialize([fine_tune], resources={"trainer": trainer}, raise_on_error=False)
    assert not result.success
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
    # The training script read the file at the hostile path, whole.
    err = capfd.readouterr().err
    assert "unknown training parameters: from_the_hostile_path" in err


# --- API keys: not in the event log, run config, tags, snapshots, metadata, files or output -------------


class EchoKeyServer:
    """An endpoint that refuses every key and quotes it in its 401 message, as some servers and proxies do."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}.", "code": "invalid"}})
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> EchoKeyServer:
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def everything_recorded(instance: dg.DagsterInstance, run_id: str) -> str:
    """The run's events (logs, metadata, check results), config, tags, job and plan snapshots, serialized."""
    run = instance.get_run_by_id(run_id)
    parts = [dg.serialize_value(record) for record in instance.all_logs(run_id)]
    parts.append(dg.serialize_value(run))
    parts.append(json.dumps(run.run_config) + json.dumps(run.tags))
    parts.append(dg.serialize_value(instance.get_job_snapshot(run.job_snapshot_id)))
    parts.append(dg.serialize_value(instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)))
    return "\n".join(parts)


def files_containing(root: Path, secret: str) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


@pytest.fixture
def keys(monkeypatch) -> dict[str, str]:
    keys = {name: f"{name.lower()}-{uuid.uuid4().hex}" for name in ("RAFT_LLM_API_KEY", "RAFT_JUDGE_API_KEY")}
    for name, value in keys.items():
        monkeypatch.setenv(name, value)
    return keys


@dg.asset(partitions_def=doc_sources, deps=[questions])
def judged(judge: LLMResource, paths: ProjectPaths) -> dg.MaterializeResult:
    """The judge asked once, as eval_report asks it (judge_all, the reply cache), with the run's resolved resource."""
    cache = ReplyCache(paths.layout.reply_cache_file)
    try:
        verdicts = asyncio.run(judge_all(judge.endpoint(), cache, [("What is FSDP?", "Sharding.", "Sharding.")], 1))
    finally:
        cache.close()
    return dg.MaterializeResult(metadata={"verdicts": str(verdicts), "judge": judge.model})


def generation_run(project: ProjectPaths, instance, tmp_path: Path, monkeypatch, llm_url: str, judge_url: str):
    """documents, chunks, questions (the `llm`) and `judged` (the `judge`) for a 2-document corpus, with the
    resources built from RAFT_* variables as definitions.py builds them."""
    write_sources(
        Path(project.sources_file), [{"name": "docs", "kind": "local", "path": str(write_corpus(tmp_path / "c", 2))}]
    )
    instance.add_dynamic_partitions(doc_sources.name, ["docs"])
    for name, value in {
        "RAFT_LLM_BASE_URL": llm_url,
        "RAFT_LLM_MODEL": "test-model",
        "RAFT_JUDGE_BASE_URL": judge_url,
        "RAFT_JUDGE_MODEL": "test-model",
    }.items():
        monkeypatch.setenv(name, value)
    return dg.materialize(
        [documents, chunks, questions, judged],
        partition_key="docs",
        instance=instance,
        resources={
            "paths": project,
            "llm": LLMResource.from_variables(load_settings().generator),
            "judge": LLMResource.from_variables(load_settings().judge),
        },
        raise_on_error=False,
    )


def test_keys_from_the_environment_appear_nowhere_dagster_records(project, tmp_path, keys, monkeypatch):
    (tmp_path / "dagster_home").mkdir()
    with (
        dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance,
        OpenAITestServer(raft_responder, api_key=keys["RAFT_LLM_API_KEY"]) as generator,
        OpenAITestServer(lambda body: "YES", api_key=keys["RAFT_JUDGE_API_KEY"]) as judge_server,
    ):
        result = generation_run(project, instance, tmp_path, monkeypatch, generator.base_url, judge_server.base_url)
        assert result.success
        assert generator.stats.completed > 0 and judge_server.stats.completed == 1  # both keys sent and accepted
        assert result.asset_materializations_for_node("judged")[0].metadata["verdicts"].value == "[True]"
        recorded = everything_recorded(instance, result.run_id)
        metadata = repr([result.asset_materializations_for_node(node)[0].metadata for node in ("questions", "judged")])
    assert "RAFT_LLM_API_KEY" in recorded and "RAFT_JUDGE_API_KEY" in recorded  # the variables' names, not values
    for key in keys.values():
        assert key not in recorded
        assert key not in metadata
        assert files_containing(tmp_path, key) == []  # event log and run DBs, captured output, cache, parquet
    assert any((tmp_path / "dagster_home").rglob("*.db")) and any((tmp_path / "dagster_home").rglob("*.err"))


def test_a_key_echoed_in_an_error_reply_is_redacted_everywhere(project, tmp_path, keys, monkeypatch):
    key = keys["RAFT_LLM_API_KEY"]
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance, EchoKeyServer() as server:
        result = generation_run(project, instance, tmp_path, monkeypatch, server.base_url, server.base_url)
        recorded = everything_recorded(instance, result.run_id)
    errors = pl.read_parquet(project.stage_file("questions", "docs"))["error"].to_list()
    assert errors and all(error.startswith("HTTP 401") for error in errors)
    assert all("Incorrect API key provided: REDACTED." in error for error in errors)  # the reason stays readable
    assert key not in recorded
    assert files_containing(tmp_path, key) == []


def test_the_reply_cache_key_does_not_depend_on_the_api_key(tmp_path):
    values = {"question": "What is FSDP?", "reference_answer": "Sharding.", "student_answer": "Sharding."}
    with OpenAITestServer() as server:
        cache = ReplyCache(tmp_path / "replies.sqlite")

        async def ask(api_key: str):
            llm = LLMResource(base_url=server.base_url, model="test-model", api_key=api_key)
            async with llm.client(cache) as client:
                return await client.reply(JUDGE_PROMPT, values, JUDGE_PROMPT.params)

        keys = [f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"]
        first, second = (asyncio.run(ask(key)) for key in keys)
        cache.close()
    assert not first.cached and second.cached and second.text == first.text
    assert server.stats.completed == 1
    assert all(files_containing(tmp_path, key) == [] for key in keys)


def test_resource_reprs_hide_the_keys():
    llm_key, vllm_key = f"llm-{uuid.uuid4().hex}", f"vllm-{uuid.uuid4().hex}"
    llm = LLMResource(base_url="http://127.0.0.1:1/v1", api_key=llm_key)
    vllm = VLLMResource(api_key=vllm_key)
    assert llm_key not in repr(llm) + str(llm)
    assert vllm_key not in repr(vllm) + str(vllm)
