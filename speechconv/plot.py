"""Pictures of one utterance's features: a panel per channel, saved as a PNG.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing ever
opens a window and no global figure state is touched: safe in servers, tests and
DataLoader workers.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from speechconv.atomic import atomic_path
from speechconv.feature_config import CHANNELS

_TITLES = {"static": "static (log-mel)", "delta": "delta", "delta_delta": "delta-delta"}
_UNITS = {"static": "log energy", "delta": "per frame", "delta_delta": "per frame²"}
_PANEL_HEIGHT = 2.2
"""Inches per channel panel: 80 mel rows stay readable at 100 dpi."""


def _as_array(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """``features`` (T, F, C) as a float64 numpy array, checked."""
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 3:
        raise ValueError(
            f"features have shape {list(arr.shape)}: expected (T, F, C) of one utterance; "
            "for a batch (B, T, F, C) plot features[b, :lengths[b]]"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"features have shape {list(arr.shape)}: nothing to plot, expected T, F and C >= 1")
    return arr


def _colour_limits(panel: np.ndarray, symmetric: bool) -> tuple[float, float]:
    """Colour scale of one ``(T, F)`` panel from its finite values.

    Deltas are shown on a scale symmetric about 0 at their 99th magnitude percentile:
    the regression's few large values at onsets would otherwise wash out the rest.
    Static features start at their 1st percentile, so that a few floored frames
    (digital silence at ``log(log_floor)``) do not squeeze the speech into a few shades.
    """
    finite = panel[np.isfinite(panel)]
    if finite.size == 0:
        return -1.0, 1.0
    if symmetric:
        bound = float(np.percentile(np.abs(finite), 99)) or 1.0
        return -bound, bound
    low, high = float(np.percentile(finite, 1)), float(finite.max())
    return (low, high) if high > low else (low - 1.0, high + 1.0)


def features_figure(
    features: torch.Tensor | np.ndarray,
    hop_ms: float = 10.0,
    channel_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Draw ``features`` (T, F, C), one panel per channel, on a new Agg figure.

    Args:
        features: ``(T, F, C)`` features of one utterance (torch tensor or numpy array).
        hop_ms: frame hop in milliseconds; the x axis is ``t * hop_ms / 1000`` seconds
            at the start of frame ``t``.
        channel_names: ``C`` names (FeatureConfig's ``channels``, e.g. ``["static",
            "delta", "delta_delta"]``); default: those three names when ``C == 3``,
            else ``channel 0``, ``channel 1``, ...
        title: the figure's title.

    Returns:
        the figure, with ``C`` image axes (plus their ``C`` colour-bar axes).
    """
    arr = _as_array(features)
    num_frames, num_bins, num_channels = arr.shape
    if hop_ms <= 0:
        raise ValueError(f"hop_ms={hop_ms!r} is invalid: expected positive milliseconds, e.g. 10.0")
    if channel_names is None:
        channel_names = list(CHANNELS) if num_channels == len(CHANNELS) else [f"channel {c}" for c in range(num_channels)]
    if len(channel_names) != num_channels:
        raise ValueError(
            f"channel_names={list(channel_names)!r} has {len(channel_names)} names for C={num_channels} channels; "
            "pass one name per channel"
        )
    if not np.isfinite(arr).all():
        warnings.warn(f"features hold {int((~np.isfinite(arr)).sum())} NaN/Inf values; they are left blank",
                      UserWarning, stacklevel=2)

    seconds = num_frames * hop_ms / 1000
    fig = Figure(figsize=(10.0, 0.6 + _PANEL_HEIGHT * num_channels), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(num_channels, 1, sharex=True, squeeze=False)[:, 0]
    for c, (ax, name) in enumerate(zip(axes, channel_names, strict=True)):
        panel = arr[:, :, c]  # (T, F, C) -> (T, F)
        symmetric = name != "static"
        vmin, vmax = _colour_limits(panel, symmetric)
        image = ax.imshow(
            np.ma.masked_invalid(panel.T),  # (T, F) -> (F, T): time runs left to right
            origin="lower",
            aspect="auto",
            interpolation="nearest",
            cmap="RdBu_r" if symmetric else "magma",
            vmin=vmin,
            vmax=vmax,
            extent=(0.0, seconds, -0.5, num_bins - 0.5),
        )
        ax.set_title(_TITLES.get(name, name), fontsize=10, loc="left")
        ax.set_ylabel("mel bin")
        bar = fig.colorbar(image, ax=ax, pad=0.01, fraction=0.04)
        bar.set_label(_UNITS.get(name, ""), fontsize=8)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    return fig


def plot_features(
    features: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    hop_ms: float = 10.0,
    channel_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Save a PNG of ``features`` (T, F, C) at ``path``, atomically; returns the path.

    One panel per channel (static, delta, delta-delta), time in seconds on x, mel bin
    on y, one colour bar each; see :func:`features_figure` for the arguments.  The
    file is written whatever ``path``'s suffix is, always as PNG.
    """
    fig = features_figure(features, hop_ms=hop_ms, channel_names=channel_names, title=title)
    target = Path(path)
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return target
