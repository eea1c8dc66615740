"""Small matplotlib helpers shared by training (loss curves) and the experiments (headless: Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard-style smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def plot_losses(
    losses: Sequence[float],
    path: str | Path,
    title: str = "",
    curves: dict[str, Sequence[float]] | None = None,
) -> Path:
    """Writes a loss-curve PNG (raw and smoothed; several named curves if ``curves`` is given)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    series = curves or {"loss": losses}
    for name, values in series.items():
        steps = range(1, len(values) + 1)
        line = ax.plot(steps, values, alpha=0.25, linewidth=0.8)[0]
        ax.plot(steps, smooth(values), color=line.get_color(), linewidth=1.6, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    if curves:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
