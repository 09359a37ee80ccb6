"""Loss and WER curves as PNGs (written atomically, Agg backend: no windows)."""

from __future__ import annotations

import os
from pathlib import Path

from speechconv.atomic import atomic_path


def _series(rows: list[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if r["split"] == split and r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(rows: list[dict], folder: str | os.PathLike) -> list[Path]:
    """``loss.png`` (training and validation loss) and ``wer.png`` (validation WER and CER,
    seen and unseen speakers)
    from the metric rows of :class:`speechconv.training.logging.MetricsLogger`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    paths = []
    for name, curves, ylabel in (
        ("loss.png", [("train", "loss", "training loss"), ("valid", "loss", "validation loss, seen speakers"),
                      ("unseen", "loss", "validation loss, unseen speakers")], "loss"),
        ("wer.png", [("valid", "wer", "WER, seen speakers"), ("valid", "cer", "CER, seen speakers"),
                     ("unseen", "wer", "WER, unseen speakers"), ("unseen", "cer", "CER, unseen speakers")],
         "error rate (%)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
        for split, key, label in curves:
            steps, values = _series(rows, split, key)
            if not steps:
                continue
            if name == "wer.png":
                values = [100 * v for v in values]
            ax.plot(steps, values, marker="o" if split == "valid" else None, markersize=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        if name == "loss.png":
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = folder / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
