"""The shape inspector: every layer's shapes, parameters and time geometry, explained.

:func:`describe` works from the configs alone (no tensors): for an input of
``seconds`` or ``samples`` it derives the frames ``T`` and walks each encoder layer,
writing down its input ``(T, F, C)``, kernel tensor ``(out, in, kt, kf)`` (PyTorch's
``Conv2d.weight`` layout), the number of 2-D kernels ``in x out``, weights, biases,
batch-norm parameters and buffers, output shape, multiply-adds, and along time the
receptive field, look-ahead, cumulative subsampling and minimum input.
:func:`describe_layers` asks the same of any ``(T, F, C)`` input, for the classic
questions about multi-channel convolutions; image questions map width to ``T`` and
height to ``F`` (channels stay ``C``).

:func:`check_against_forward` then runs a real :class:`speechconv.ConvEncoder` forward
pass, records each layer's real output shape with forward hooks and counts its real
parameters and buffers, and raises :class:`ShapeMismatch` listing every number that
differs from the description.

Conventions, stated once:

* Every length comes from :mod:`speechconv.shapes`.
* A kernel tensor ``(out, in, kt, kf)`` holds ``in x out`` 2-D kernels of ``kt x kf``:
  each filter is one ``in x kt x kf`` block that spans every input channel.
* Conv bias is present only when the layer has no batch norm (batch norm's shift makes
  it redundant).  Batch norm has ``2 * out`` parameters (scale, shift) and
  ``2 * out + 1`` buffer elements (running mean, running variance and the one-element
  ``num_batches_tracked`` counter).
* Multiply-adds count the convolution (or projection) only:
  ``T' * F' * out * in * kt * kf``, padded zeros included, as is usual.  Batch norm,
  activations and the fusion's few per-element operations are left out.
* Receptive field ``R`` and look-ahead are in input frames of the encoder.  In
  milliseconds the receptive field is ``(R - 1) * hop_ms + win_ms`` (R frames spaced a
  hop apart, the last one a whole window long) and the look-ahead is
  ``frames * hop_ms`` (frame starts beyond the output's own frame).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from speechconv import shapes
from speechconv.encoder_config import EncoderConfig, LayerConfig, check_freq_fit, freq_min_geometries, time_geometries
from speechconv.feature_config import FeatureConfig
from speechconv.features.deltas import context_frames

DEFAULT_SECONDS = 1.0
Shape = tuple[int, ...]


class ShapeMismatch(AssertionError):
    """The description and a real forward pass disagree; the message lists every difference."""


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class LayerRow:
    """One layer (or the fusion of two branches) as the inspector sees it.

    Shapes are ``(T, F, C)`` per example (no batch axis); the fusion row's are
    ``(T, D)``.  Time fields (``receptive_field``, ``look_ahead``, ``subsampling``,
    ``min_input_*``) are cumulative from the encoder input up to this layer.  The
    ``*_ms`` fields are ``None`` when the input does not come from audio.
    """

    name: str
    kind: str
    in_shape: Shape
    out_shape: Shape
    kernel_shape: Shape
    stride: tuple[int, int]
    padding: tuple[shapes.Padding, shapes.Padding]
    kernels_2d: int
    weights: int
    biases: int
    bn_params: int
    bn_buffers: int
    macs: int
    activation: str
    receptive_field: int
    receptive_field_ms: float | None
    look_ahead: int
    look_ahead_ms: float | None
    subsampling: int
    min_input_frames: int
    min_input_samples: int | None

    @property
    def params(self) -> int:
        """Trainable parameters: weights, biases and batch norm's scale and shift."""
        return self.weights + self.biases + self.bn_params


@dataclass(frozen=True)
class Totals:
    """Sums over every row of a :class:`Description`."""

    kernels_2d: int
    weights: int
    biases: int
    bn_params: int
    bn_buffers: int
    params: int
    macs: int


@dataclass(frozen=True)
class Description:
    """What :func:`describe` / :func:`describe_layers` found.

    Attributes:
        input_shape: the encoder input ``(T, F, C)`` (before ``too_short='pad'``
            pads it; the first row's ``in_shape`` is the padded one).
        output_shape: ``(T', F', C')``, or ``(T', D)`` when two branches are fused.
        rows: main-branch layers, then second-branch layers, then the fusion.
        totals: sums over ``rows``.
        samples, seconds: the audio length, ``None`` for :func:`describe_layers`.
        receptive_field, look_ahead, subsampling, min_input_frames,
            min_input_samples: the whole encoder along time (the largest over branches).
        min_input_freq: the smallest ``F`` the encoder accepts.
        features, encoder: the configs described (``features`` is ``None`` for
            :func:`describe_layers`).
    """

    input_shape: Shape
    output_shape: Shape
    rows: list[LayerRow]
    totals: Totals
    samples: int | None
    seconds: float | None
    receptive_field: int
    receptive_field_ms: float | None
    look_ahead: int
    look_ahead_ms: float | None
    subsampling: int
    min_input_frames: int
    min_input_samples: int | None
    min_input_freq: int
    encoder: EncoderConfig
    features: FeatureConfig | None = None
    notes: list[str] = field(default_factory=list)

    def streaming(self) -> str:
        """Whether ``ConvEncoder.streaming()`` can stream this encoder, and its look-ahead
        in encoder input frames (features' own look-ahead not included), in words."""
        if self.encoder.branch is not None:
            return "no (two branches; ConvEncoder.streaming() streams one)"
        for i, lc in enumerate(self.encoder.layers):
            if lc.time_geometry().padding == "same":
                return (f"no (layers.{i} pads time with TF SAME: the first output frame depends on the utterance's "
                        f"length; use time padding 1, 'valid' or 'causal')")
        ms = "" if self.look_ahead_ms is None else f" = {self.look_ahead_ms:g} ms"
        text = f"yes (fixed alignment), {self.look_ahead} frames{ms} of look-ahead past the features"
        total = self.stream_look_ahead_samples()
        if total is None:
            return text
        assert self.features is not None, "a total look-ahead needs the feature settings"
        rate = self.features.sample_rate
        own = total - self.look_ahead * self.features.hop_length
        return (f"{text}; with the features' {own} samples ({1000 * own / rate:g} ms): {total} samples = "
                f"{1000 * total / rate:g} ms in all")

    def stream_look_ahead_samples(self) -> int | None:
        """Samples past an encoder output frame's time that a front-end stream must have
        read before the frame is final (features plus encoder:
        :func:`speechconv.shapes.front_end_look_ahead`); ``None`` without feature settings."""
        if self.features is None:
            return None
        f = self.features
        own = shapes.stream_look_ahead(f.win_length, f.hop_length, f.n_fft, f.framing,
                                       context_frames(f.delta_window, f.channels))
        return shapes.front_end_look_ahead(own, self.look_ahead, f.hop_length)

    def row(self, name: str) -> LayerRow:
        """The row called ``name`` (``layers.0``, ``branch.0``, ``fusion``)."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows are {[r.name for r in self.rows]}")

    def to_text(self) -> str:
        """A fixed-width table with a header and a summary, for terminals and logs."""
        return format_description(self, "text")

    def to_markdown(self) -> str:
        """A GitHub-flavoured markdown table with a header and a summary."""
        return format_description(self, "markdown")

    def format(self, fmt: str = "text") -> str:
        """``to_text()`` for ``fmt="text"``, ``to_markdown()`` for ``fmt="markdown"``."""
        return format_description(self, fmt)

    def __str__(self) -> str:
        return self.to_text()


# ------------------------------------------------------------------------ per layer


def _count_layer(lc: LayerConfig, in_channels: int, kt: int, kf: int) -> tuple[Shape, int, int, int, int]:
    """Kernel shape, weights, biases, batch-norm parameters and buffer elements of one layer."""
    out = lc.filters
    kernel_shape = (out, in_channels, kt, kf)
    weights = math.prod(kernel_shape)
    biases = 0 if lc.batch_norm else out
    bn_params = 2 * out if lc.batch_norm else 0
    bn_buffers = 2 * out + 1 if lc.batch_norm else 0
    return kernel_shape, weights, biases, bn_params, bn_buffers


def fusion_params(fusion: str, dim: int) -> int:
    """Trainable parameters of the fusion of two ``(B, T', D)`` branches.

    ``mix`` (:class:`speechconv.layers.LearnedMix`) learns one scalar ``a`` and returns
    ``sigmoid(a) x + (1 - sigmoid(a)) y``: 1 parameter.  ``gated``
    (:class:`speechconv.layers.GatedMix`) computes a softmax gate over the two
    branches at each position from their concatenation, ``Linear(2D, 2)``:
    ``2 * 2D + 2`` parameters.  ``concat`` and ``sum`` have none.
    """
    if fusion == "mix":
        return 1
    if fusion == "gated":
        return 2 * (2 * dim) + 2
    if fusion in ("concat", "sum"):
        return 0
    raise ValueError(f"encoder.fusion={fusion!r} is invalid: expected 'mix', 'gated', 'concat' or 'sum'")


def _min_samples(framing: FeatureConfig | None, frames: int) -> int | None:
    """Fewest samples that give ``frames`` feature frames, ``None`` without a feature config."""
    if framing is None:
        return None
    return shapes.min_samples_for_frames(frames, framing.win_length, framing.hop_length, framing.framing)


def _describe_branch(
    layers: Sequence[LayerConfig],
    prefix: str,
    input_shape: Shape,
    framing: FeatureConfig | None,
    samples: int | None,
) -> list[LayerRow]:
    """Rows of one branch; raises ``ValueError`` where the input is too small."""
    t, f, c = input_shape
    hop_ms = framing.hop_ms if framing else None
    win_ms = framing.win_ms if framing else None
    t_geoms = time_geometries(list(layers))
    check_freq_fit(list(layers), f, f"encoder.{prefix}")
    rows = []
    for i, lc in enumerate(layers):
        name = f"{prefix}.{i}"
        tg, fg = lc.time_geometry(), lc.freq_geometry(f)
        t_out = shapes.conv_out_length(t, tg.kernel, tg.stride, tg.padding)
        f_out = shapes.conv_out_length(f, fg.kernel, fg.stride, fg.padding)
        prefix_t = t_geoms[: i + 1]
        min_frames = shapes.stack_min_input(prefix_t)
        min_samples = _min_samples(framing, min_frames)
        if t_out == 0:
            where = f"{samples} samples = " if samples is not None else ""
            need_t = shapes.stack_min_input(t_geoms)
            need_s = _min_samples(framing, need_t)
            need = f"{need_t} frames" + (f" = {need_s} samples" if need_s is not None else "")
            raise ValueError(
                f"encoder {name}: the input of {where}{input_shape[0]} frames is shorter than the minimum {need} "
                f"of encoder {prefix} (it runs out at {name}: time kernel {tg.kernel}, stride {tg.stride}, "
                f"padding {tg.padding!r}, input {t} frames); give longer input or set encoder.too_short='pad'"
            )
        r = shapes.receptive_field(prefix_t)
        ahead = shapes.look_ahead(prefix_t)
        kernel_shape, weights, biases, bn_params, bn_buffers = _count_layer(lc, c, tg.kernel, fg.kernel)
        rows.append(
            LayerRow(
                name=name,
                kind=lc.kind,
                in_shape=(t, f, c),
                out_shape=(t_out, f_out, lc.filters),
                kernel_shape=kernel_shape,
                stride=(tg.stride, fg.stride),
                padding=(tg.padding, fg.padding),
                kernels_2d=c * lc.filters,
                weights=weights,
                biases=biases,
                bn_params=bn_params,
                bn_buffers=bn_buffers,
                macs=t_out * f_out * weights,
                activation=lc.activation,
                receptive_field=r,
                receptive_field_ms=None if hop_ms is None else (r - 1) * hop_ms + win_ms,
                look_ahead=ahead,
                look_ahead_ms=None if hop_ms is None else ahead * hop_ms,
                subsampling=shapes.subsampling(prefix_t),
                min_input_frames=min_frames,
                min_input_samples=min_samples,
            )
        )
        t, f, c = t_out, f_out, lc.filters
    return rows


# --------------------------------------------------------------------- whole encoder


def _describe(
    input_shape: Shape,
    encoder: EncoderConfig,
    features: FeatureConfig | None,
    samples: int | None,
) -> Description:
    """Describe ``encoder`` on one ``(T, F, C)`` input; ``features`` gives the ms and samples."""
    t, f, c = input_shape
    for value, axis in ((f, "F"), (c, "C")):
        if value < 1:
            raise ValueError(f"input {axis}={value} is invalid: expected >= 1 (input shape {input_shape})")
    if t < 0:
        raise ValueError(f"input T={t} is invalid: expected >= 0 frames (input shape {input_shape})")
    branches = encoder.branches()
    names = ["layers", "branch"]
    notes = []
    min_frames = max(shapes.stack_min_input(time_geometries(b)) for b in branches)
    given = (t, f, c)
    if t < min_frames and encoder.too_short == "pad":
        notes.append(
            f"input of {t} frames is shorter than the minimum {min_frames}; encoder.too_short='pad' "
            f"zero-pads it to {min_frames} frames, which is what is described (the output length stays "
            f"that of {min_frames} frames)"
        )
        t = min_frames
    per_branch = [_describe_branch(b, n, (t, f, c), features, samples) for b, n in zip(branches, names, strict=False)]
    rows = [r for b in per_branch for r in b]
    last = [b[-1] for b in per_branch]
    rf = max(r.receptive_field for r in last)
    ahead = max(r.look_ahead for r in last)
    hop_ms = features.hop_ms if features else None
    rf_ms = None if features is None else (rf - 1) * features.hop_ms + features.win_ms
    ahead_ms = None if hop_ms is None else ahead * hop_ms
    output_shape: Shape = last[0].out_shape
    if len(last) == 2:
        (ta, fa, ca), (tb, fb, cb) = last[0].out_shape, last[1].out_shape
        concat = encoder.fusion == "concat"
        if ta != tb or (fa * ca != fb * cb and not concat):
            need = "frames" if concat else "frames and flattened size F' * C'"
            raise ValueError(
                f"encoder.branch gives (T', D) = ({tb}, {fb * cb}) but encoder.layers gives ({ta}, {fa * ca}) "
                f"for an input of {t} frames; both branches must agree in {need} to be fused by "
                f"{encoder.fusion!r}; change the branch's filters or frames"
            )
        dim = fa * ca
        out_dim = dim + fb * cb if concat else dim
        p = fusion_params(encoder.fusion, dim)
        gate_weights = p - (2 if encoder.fusion == "gated" else 0)
        rows.append(
            LayerRow(
                name="fusion",
                kind=encoder.fusion,
                in_shape=(ta, dim),
                out_shape=(ta, out_dim),
                kernel_shape=(2, 2 * dim) if encoder.fusion == "gated" else (),
                stride=(1, 1),
                padding=("valid", "valid"),
                kernels_2d=0,
                weights=gate_weights,
                biases=p - gate_weights,
                bn_params=0,
                bn_buffers=0,
                macs=ta * 2 * 2 * dim if encoder.fusion == "gated" else 0,
                activation="none",
                receptive_field=rf,
                receptive_field_ms=rf_ms,
                look_ahead=ahead,
                look_ahead_ms=ahead_ms,
                subsampling=last[0].subsampling,
                min_input_frames=min_frames,
                min_input_samples=_min_samples(features, min_frames),
            )
        )
        output_shape = (ta, out_dim)
    totals = Totals(
        kernels_2d=sum(r.kernels_2d for r in rows),
        weights=sum(r.weights for r in rows),
        biases=sum(r.biases for r in rows),
        bn_params=sum(r.bn_params for r in rows),
        bn_buffers=sum(r.bn_buffers for r in rows),
        params=sum(r.params for r in rows),
        macs=sum(r.macs for r in rows),
    )
    seconds = None if samples is None or features is None else samples / features.sample_rate
    return Description(
        input_shape=given,
        output_shape=output_shape,
        rows=rows,
        totals=totals,
        samples=samples,
        seconds=seconds,
        receptive_field=rf,
        receptive_field_ms=rf_ms,
        look_ahead=ahead,
        look_ahead_ms=ahead_ms,
        subsampling=last[0].subsampling,
        min_input_frames=min_frames,
        min_input_samples=_min_samples(features, min_frames),
        min_input_freq=max(shapes.stack_min_input(freq_min_geometries(b, f)) for b in branches),
        encoder=encoder,
        features=features,
        notes=notes,
    )


def describe(
    features: FeatureConfig | None = None,
    encoder: EncoderConfig | None = None,
    *,
    seconds: float | None = None,
    samples: int | None = None,
) -> Description:
    """Describe the front-end for ``seconds`` (default 1.0) or ``samples`` of audio.

    ``T`` comes from :meth:`FeatureConfig.num_frames`, ``F`` is ``n_mels`` and ``C``
    the number of feature channels; then every encoder layer is described (both
    branches and their fusion for a two-branch encoder).  Nothing is computed on
    tensors.

    Raises:
        ValueError: both ``seconds`` and ``samples`` given, a negative duration, a
            frequency kernel larger than its input (``n_mels`` too small for the
            stack), or audio shorter than the encoder's minimum (with
            ``encoder.too_short='error'``); the message names the layer, the value
            and the minimum.
    """
    features = features if features is not None else FeatureConfig()
    encoder = encoder if encoder is not None else EncoderConfig()
    if seconds is not None and samples is not None:
        raise ValueError(f"give seconds ({seconds}) or samples ({samples}), not both")
    if samples is None:
        seconds = DEFAULT_SECONDS if seconds is None else seconds
        if not seconds >= 0:
            raise ValueError(f"seconds={seconds} is invalid: expected a duration >= 0")
        samples = round(seconds * features.sample_rate)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples={samples!r} is invalid: expected an int >= 0")
    frames = features.num_frames(samples)
    if frames == 0 and encoder.too_short == "error":
        raise ValueError(
            f"audio of {samples} samples is shorter than one {features.win_length}-sample window and gives no "
            f"frames; the encoder needs at least {_min_samples(features, 1)} samples for one frame; give "
            f"longer audio"
        )
    return _describe((frames, features.n_mels, features.n_channels), encoder, features, samples)


def describe_layers(
    input_shape: Sequence[int],
    layers: Sequence[LayerConfig] | EncoderConfig,
) -> Description:
    """Describe ``layers`` (or a whole :class:`EncoderConfig`) on any ``(T, F, C)`` input.

    For inputs that do not come from audio, so the classic questions can be asked
    directly.  An image of width x height x channels maps to ``(T, F, C) = (width,
    height, channels)``: the first conv axis (``kernel[0]``, ``stride[0]``) runs
    along the width.  Milliseconds and samples are ``None``.

    Example: ``describe_layers((10, 5, 6), [LayerConfig(filters=16, kernel=[3, 3],
    stride=[1, 1], padding="valid", batch_norm=False, activation="none")])`` gives an
    ``8 x 3 x 16`` output, 96 2-D kernels, 864 weights and 16 biases.
    """
    if len(input_shape) != 3:
        raise ValueError(f"input_shape={tuple(input_shape)} is invalid: expected (T, F, C)")
    encoder = layers if isinstance(layers, EncoderConfig) else EncoderConfig(layers=list(layers))
    return _describe(tuple(int(v) for v in input_shape), encoder, None, None)


# ------------------------------------------------------------------------ rendering

COLUMNS = (
    "layer", "kind", "input", "kernel (out,in,kt,kf)", "stride", "padding", "2-D kernels", "weights", "biases",
    "BN params", "BN buffers", "output", "MACs", "RF frames (ms)", "look-ahead frames (ms)", "subsampling",
    "min input frames (samples)",
)


def _shape(s: Shape) -> str:
    return " x ".join(str(v) for v in s) if s else "-"


def _pair_text(a: object, b: object) -> str:
    return str(a) if a == b else f"{a}/{b}"


def _with_ms(frames: int, ms: float | None) -> str:
    return str(frames) if ms is None else f"{frames} ({ms:g})"


def _fusion_inputs(r: LayerRow) -> str:
    """The fusion row's two inputs: ``2 x (T x D)``, or both shapes when ``concat`` joins
    branches of different ``D``."""
    (t, d), d_out = r.in_shape, r.out_shape[1]
    if r.kind == "concat" and d_out != 2 * d:
        return f"({t} x {d}) + ({t} x {d_out - d})"
    return f"2 x ({t} x {d})"


def _row_cells(r: LayerRow) -> list[str]:
    fusion = r.name == "fusion"
    return [
        r.name,
        r.kind if r.kind == "fusion" or fusion or r.activation == "none" else f"{r.kind}+{r.activation}",
        _shape(r.in_shape) if not fusion else _fusion_inputs(r),
        _shape(r.kernel_shape),
        "-" if fusion else _pair_text(*r.stride),
        "-" if fusion else _pair_text(*r.padding),
        f"{r.kernels_2d:,}" if not fusion else "-",
        f"{r.weights:,}",
        f"{r.biases:,}",
        f"{r.bn_params:,}",
        f"{r.bn_buffers:,}",
        _shape(r.out_shape),
        f"{r.macs:,}",
        _with_ms(r.receptive_field, r.receptive_field_ms),
        _with_ms(r.look_ahead, r.look_ahead_ms),
        str(r.subsampling),
        str(r.min_input_frames) if r.min_input_samples is None else f"{r.min_input_frames} ({r.min_input_samples})",
    ]


def _summary(d: Description) -> list[str]:
    t, f, c = d.input_shape
    lines = []
    if d.samples is not None and d.features is not None:
        lines.append(
            f"input: {d.samples:,} samples ({d.seconds:g} s at {d.features.sample_rate} Hz) -> {t} frames "
            f"({d.features.win_ms:g} ms window, {d.features.hop_ms:g} ms hop, {d.features.framing} framing) "
            f"x {f} mel bins x {c} channels ({', '.join(d.features.channels)})"
        )
    else:
        lines.append(f"input: (T, F, C) = {_shape(d.input_shape)}")
    out = _shape(d.output_shape)
    flat = "" if len(d.output_shape) == 2 else f" (flattened D = {d.output_shape[1] * d.output_shape[2]:,})"
    lines.append(f"output: {out}{flat}")
    tt = d.totals
    lines.append(
        f"parameters: {tt.params:,} = {tt.weights:,} weights + {tt.biases:,} biases + {tt.bn_params:,} batch-norm; "
        f"buffers: {tt.bn_buffers:,} elements; 2-D kernels: {tt.kernels_2d:,}; multiply-adds: {tt.macs:,}"
    )
    ms = lambda v: "" if v is None else f" = {v:g} ms"  # noqa: E731
    lines.append(
        f"time: subsampling x{d.subsampling}, receptive field {d.receptive_field} frames{ms(d.receptive_field_ms)}, "
        f"look-ahead {d.look_ahead} frames{ms(d.look_ahead_ms)}"
    )
    lines.append(f"streaming: {d.streaming()}")
    min_s = "" if d.min_input_samples is None else f" = {d.min_input_samples:,} samples"
    frames = "frame" if d.min_input_frames == 1 else "frames"
    lines.append(f"minimum input: {d.min_input_frames} {frames}{min_s}; F >= {d.min_input_freq}")
    lines.extend(f"note: {n}" for n in d.notes)
    return lines


def format_description(d: Description, fmt: str = "text") -> str:
    """Render ``d`` as ``text`` (aligned columns) or ``markdown`` (a table), then a summary."""
    cells = [_row_cells(r) for r in d.rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in cells]
        return "\n".join(lines + [""] + [f"- {s}" for s in _summary(d)]) + "\n"
    if fmt != "text":
        raise ValueError(f"format {fmt!r} is invalid: expected 'text' or 'markdown'")
    widths = [max(len(x) for x in col) for col in zip(COLUMNS, *cells, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths, strict=True)).rstrip() for row in [list(COLUMNS)] + cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + _summary(d)) + "\n"


# ------------------------------------------------------------ against a real forward


@dataclass
class CheckReport:
    """What :func:`check_against_forward` compared.

    Attributes:
        description: the description that was checked (at the input's real length).
        source: where the input came from (a file name, "waveform", or "random features").
        compared: how many numbers were compared.
        actual: per row name, the numbers measured on the real modules.
        mismatches: one line per differing number (empty when the check passed).
    """

    description: Description
    source: str
    compared: int
    actual: dict[str, dict[str, object]]
    mismatches: list[str]

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        """One line for logs: what was run and whether every number agreed."""
        d = self.description
        what = f"{d.samples:,} samples -> " if d.samples is not None else ""
        verdict = "all equal" if self.ok else f"{len(self.mismatches)} MISMATCHES"
        return (
            f"check_against_forward: real forward pass on {self.source} ({what}{_shape(d.input_shape)}); "
            f"{self.compared} numbers over {len(self.actual)} rows compared with the description: {verdict}"
        )

    def format(self, fmt: str = "text") -> str:
        """The description's table, then the summary (and every mismatch)."""
        lines = [self.description.format(fmt), self.summary()] + [f"  {m}" for m in self.mismatches]
        return "\n".join(lines) + "\n"


def _module_counts(module: torch.nn.Module) -> dict[str, object]:
    """Weights, biases, batch-norm parameters and buffers of a layer's real modules.

    Batch norm is recognised by its running statistics (``running_mean``), so the
    encoder's masked batch norm counts like ``nn.BatchNorm2d``; every other parameter
    called ``weight`` is a kernel and every ``bias`` a bias.
    """
    counts: dict[str, object] = {"weights": 0, "biases": 0, "bn_params": 0, "bn_buffers": 0, "kernel_shape": ()}
    for sub in module.modules():
        own_params = dict(sub.named_parameters(recurse=False))
        if hasattr(sub, "running_mean"):
            counts["bn_params"] += sum(p.numel() for p in own_params.values())
            counts["bn_buffers"] += sum(b.numel() for b in sub.buffers(recurse=False))
            continue
        for name, p in own_params.items():
            if name == "bias":
                counts["biases"] += p.numel()
            else:
                counts["weights"] += p.numel()
                if name == "weight" and p.dim() == 4:
                    counts["kernel_shape"] = tuple(p.shape)
    return counts


def _resolve(
    description_or_configs: Description | tuple[FeatureConfig | None, EncoderConfig | None] | None,
) -> tuple[Description | None, FeatureConfig | None, EncoderConfig]:
    if isinstance(description_or_configs, Description):
        d = description_or_configs
        return d, d.features, d.encoder
    feats, enc = description_or_configs if description_or_configs is not None else (None, None)
    return None, feats if feats is not None else FeatureConfig(), enc if enc is not None else EncoderConfig()


def _input_features(
    d: Description | None,
    feature_cfg: FeatureConfig | None,
    encoder_cfg: EncoderConfig,
    audio: str | Path | torch.Tensor | None,
) -> tuple[Description, torch.Tensor, str]:
    """The description to check and a real ``(1, T, F, C)`` input for it."""
    if feature_cfg is None:
        assert d is not None, "a description without a feature config comes from describe_layers"
        gen = torch.Generator().manual_seed(0)
        return d, torch.randn((1, *d.input_shape), generator=gen), "random features"
    from speechconv.audio import load_audio
    from speechconv.features import LogMelDeltas

    if audio is None:
        if d is None or d.samples is None:
            raise ValueError("check_against_forward needs audio (a file path or a (S,) waveform) to run")
        gen = torch.Generator().manual_seed(0)
        waveform, source = 0.1 * torch.randn(d.samples, generator=gen), f"seeded noise of {d.samples} samples"
    elif isinstance(audio, torch.Tensor):
        if audio.dim() != 1:
            raise ValueError(f"audio waveform has shape {list(audio.shape)}: expected (S,); pass one channel")
        waveform, source = audio.to(torch.float32), "waveform"
    else:
        waveform, source = load_audio(audio, sample_rate=feature_cfg.sample_rate), Path(audio).name
    samples = int(waveform.shape[0])
    if d is None or d.samples != samples:
        d = describe(feature_cfg, encoder_cfg, samples=samples)
    features, _ = LogMelDeltas(feature_cfg).eval()(waveform)  # (T, F, C)
    return d, features.unsqueeze(0), source  # (T, F, C) -> (B=1, T, F, C)


def _layer_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule of a :class:`speechconv.ConvEncoder` that computes row ``name``.

    ``layers.i`` is ``branches[0].layers[i]``, ``branch.i`` is ``branches[1].layers[i]``
    and ``fusion`` is ``fusion`` (see :mod:`speechconv.encoder`).
    """
    if name == "fusion":
        path = "fusion"
    else:
        prefix, index = name.split(".")
        path = f"branches.{0 if prefix == 'layers' else 1}.layers.{index}"
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise AssertionError(f"ConvEncoder has no submodule {path!r} for inspector row {name!r}: {exc}") from exc


def _per_example(x: object, fusion: bool) -> Shape:
    """Shape of one example: ``(B, C, T, F) -> (T, F, C)``, fusion ``(B, T, D) -> (T, D)``."""
    if isinstance(x, (tuple, list)):
        x = x[0]
    assert isinstance(x, torch.Tensor), f"expected a tensor from the layer, got {type(x).__name__}"
    if fusion:
        return tuple(x.shape[1:])
    _, c, t, f = x.shape  # (B, C, T, F)
    return (t, f, c)


def _shape_hook(store: dict[str, object], fusion: bool):
    """A forward hook that records the layer's per-example input and output shapes."""

    def hook(module: torch.nn.Module, inputs: tuple, output: object) -> None:
        store["in_shape"] = _per_example(inputs[0], fusion)
        store["out_shape"] = _per_example(output, fusion)

    return hook


def check_against_forward(
    description_or_configs: Description | tuple[FeatureConfig | None, EncoderConfig | None] | None = None,
    audio: str | Path | torch.Tensor | None = None,
    *,
    raise_on_mismatch: bool = True,
) -> CheckReport:
    """Run the real modules and compare every number of the description with them.

    Args:
        description_or_configs: a :class:`Description`, a ``(FeatureConfig,
            EncoderConfig)`` pair (``None`` entries are defaults), or ``None`` for the
            defaults.
        audio: a file path or a ``(S,)`` waveform at the feature sample rate.  The
            description is (re)made for the audio's real length.  Without audio a
            description from :func:`describe` runs on seeded noise of its length, and
            one from :func:`describe_layers` on seeded random ``(1, T, F, C)`` features.
        raise_on_mismatch: raise :class:`ShapeMismatch` listing every difference
            (default); ``False`` returns the report with ``mismatches`` filled in.

    The features go through :class:`speechconv.LogMelDeltas`, then a
    :class:`speechconv.ConvEncoder` in eval mode; forward hooks record each layer's
    input and output shapes; parameters and buffers are counted on the modules.
    Compared per row: input and output shape, kernel tensor shape, weights, biases,
    batch-norm parameters and buffers; for the whole encoder: frames ``T``, the
    output shape and the output length.
    """
    from speechconv.encoder import ConvEncoder

    d, feature_cfg, encoder_cfg = _resolve(description_or_configs)
    d, features, source = _input_features(d, feature_cfg, encoder_cfg, audio)
    _, t, f, c = features.shape
    model = ConvEncoder(encoder_cfg, input_freq=f, input_channels=c).eval()
    seen: dict[str, dict[str, object]] = {}
    handles = []
    for row in d.rows:
        module = _layer_module(model, row.name)
        seen[row.name] = _module_counts(module)
        handles.append(module.register_forward_hook(_shape_hook(seen[row.name], row.name == "fusion")))
    try:
        with torch.no_grad():
            out, out_lengths = model(features, torch.tensor([t]))
    finally:
        for h in handles:
            h.remove()

    mismatches: list[str] = []
    compared = 0

    def same(what: str, expected: object, actual: object) -> None:
        nonlocal compared
        compared += 1
        if expected != actual:
            mismatches.append(f"{what}: described {expected}, real {actual}")

    if feature_cfg is not None:
        same("feature frames T", feature_cfg.num_frames(d.samples), t)
    same("input (F, C)", d.input_shape[1:], (f, c))
    for row in d.rows:
        real = seen[row.name]
        for key in ("in_shape", "out_shape", "weights", "biases", "bn_params", "bn_buffers"):
            same(f"{row.name} {key}", getattr(row, key), real.get(key))
        if row.name != "fusion":
            same(f"{row.name} kernel_shape", row.kernel_shape, real["kernel_shape"])
    real_out = tuple(out.shape[1:])
    same("encoder output shape", d.output_shape, real_out)
    same("encoder output length", d.output_shape[0], int(out_lengths[0]))
    report = CheckReport(d, source, compared, seen, mismatches)
    if mismatches and raise_on_mismatch:
        raise ShapeMismatch(
            f"the description of {source} disagrees with a real forward pass in {len(mismatches)} place(s):\n  "
            + "\n  ".join(mismatches)
        )
    return report


# ---------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m speechconv.inspector [--seconds S | --samples N] [--markdown] [--check AUDIO]``."""
    parser = argparse.ArgumentParser(
        prog="python -m speechconv.inspector",
        description="Explain the default front-end layer by layer: shapes, parameters, time geometry.",
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, help=f"input duration (default {DEFAULT_SECONDS} s)")
    length.add_argument("--samples", type=int, help="input length in samples")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument(
        "--check", metavar="AUDIO", type=Path,
        help="also run the real features + encoder on AUDIO (described at its own length) and compare",
    )
    args = parser.parse_args(argv)
    fmt = "markdown" if args.markdown else "text"
    try:
        if args.check is not None:
            if args.seconds is not None or args.samples is not None:
                parser.error("--check describes the audio at its own length; drop --seconds/--samples")
            report = check_against_forward(None, audio=args.check)
            print(report.description.format(fmt))
            print(report.summary())
        else:
            print(describe(seconds=args.seconds, samples=args.samples).format(fmt))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
