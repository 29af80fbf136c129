"""The training script for real: torchrun with 2 processes, gloo, FSDP2 and DCP checkpoints on the tiny model.

One uninterrupted run (launched through Dagster Pipes) is the reference: its loss goes down on a repeated
batch, its shards are on disk, each checkpoint holds the probe record of the weights it saved, its final
metadata comes back through Pipes. A second run of the same config is
SIGKILLed (launcher and workers) after its first checkpoint and started again: it resumes where the
checkpoint left off and ends with the same weights. (A LoRA run, which trains only the adapter, is
test_training_assets' LoRA fine-tune.)
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from raft_assets.training.base_model import TINY, build_tiny_model
from raft_assets.training.checkpoint import (
    LATEST_FILE,
    PARAMS_FILE,
    PROBE_FILE,
    PROBE_TEXT,
    STATE_FILE,
    SUMMARY_FILE,
    Probe,
    finished_summary,
    latest_checkpoint,
    load_into_model,
    load_params,
    read_metrics,
    read_trainer_state,
    saved_model_keys,
    token_logprobs,
)
from raft_assets.training.export import trained_model
from raft_assets.training.params import TrainParams, lora_config
from raft_assets_tests.test_training_data import DATA, records

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
STEPS = 6
pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning",  # peft reading transformers' old name
    "ignore:AssetExecutionContext.run_id is deprecated:DeprecationWarning",  # inside dagster's Pipes session
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model, and RAFT files: 4 samples repeated 6 times for training (a repeated batch), 2 for test."""
    folder = tmp_path_factory.mktemp("train_inputs")
    texts = [path.read_text(encoding="utf-8") for path in sorted([*DATA.rglob("*.md"), *DATA.rglob("*.txt")])]
    model = build_tiny_model(folder / TINY, texts)
    distinct = records(4, seed=5, documents=2, chars=150)
    train, test = folder / "raft_train.jsonl", folder / "raft_test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in distinct * 6), encoding="utf-8")
    test.write_text("".join(json.dumps(r) + "\n" for r in records(2, seed=6, documents=2, chars=150)), encoding="utf-8")
    return {"base_model": model.path, "train_file": train, "test_file": test}


def write_config(output_dir: Path, inputs: dict[str, Path], **overrides) -> Path:
    values = {
        "base_model": str(inputs["base_model"]),
        "train_file": str(inputs["train_file"]),
        "test_file": str(inputs["test_file"]),
        "output_dir": str(output_dir),
        "context_length": 1024,  # two samples per block
        "lr": 3e-3,
        "warmup_steps": 1,
        "schedule": "cosine",
        "weight_decay": 0.01,
        "max_steps": STEPS,
        "save_every_steps": 2,
        "eval_every_steps": 3,
    }
    params = TrainParams(**{**values, **overrides})
    return params.save(output_dir / PARAMS_FILE)


def command(config: Path) -> list[str]:
    return [
        TORCHRUN,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "raft_assets.training.train",
        "--config",
        str(config),
    ]


def torchrun(config: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command(config), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def load_final(output_dir: Path) -> dict[str, torch.Tensor]:
    """The final weights of a run, loaded from its DCP shards into an ordinary model in this one process."""
    params = load_params(output_dir)
    model = AutoModelForCausalLM.from_pretrained(params.base_model)
    if params.method == "lora":
        model = get_peft_model(model, lora_config(params))
    load_into_model(model, latest_checkpoint(output_dir))
    return model.state_dict()


@pytest.fixture(scope="module")
def full_run(inputs, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run, launched as the trainer does: torchrun under Dagster Pipes."""
    output_dir = tmp_path_factory.mktemp("full")
    config = write_config(output_dir, inputs)

    @dg.asset
    def fsdp_checkpoint(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        return pipes.run(command=command(config), context=context, cwd=str(REPO)).get_materialize_result()

    result = dg.materialize([fsdp_checkpoint], resources={"pipes": dg.PipesSubprocessClient()})
    assert result.success
    (materialization,) = result.asset_materializations_for_node("fsdp_checkpoint")
    return output_dir, materialization.metadata


def test_training_lowers_the_loss_and_writes_sharded_checkpoints(full_run):
    output_dir, metadata = full_run
    metrics = read_metrics(output_dir)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for m in metrics:
        assert {"step", "epoch", "loss", "lr", "tokens", "tokens_per_s", "grad_norm"} <= m.keys()
    assert [m["step"] for m in metrics if "val_loss" in m] == [3, 6]
    losses = [m["loss"] for m in metrics]
    assert losses[-1] < losses[0] - 0.5, losses  # the same four samples every step: the model learns them
    assert metrics[-1]["val_loss"] < metrics[2]["val_loss"]

    assert (output_dir / LATEST_FILE).read_text().strip() == "step_000006"
    for step in (2, 4, 6):
        folder = output_dir / f"step_{step:06d}"
        files = {p.name for p in folder.iterdir()}
        assert files == {".metadata", "__0_0.distcp", "__1_0.distcp", STATE_FILE, PROBE_FILE}
    assert not list(output_dir.glob(".*partial"))
    assert read_trainer_state(output_dir / "step_000006")["step"] == STEPS
    keys = saved_model_keys(output_dir / "step_000006")
    assert "lm_head.weight" in keys and "model.layers.0.self_attn.q_proj.weight" in keys  # HF names

    # what rank 0 reported through Pipes
    assert metadata["steps"].value == STEPS
    assert metadata["final_train_loss"].value == pytest.approx(losses[-1])
    assert metadata["best_val_loss"].value == pytest.approx(metrics[-1]["val_loss"])
    assert metadata["dropped_samples"].value == 0
    assert 0 < metadata["packing_efficiency"].value <= 1
    assert metadata["tokens_per_s"].value > 0
    assert metadata["train_tokens"].value == sum(m["tokens"] for m in metrics)
    assert metadata["last_checkpoint"].value == str((output_dir / "step_000006").resolve())
    curve = metadata["loss_curve"].value
    assert [point["step"] for point in curve] == list(range(1, STEPS + 1))
    assert curve[2]["val_loss"] == pytest.approx(metrics[2]["val_loss"])


def test_a_finished_run_is_known_by_its_summary_until_latest_names_another_checkpoint(full_run, tmp_path):
    """What fsdp_checkpoint reads to decide not to launch a finished run again: `summary.json`, written after the
    last checkpoint, holds what was reported through Pipes; a copied run folder gives its own paths."""
    output_dir, metadata = full_run
    copy = shutil.copytree(output_dir, tmp_path / "copy")
    summary = finished_summary(copy)
    assert summary is not None
    for key in ("steps", "final_train_loss", "best_val_loss", "train_tokens", "dropped_samples"):
        assert summary[key] == metadata[key].value, key
    assert summary["loss_curve"] == metadata["loss_curve"].value
    assert summary["last_checkpoint"] == str((copy / "step_000006").resolve())

    # A run resumed from an earlier checkpoint (or killed after it) is not finished, whatever the file says.
    (copy / LATEST_FILE).write_text("step_000004\n")
    assert finished_summary(copy) is None
    (copy / LATEST_FILE).write_text("step_000006\n")
    (copy / SUMMARY_FILE).unlink()  # a run killed before it wrote its summary
    assert finished_summary(copy) is None


def test_each_checkpoint_records_what_its_weights_compute_on_the_probe_text(full_run, inputs):
    output_dir, _ = full_run
    params = load_params(output_dir)
    probe_ids = AutoTokenizer.from_pretrained(inputs["base_model"])(PROBE_TEXT)["input_ids"]
    records = {}
    for step in (2, 4, 6):
        folder = output_dir / f"step_{step:06d}"
        record = records[step] = Probe.load(folder)
        assert (record.text, record.input_ids, record.dtype) == (PROBE_TEXT, probe_ids, "float32")
        assert len(record.token_logprobs) == len(probe_ids) - 1
        # the sharded model in training and the weights loaded from the shards in one process agree
        unsharded = token_logprobs(trained_model(params, folder).eval(), probe_ids)
        torch.testing.assert_close(torch.tensor(record.token_logprobs), unsharded, rtol=0, atol=1e-4)
    assert records[2].token_logprobs != records[6].token_logprobs  # each records its own weights


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_same_weights(full_run, inputs, tmp_path):
    reference_dir, _ = full_run
    output_dir = tmp_path / "killed"
    config = write_config(output_dir, inputs)
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(command(config), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    latest, killed_at = output_dir / LATEST_FILE, None
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        if latest.is_file() and latest.read_text().strip() in ("step_000002", "step_000004"):
            killed_at = latest.read_text().strip()
            for pid in [*descendants(process.pid), process.pid]:  # as a dead node: launcher and workers at once
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait(timeout=60)
    log.close()
    assert killed_at, "the run ended before it could be killed: " + (tmp_path / "killed.log").read_text()[-2000:]
    saved_step = int(killed_at.removeprefix("step_"))
    assert latest_checkpoint(output_dir).name == killed_at

    result = torchrun(config)
    assert f"resumed from {killed_at}: step {saved_step}" in result.stdout
    metrics = read_metrics(output_dir)
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # continued, not restarted
    reference = read_metrics(reference_dir)
    assert [m["loss"] for m in metrics] == pytest.approx([m["loss"] for m in reference], rel=1e-5)

    resumed, uninterrupted = load_final(output_dir), load_final(reference_dir)
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-6, atol=1e-7, msg=name)
    base = AutoModelForCausalLM.from_pretrained(inputs["base_model"]).state_dict()
    assert not torch.equal(base["lm_head.weight"], resumed["lm_head.weight"])  # it did train
