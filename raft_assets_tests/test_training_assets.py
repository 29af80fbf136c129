"""`fsdp_checkpoint` (real torchrun, 2 processes, gloo) and `hf_checkpoint`, materialized by Dagster."""

from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from raft_assets.training.assets import fsdp_checkpoint, hf_checkpoint
from raft_assets.training.base_model import read_pointer
from raft_assets_tests.conftest import run_assets


def metadata(result, asset: str) -> dict:
    return {key: value.value for key, value in result.asset_materializations_for_node(asset)[0].metadata.items()}


def fine_tune(project, instance, **settings):
    config = {"fsdp_checkpoint": {"config": {"save_every_steps": 2, "context_length": 2048, **settings}}}
    result = run_assets(project, instance, [fsdp_checkpoint, hf_checkpoint], config=config)
    return metadata(result, "fsdp_checkpoint"), metadata(result, "hf_checkpoint")


def test_fine_tune_export_and_generate(sample_pipeline):
    project, instance, _ = sample_pipeline
    trained, exported = fine_tune(project, instance, max_steps=3)
    run_dir = Path(trained["path"])
    assert trained["steps"] == 3 and [point["step"] for point in trained["loss_curve"]] == [1, 2, 3]
    assert trained["processes"] == 2 and not trained["resumed"]
    assert {p.name for p in (run_dir / "step_000003").iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert (run_dir / "train_params.yaml").is_file()

    # The export is lossless, loads with transformers, and generates with its own chat template.
    assert exported["max_logit_diff"] == 0.0 and exported["from_checkpoint"] == "step_000003"
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
    base = AutoModelForCausalLM.from_pretrained(read_pointer(Path(project.checkpoint_dir)).path)
    assert not torch.equal(model.lm_head.weight, base.lm_head.weight)  # training changed the weights

    # The same settings again: the run folder is the same, and the finished run is resumed, not redone.
    again, _ = fine_tune(project, instance, max_steps=3)
    assert again["path"] == trained["path"] and again["resumed"]


def test_lora_weights_are_merged_into_the_export(sample_pipeline):
    project, instance, _ = sample_pipeline
    _, exported = fine_tune(project, instance, max_steps=2, method="lora", lr=1e-3)
    with safe_open(Path(exported["path"]) / "model.safetensors", framework="pt") as weights:
        names = list(weights.keys())
    assert names and not any("lora" in name for name in names)
    merged = AutoModelForCausalLM.from_pretrained(exported["path"])
    base = AutoModelForCausalLM.from_pretrained(read_pointer(Path(project.checkpoint_dir)).path)
    changed = [name for name, weight in merged.state_dict().items() if not torch.equal(weight, base.state_dict()[name])]
    assert changed and all(
        name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")) for name in changed
    )
