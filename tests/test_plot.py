"""plot_features / features_figure: a valid PNG, one labelled panel per channel, clear errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from speechconv.plot import features_figure, plot_features

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _features(frames: int = 120, bins: int = 80, channels: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(frames, bins, channels, generator=gen)  # (T, F, C)


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, read with the PNG spec, not matplotlib."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_writes_a_png_atomically(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "utt.png"
    assert plot_features(_features(), out, title="utt") == out
    width, height = _png_size(out)
    assert out.stat().st_size > 1000 and width > 0 and height > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["utt.png"]  # no temporary left


def test_numpy_input_and_other_suffix(tmp_path: Path) -> None:
    out = plot_features(_features().numpy(), tmp_path / "utt.image")
    _png_size(out)


def test_one_panel_per_channel_with_labels() -> None:
    frames, hop_ms = 250, 10.0
    fig = features_figure(_features(frames), hop_ms=hop_ms, title="clip")
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3
    assert len(fig.axes) == 6  # three panels + three colour bars
    assert [ax.get_title(loc="left") for ax in images] == ["static (log-mel)", "delta", "delta-delta"]
    assert all(ax.get_ylabel() == "mel bin" for ax in images)
    assert images[-1].get_xlabel() == "time (s)"
    left, right, bottom, top = images[0].images[0].get_extent()
    assert (left, right) == (0.0, pytest.approx(frames * hop_ms / 1000))
    assert (bottom, top) == (-0.5, 79.5)
    assert fig._suptitle.get_text() == "clip"
    # The image is the (F, T) transpose: row f, column t is features[t, f, c].
    feats = _features(frames)
    np.testing.assert_allclose(np.asarray(images[1].images[0].get_array()), feats[:, :, 1].T.numpy(), rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_other_channel_counts(channels: int) -> None:
    fig = features_figure(_features(channels=channels))
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.images]
    assert titles == [f"channel {c}" for c in range(channels)]
    fig = features_figure(_features(channels=2), channel_names=["static", "delta_delta"])
    assert [ax.get_title(loc="left") for ax in fig.axes if ax.images] == ["static (log-mel)", "delta-delta"]


@pytest.mark.parametrize("shape", [(80,), (100, 80), (2, 100, 80, 3)])
def test_rejects_wrong_ndim(tmp_path: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected \(T, F, C\)") as caught:
        plot_features(torch.zeros(shape), tmp_path / "x.png")
    assert str(list(shape)) in str(caught.value)
    assert not list(tmp_path.iterdir())


def test_rejects_empty_bad_names_and_hop(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nothing to plot"):
        features_figure(torch.zeros(0, 80, 3))
    with pytest.raises(ValueError, match="one name per channel"):
        features_figure(_features(), channel_names=["static"])
    with pytest.raises(ValueError, match="hop_ms"):
        features_figure(_features(), hop_ms=0)


def test_non_finite_values_warn() -> None:
    feats = _features()
    feats[3, 4, 0] = float("nan")
    with pytest.warns(UserWarning, match="1 NaN/Inf"):
        features_figure(feats)


def test_constant_features_plot(tmp_path: Path) -> None:
    # Digital silence gives constant (floored) features: the colour scale must not collapse.
    _png_size(plot_features(torch.full((50, 80, 3), -15.9), tmp_path / "flat.png"))
