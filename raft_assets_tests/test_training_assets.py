"""`fsdp_checkpoint` (real torchrun, 2 processes, gloo) and `hf_checkpoint`, materialized by Dagster.

A full fine-tune (under umask 022) and a LoRA one (under umask 027, which trains and saves only the adapter) are
trained once each and exported; the tests read what they wrote. The export's check `matches_training` passes on
both, and fails on a copy of the full run whose shards had two decoder layers swapped, and on one without its probe
record. An export is written once per checkpoint: materialized again, it is kept; with its weights overwritten, it is
written again.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM, AutoTokenizer

from raft_assets.contracts.layout import LATEST_RUN
from raft_assets.contracts.recipes import DEFAULT_RECIPE
from raft_assets.defs.partitions import recipes
from raft_assets.defs.resources import ProjectPaths
from raft_assets.defs.training.assets import fsdp_checkpoint, hf_checkpoint
from raft_assets.training.base_model import read_pointer
from raft_assets.training.checkpoint import PROBE_FILE, latest_checkpoint, read_metrics, saved_model_keys
from raft_assets_tests.conftest import QUICK_VALIDATION, run_assets
from raft_assets_tests.test_file_modes import expected_modes, modes, umask
from raft_assets_tests.test_train_script import load_final


@dataclass(frozen=True)
class FineTune:
    trained: dict  # fsdp_checkpoint's metadata
    exported: dict  # hf_checkpoint's metadata
    check: dg.AssetCheckEvaluation  # matches_training
    written: dict[Path, dict[str, int]]  # the modes of the run's folder and the export's, right after writing


def metadata(result, asset: str) -> dict:
    return {key: value.value for key, value in result.asset_materializations_for_node(asset)[0].metadata.items()}


def matches_training(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    (check,) = [check for check in result.get_asset_check_evaluations() if check.check_name == "matches_training"]
    return check


def fine_tune(project, instance, **settings) -> FineTune:
    config = {
        "fsdp_checkpoint": {"config": {"save_every_steps": 2, "context_length": 2048, **QUICK_VALIDATION, **settings}}
    }
    result = run_assets(project, instance, [fsdp_checkpoint, hf_checkpoint], config=config)
    trained, exported = metadata(result, "fsdp_checkpoint"), metadata(result, "hf_checkpoint")
    folders = (Path(trained["path"]), Path(exported["path"]))
    return FineTune(trained, exported, matches_training(result), {folder: modes(folder) for folder in folders})


@pytest.fixture(scope="module")
def full_tune(sample_pipeline) -> FineTune:
    project, instance, _ = sample_pipeline
    with umask(0o022):
        return fine_tune(project, instance, max_steps=3)


@pytest.fixture(scope="module")
def lora_tune(sample_pipeline) -> FineTune:
    project, instance, _ = sample_pipeline
    with umask(0o027):
        return fine_tune(project, instance, max_steps=2, method="lora", lr=1e-3)


def test_fine_tune_export_and_generate(full_tune, sample_pipeline):
    project, instance, _ = sample_pipeline
    trained, exported = full_tune.trained, full_tune.exported
    run_dir = Path(trained["path"])
    assert trained["steps"] == 3 and [point["step"] for point in trained["loss_curve"]] == [1, 2, 3]
    assert trained["processes"] == 2 and not trained["resumed"] and trained["launched"]
    assert trained["loss_plot"].startswith("![loss curve](data:image/png;base64,iVBOR")  # inline on the page
    assert (run_dir / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert {p.name for p in (run_dir / "step_000003").iterdir()} >= {".metadata", "__0_0.distcp", PROBE_FILE}
    assert (run_dir / "train_params.yaml").is_file()

    # The export computes what the sharded model computed in training, loads with transformers, and generates
    # with its own chat template.
    assert full_tune.check.passed, full_tune.check.description
    assert exported["max_logprob_diff_vs_training"] < 1e-4 and exported["max_logprob_diff_vs_fp32"] == 0.0
    assert exported["dtype"] == "float32" and exported["from_checkpoint"] == "step_000003"
    hf = Path(exported["path"])
    model = AutoModelForCausalLM.from_pretrained(hf)
    tokenizer = AutoTokenizer.from_pretrained(hf)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is FSDP?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]
    base = AutoModelForCausalLM.from_pretrained(read_pointer(project.layout).path)
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)  # training changed the weights

    # The same settings again: the run folder is the same, and the finished run is not launched again; its
    # materialization says what the training reported. Its export is not written again: the files, unchanged,
    # are loaded and compared.
    written = {path.name: path.stat().st_mtime_ns for path in hf.iterdir()}
    again = fine_tune(project, instance, max_steps=3)
    assert again.trained["path"] == trained["path"] and again.trained["resumed"] and not again.trained["launched"]
    for key in ("steps", "final_train_loss", "loss_curve", "last_checkpoint", "processes"):
        assert again.trained[key] == trained[key], key
    assert again.trained["loss_plot"] == trained["loss_plot"]
    assert exported["written"] and not again.exported["written"] and again.check.passed
    assert {path.name: path.stat().st_mtime_ns for path in hf.iterdir()} == written
    for key in ("max_logprob_diff_vs_training", "max_logprob_diff_vs_fp32", "parameters", "dtype"):
        assert again.exported[key] == exported[key], key


def test_the_run_and_its_export_are_readable_by_others_under_umask_022(full_tune):
    for folder, written in full_tune.written.items():
        assert written == expected_modes(folder, 0o022)  # files 0644, folders 0755
    assert full_tune.written[Path(full_tune.exported["path"])]["model.safetensors"] & 0o004


def test_lora_weights_are_merged_into_the_export(lora_tune, sample_pipeline):
    project, _, _ = sample_pipeline
    exported = lora_tune.exported
    with safe_open(Path(exported["path"]) / "model.safetensors", framework="pt") as weights:
        names = list(weights.keys())
    assert names and not any("lora" in name for name in names)
    merged = AutoModelForCausalLM.from_pretrained(exported["path"])
    base = AutoModelForCausalLM.from_pretrained(read_pointer(project.layout).path)
    changed = [name for name, weight in merged.state_dict().items() if not torch.equal(weight, base.state_dict()[name])]
    assert changed and all(
        name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")) for name in changed
    )
    # the merged weights compute what the trained base-plus-adapter model did
    assert lora_tune.check.passed, lora_tune.check.description
    assert exported["max_logprob_diff_vs_training"] < 1e-4


def test_lora_trains_and_saves_only_the_adapter(lora_tune, sample_pipeline):
    project, _, _ = sample_pipeline
    run_dir = Path(lora_tune.trained["path"])
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2]
    keys = saved_model_keys(latest_checkpoint(run_dir))
    assert keys and all(".lora_A." in key or ".lora_B." in key for key in keys)  # the frozen base is not saved
    assert len(keys) == 4 * 4 * 2  # 4 layers x q, k, v, o x A, B

    weights = load_final(run_dir)
    base = AutoModelForCausalLM.from_pretrained(read_pointer(project.layout).path).state_dict()
    assert all(weights[name].abs().sum() > 0 for name in keys if ".lora_B." in name)  # zero at first, trained since
    frozen = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert torch.equal(weights[frozen], base["model.layers.0.self_attn.q_proj.weight"])


def test_the_run_and_its_export_are_not_readable_by_others_under_umask_027(lora_tune):
    for folder, written in lora_tune.written.items():
        assert written == expected_modes(folder, 0o027)  # files 0640, folders 0750


# --- the check on planted defects ------------------------------------------------------------------------


def copy_run(run_dir: Path, checkpoint_dir: Path) -> Path:
    """A copy of a fine-tuning run as the only (and latest) run of another checkpoint folder."""
    copy = checkpoint_dir / "fsdp" / run_dir.name
    shutil.copytree(run_dir, copy)
    (checkpoint_dir / "fsdp" / LATEST_RUN).write_text(run_dir.name)
    return copy


def export(checkpoint_dir: Path, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """`hf_checkpoint` of the default recipe alone, as Dagster runs it; a failed check fails the run instead of
    raising."""
    paths = ProjectPaths(checkpoint_dir=str(checkpoint_dir))
    instance.add_dynamic_partitions(recipes.name, [DEFAULT_RECIPE])
    return dg.materialize(
        [hf_checkpoint],
        partition_key=DEFAULT_RECIPE,
        instance=instance,
        resources={"paths": paths},
        raise_on_error=False,
    )


def swap_layers(step_folder: Path, first: int, second: int) -> None:
    """Rewrite a DCP checkpoint's model weights with two decoder layers' tensors swapped, keeping the probe
    record (the optimizer state, which the export does not read, is left out)."""
    entries = FileSystemReader(str(step_folder)).read_metadata().state_dict_metadata
    weights = {
        key.removeprefix("model."): torch.empty(entry.size, dtype=entry.properties.dtype)
        for key, entry in entries.items()
        if key.startswith("model.")
    }
    dcp.load({"model": weights}, checkpoint_id=str(step_folder), no_dist=True)
    prefixes = {
        f"model.layers.{first}.": f"model.layers.{second}.",
        f"model.layers.{second}.": f"model.layers.{first}.",
    }

    def swapped(name: str) -> str:
        for old, new in prefixes.items():
            if name.startswith(old):
                return new + name.removeprefix(old)
        return name

    for shard in [step_folder / ".metadata", *step_folder.glob("*.distcp")]:
        shard.unlink()
    dcp.save(
        {"model": {swapped(name): tensor for name, tensor in weights.items()}},
        checkpoint_id=str(step_folder),
        no_dist=True,
    )


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")  # DCP in one process, as meant
def test_matches_training_fails_when_two_layers_are_swapped_in_the_shards(full_tune, instance, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    run = copy_run(Path(full_tune.trained["path"]), checkpoints)
    untouched = export(checkpoints, instance)
    assert untouched.success and matches_training(untouched).passed  # the copy itself exports fine

    swap_layers(latest_checkpoint(run), 0, 1)
    swapped = export(checkpoints, instance)
    check = matches_training(swapped)
    assert not swapped.success and not check.passed
    assert check.metadata["max_logprob_diff_vs_training"].value > 1e-2, check.description
    assert "differ from the trained model's by at most" in check.description
    # the export itself was written: the check, not a crash, stopped the run
    assert (checkpoints / "hf" / run.name / "model.safetensors").is_file()


def test_an_export_whose_files_changed_is_written_again(full_tune, instance, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    run = copy_run(Path(full_tune.trained["path"]), checkpoints)
    first, kept = export(checkpoints, instance), export(checkpoints, instance)
    assert metadata(first, "hf_checkpoint")["written"] and not metadata(kept, "hf_checkpoint")["written"]

    weights = checkpoints / "hf" / run.name / "model.safetensors"
    weights.write_bytes(b"not the exported weights")
    again = export(checkpoints, instance)
    assert again.success and metadata(again, "hf_checkpoint")["written"] and matches_training(again).passed
    assert weights.read_bytes() != b"not the exported weights"


def test_matches_training_fails_with_its_reason_for_a_checkpoint_without_a_probe_record(full_tune, instance, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    run = copy_run(Path(full_tune.trained["path"]), checkpoints)
    (latest_checkpoint(run) / PROBE_FILE).unlink()  # as a training script older than the record saved it
    result = export(checkpoints, instance)
    check = matches_training(result)
    assert not result.success and not check.passed
    assert f"step_000003 of run {run.name} has no probe record (probe.json)" in check.description
    assert "materialize fsdp_checkpoint" in check.description
