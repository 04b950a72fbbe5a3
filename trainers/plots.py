"""Training curves as a PNG: the loss and the validation scores of a run against the iteration."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from itmflow.files import atomic_write_bytes


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the raw per-step loss of a contrastive batch is very noisy)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


#: With at most this many logged points every point is drawn as a marker too.
MARKERS_UP_TO = 60


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str], *,
                title: str = "training", random_init: bool = False,
                val_every: int | None = None) -> Path:
    """Write a two-panel PNG from JSONL log records (``kind`` = ``train`` / ``val``).

    ``random_init``: the run trained on regions of a random-weight detector; a red banner says so.
    """
    import io

    fig = curves_figure(history, title=title, random_init=random_init, val_every=val_every)
    import matplotlib.pyplot as plt  # after curves_figure chose the Agg backend

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


def curves_figure(history: Sequence[dict[str, Any]], *, title: str = "training",
                  random_init: bool = False, val_every: int | None = None) -> Any:
    """The matplotlib figure of :func:`plot_curves`: every logged loss point (with markers when
    there are few, so a short run does not look like an empty plot), the validation scores, or
    "no validation yet" when there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in history if r.get("kind") == "train"]
    val = [r for r in history if r.get("kind") == "val"]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        losses = [float(r["loss"]) for r in train]
        few = len(losses) <= MARKERS_UP_TO
        ax_loss.plot(steps, losses, color="0.45" if few else "0.75", linewidth=0.8,
                     marker="o" if few else None, markersize=4, label="loss (every logged step)")
        if len(losses) >= 5:
            ax_loss.plot(steps, _smooth(losses, max(1, len(losses) // 20)), color="C0",
                         label="moving average")
        ax_loss.legend(loc="upper right")
    else:
        ax_loss.text(0.5, 0.5, "no training step logged yet", ha="center", va="center",
                     transform=ax_loss.transAxes, color="0.4")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("hinge loss (sum over batch)")
    ax_loss.set_title("training loss")
    if val:
        steps = [r["step"] for r in val]
        ax_val.plot(steps, [r["rsum"] for r in val], marker="o", color="C1", label="rsum")
        ax_r1 = ax_val.twinx()
        ax_r1.plot(steps, [r["i2t"]["r1"] for r in val], linestyle="--", marker=".", color="C2", label="i2t R@1")
        ax_r1.plot(steps, [r["t2i"]["r1"] for r in val], linestyle=":", marker=".", color="C3", label="t2i R@1")
        ax_r1.set_ylabel("R@1 (%)")
        best = [r for r in val if r.get("best")]
        if best:
            ax_val.scatter([best[-1]["step"]], [best[-1]["rsum"]], s=120, facecolors="none",
                           edgecolors="k", label="best")
        lines = ax_val.get_legend_handles_labels()
        more = ax_r1.get_legend_handles_labels()
        ax_val.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    else:
        when = (f"(every {val_every} iterations and at epoch ends)" if val_every
                else "(at epoch ends)")
        ax_val.text(0.5, 0.5, f"no validation yet\n{when}", ha="center", va="center",
                    transform=ax_val.transAxes, color="0.4", fontsize=12)
        ax_val.set_xticks([])
        ax_val.set_yticks([])
    ax_val.set_xlabel("iteration")
    ax_val.set_ylabel("rsum (R@1+5+10, both directions)")
    ax_val.set_title("validation")
    fig.suptitle(title)
    if random_init:
        from itmflow.marks import FIGURE_BANNER, stamp_figure

        fig.tight_layout(rect=(0, 0, 1, 1 - FIGURE_BANNER))
        stamp_figure(fig)
    else:
        fig.tight_layout()
    return fig
