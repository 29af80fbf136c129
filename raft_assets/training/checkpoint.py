"""The files of a fine-tuning run, shared by the training script and the Hugging Face conversion.

A run's output folder:

    train_params.yaml          the `TrainParams` of the run
    metrics.jsonl              one JSON line per optimizer step (rank 0)
    step_000200/               a torch.distributed.checkpoint (DCP) checkpoint: `.metadata` and
        .metadata              `__<rank>_0.distcp` shards holding {"model": ..., "optim": ...},
        __0_0.distcp           `trainer_state.json` (step, epoch, data position, scheduler) and
        __1_0.distcp           `probe.json`, what the trained model computed on a fixed probe text
        trainer_state.json     (the export is compared with it)
        probe.json
    latest                     the name of the newest complete step folder (written last)
    summary.json               what the finished run reported (rank 0, after its last checkpoint): a run whose
                               `latest` names the summary's `last_checkpoint` is not launched again

The model state holds the Hugging Face parameter names of the trained module (`model.layers.0.mlp.up_proj.weight`,
`lm_head.weight`; with LoRA the PEFT names, `base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`,
and only the trainable LoRA weights), in float32 (the master weights, whatever the compute precision).

Trust: DCP's `.metadata` file is a pickle written by torch itself and read with `pickle.load` by DCP's
`FileSystemReader`, so only load checkpoint folders this project wrote. The tensor data is read with
`torch.load(weights_only=True)` by DCP, and nothing here calls `torch.load` otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raft_assets.files import write_text_atomically
from raft_assets.training.params import TrainParams

if TYPE_CHECKING:
    import torch

PARAMS_FILE = "train_params.yaml"
METRICS_FILE = "metrics.jsonl"
LATEST_FILE = "latest"
STATE_FILE = "trainer_state.json"
PROBE_FILE = "probe.json"
SUMMARY_FILE = "summary.json"
SUMMARY_PATHS = ("output_dir", "last_checkpoint")  # the summary's folders, reported as paths
LOSS_CURVE = "loss_curve"  # the summary's per-step losses, reported as JSON
STEP_PREFIX = "step_"
# The text whose per-token log-probabilities the training script records at every checkpoint and the export
# computes again from the files it wrote.
PROBE_TEXT = "What is the context length of Llama 3? Answer with a quote from the documents."


def load_params(output_dir: Path) -> TrainParams:
    """The parameters a run was started with."""
    return TrainParams.load(Path(output_dir) / PARAMS_FILE)


def step_folder_name(step: int) -> str:
    return f"{STEP_PREFIX}{step:06d}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The step folder that `latest` names, or None before the first complete checkpoint."""
    pointer = Path(output_dir) / LATEST_FILE
    if not pointer.is_file():
        return None
    folder = Path(output_dir) / pointer.read_text(encoding="utf-8").strip()
    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"{pointer} names {folder.name}, which is not a complete checkpoint")
    return folder


def write_latest(output_dir: Path, folder_name: str) -> None:
    write_text_atomically(Path(output_dir) / LATEST_FILE, folder_name + "\n")


def read_trainer_state(step_folder: Path) -> dict[str, Any]:
    return json.loads((Path(step_folder) / STATE_FILE).read_text(encoding="utf-8"))


def write_summary(output_dir: Path, summary: dict[str, Any]) -> None:
    write_text_atomically(Path(output_dir) / SUMMARY_FILE, json.dumps(summary) + "\n")


def finished_summary(output_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that has trained all its steps, if `latest` still names the checkpoint it ended with,
    with the paths of the folder where it is now; None for a run not started, killed or resumed since."""
    path = Path(output_dir) / SUMMARY_FILE
    last = latest_checkpoint(output_dir)
    if last is None or not path.is_file():
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    if Path(summary["last_checkpoint"]).name != last.name:
        return None
    return {**summary, "output_dir": str(Path(output_dir).resolve()), "last_checkpoint": str(last.resolve())}


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Probe:
    """What the trained model computed on `PROBE_TEXT` when a checkpoint was saved (`probe.json` in the step
    folder): the reference an export of that checkpoint must reproduce."""

    text: str
    input_ids: list[int]  # the text as the run's tokenizer encodes it
    token_logprobs: list[float]  # log p(input_ids[i + 1] | input_ids[: i + 1]) in nats, one per id after the first
    dtype: str  # the dtype the model computed in: "bfloat16" or "float32"

    def save(self, step_folder: Path) -> None:
        write_text_atomically(Path(step_folder) / PROBE_FILE, json.dumps(dataclasses.asdict(self)) + "\n")

    @classmethod
    def load(cls, step_folder: Path) -> Probe | None:
        """The step folder's record; None for a checkpoint saved before the training script recorded one."""
        path = Path(step_folder) / PROBE_FILE
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def token_logprobs(
    model: torch.nn.Module, input_ids: Sequence[int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """log p(token | the tokens before it) for every token of `input_ids` after the first, in float32, from the
    model's logits in whatever dtype it computes. Call it on every rank for a sharded model."""
    import torch  # here, not at the top: the code location reads this module's file names without torch

    ids = torch.tensor([list(input_ids)], device=device)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
    return logits.log_softmax(dim=-1).gather(-1, ids[0, 1:, None])[:, 0].cpu()


def saved_model_keys(step_folder: Path) -> list[str]:
    """The parameter names in the model part of a DCP checkpoint (without the leading `model.`)."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(step_folder)).read_metadata()
    return sorted(key.removeprefix("model.") for key in metadata.state_dict_metadata if key.startswith("model."))


def load_into_model(model: torch.nn.Module, step_folder: Path) -> list[str]:
    """Load the model state of a DCP checkpoint into an ordinary, unsharded module, in this one process.

    `model` is the base `LlamaForCausalLM` for a full fine-tune, or the base wrapped with
    `peft.get_peft_model(base, lora_config(params))` for LoRA (whose checkpoint holds only the LoRA weights:
    the frozen base weights stay as loaded). Uses `dcp.load(..., no_dist=True)`: no process group needed.
    Tensors are copied into the module's own (converted to its dtype). Returns the loaded names; raises
    when the checkpoint holds a name the module lacks or a shape that differs.
    """
    import torch.distributed.checkpoint as dcp

    saved = saved_model_keys(step_folder)
    state = model.state_dict()
    missing = [key for key in saved if key not in state]
    if missing:
        raise KeyError(
            f"{len(missing)} weights of {step_folder} are not in the model (e.g. {missing[:3]}): "
            "build the model as the run did (base config, and the LoRA wrapping for method: lora)"
        )
    wanted = {key: state[key] for key in saved}
    with warnings.catch_warnings():  # DCP warns that it loads without a process group: that is the point
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load({"model": wanted}, checkpoint_id=str(step_folder), no_dist=True)
    return saved
