"""The loss curve of a fine-tuning run as a PNG, for the asset's page (small: it is shown inline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raft_assets.files import written_atomically


def plot_loss_curve(curve: list[dict[str, Any]], path: Path) -> Path:
    """Training loss per step, and the validation loss at the steps that measured it."""
    import matplotlib  # here, not at the top: a second to import, which the code location need not pay

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3))
    axes.plot([p["step"] for p in curve], [p["loss"] for p in curve], label="train loss", color="#4c72b0")
    validated = [p for p in curve if p.get("val_loss") is not None]
    if validated:
        steps, losses = [p["step"] for p in validated], [p["val_loss"] for p in validated]
        axes.plot(steps, losses, "o-", label="validation loss", color="#dd8452")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (nats per label token)")
    axes.legend()
    figure.tight_layout()
    with written_atomically(path) as partial:
        figure.savefig(partial, dpi=80, format="png")
    plt.close(figure)
    return path
