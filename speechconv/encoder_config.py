"""`LayerConfig` and `EncoderConfig`: the conv encoder's settings, checked on creation.

These dataclasses double as Hydra structured-config schemas (the types are ones
OmegaConf understands), but nothing here imports Hydra.  Per-layer geometry along time
and frequency is handed to :mod:`speechconv.shapes` as :class:`AxisGeometry`, so the
encoder, its masks, the inspector and the tests share one length arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from speechconv import shapes
from speechconv.checks import bad, check_choice, check_int
from speechconv.shapes import AxisGeometry

LAYER_KINDS = ("conv", "stack")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "none")
TOO_SHORT_POLICIES = ("error", "pad")
FUSIONS = ("mix", "gated", "concat", "sum")


def _pair(key: str, value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    try:
        t, f = value
        return int(t), int(f)
    except (TypeError, ValueError):
        raise bad(f"encoder.{key}", value, "an int or a [time, freq] pair of ints") from None


@dataclass
class LayerConfig:
    """One layer of the encoder.

    ``kind="conv"``: a 2-D convolution over (time, frequency) with ``filters`` output
    channels, ``kernel`` and ``stride`` as ``[time, freq]``, ``padding`` an int (zeros
    on both sides; 1 by default), ``"same"`` (TensorFlow SAME), ``"valid"``, ``"causal"``
    (``k - 1`` zeros before, none after), or a ``[time, freq]`` pair of those (see
    :mod:`speechconv.shapes`); then batch norm (optional), activation and dropout.
    Only ``same`` puts a length-dependent padding before an utterance (and so costs a
    per-utterance copy of each layer's input); the others have fixed alignment and
    stream.  For a 3x3 kernel at stride 2, padding 1 and SAME give the same lengths,
    ``ceil(L / 2)``; they differ only in where an even-length input's one frame of
    padding goes (SAME puts it after, padding 1 reads the zero before).

    ``kind="stack"``: frame stacking plus projection, an alternative to conv
    subsampling.  ``frames`` consecutive frames (all frequencies and channels) are
    projected to ``filters`` values: a conv with kernel ``[frames, F_in]`` and stride
    ``[frames, F_in]``, SAME in time (``ceil(T / frames)`` frames) and ``F' = 1``.
    ``kernel``, ``stride`` and ``padding`` are ignored.
    """

    kind: str = "conv"
    filters: int = 32
    kernel: list[int] = field(default_factory=lambda: [3, 3])
    stride: list[int] = field(default_factory=lambda: [2, 2])
    padding: Any = 1
    batch_norm: bool = True
    activation: str = "relu"
    dropout: float = 0.0
    frames: int = 4

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, where: str = "layer") -> None:
        if self.kind not in LAYER_KINDS:
            raise bad(f"encoder.{where}.kind", self.kind, f"one of {LAYER_KINDS}")
        if not isinstance(self.filters, int) or self.filters < 1:
            raise bad(f"encoder.{where}.filters", self.filters, "an int >= 1")
        kt, kf = _pair(f"{where}.kernel", self.kernel)
        st, sf = _pair(f"{where}.stride", self.stride)
        if min(kt, kf) < 1:
            raise bad(f"encoder.{where}.kernel", self.kernel, "sizes >= 1")
        if min(st, sf) < 1:
            raise bad(f"encoder.{where}.stride", self.stride, "strides >= 1", "use 1 for no subsampling")
        for p in self.paddings:
            if isinstance(p, bool) or not (p in shapes.PADDINGS or (isinstance(p, int) and p >= 0)):
                raise bad(f"encoder.{where}.padding", self.padding,
                           "'same', 'valid', 'causal', an int >= 0, or a [time, freq] pair of those")
        if self.activation not in ACTIVATIONS:
            raise bad(f"encoder.{where}.activation", self.activation, f"one of {ACTIVATIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad(f"encoder.{where}.dropout", self.dropout, "a float in [0, 1)")
        if not isinstance(self.frames, int) or self.frames < 1:
            raise bad(f"encoder.{where}.frames", self.frames, "an int >= 1")

    @property
    def paddings(self) -> tuple[shapes.Padding, shapes.Padding]:
        """Padding as ``(time, freq)``."""
        p = self.padding
        if isinstance(p, (list, tuple)) or (hasattr(p, "__len__") and not isinstance(p, str)):
            t, f = p
            return t, f
        return p, p

    def time_geometry(self) -> AxisGeometry:
        """Kernel, stride and padding along time."""
        if self.kind == "stack":
            return AxisGeometry(self.frames, self.frames, "same")
        (kt, _), (st, _) = _pair("kernel", self.kernel), _pair("stride", self.stride)
        return AxisGeometry(kt, st, self.paddings[0])

    def freq_geometry(self, in_freq: int) -> AxisGeometry:
        """Kernel, stride and padding along frequency, for ``in_freq`` input rows."""
        if self.kind == "stack":
            return AxisGeometry(in_freq, in_freq, "valid")
        (_, kf), (_, sf) = _pair("kernel", self.kernel), _pair("stride", self.stride)
        return AxisGeometry(kf, sf, self.paddings[1])


def _default_layers() -> list[LayerConfig]:
    return [LayerConfig(), LayerConfig()]


@dataclass
class EncoderConfig:
    """The conv encoder: ``layers`` in order, optionally a second branch fused with it.

    Defaults are the front of Weiss et al. 2017: two conv layers of 32 filters, 3x3,
    stride 2x2, batch norm and ReLU, turning ``T x 80 x 3`` into ``ceil(T/4) x 20 x 32``,
    with one zero frame and row of padding on each side (fixed alignment: it streams,
    and TF SAME's lengths).

    Attributes:
        layers: the main branch.
        branch: optional second branch on the same input (for example one ``stack``
            layer); both branches are flattened to ``(B, T', D)`` and fused, so their
            ``T'`` must agree, and their ``D`` too except for ``concat``.
        fusion: how the two branches are fused (:mod:`speechconv.layers`): ``mix`` (one
            learned scalar), ``gated`` (a softmax gate per position), ``concat``
            (``D = D1 + D2``) or ``sum``.
        too_short: ``error`` (a ``ValueError`` naming the batch index, its length and
            the minimum) or ``pad`` (short utterances are zero-padded to the minimum).
    """

    layers: list[LayerConfig] = field(default_factory=_default_layers)
    branch: list[LayerConfig] | None = None
    fusion: str = "mix"
    too_short: str = "error"

    def __post_init__(self) -> None:
        self.layers = [lc if isinstance(lc, LayerConfig) else LayerConfig(**lc) for lc in self.layers]
        if self.branch is not None:
            self.branch = [lc if isinstance(lc, LayerConfig) else LayerConfig(**lc) for lc in self.branch]
        self.validate()

    def validate(self) -> None:
        if not self.layers:
            raise bad("encoder.layers", self.layers, "at least one layer")
        for i, lc in enumerate(self.layers):
            lc.validate(f"layers.{i}")
        for i, lc in enumerate(self.branch or []):
            lc.validate(f"branch.{i}")
        if self.branch is not None and not self.branch:
            raise bad("encoder.branch", self.branch, "null or at least one layer")
        if self.fusion not in FUSIONS:
            raise bad("encoder.fusion", self.fusion, f"one of {FUSIONS}")
        if self.too_short not in TOO_SHORT_POLICIES:
            raise bad("encoder.too_short", self.too_short, f"one of {TOO_SHORT_POLICIES}")

    def branches(self) -> list[list[LayerConfig]]:
        """The main branch, then the optional second one."""
        return [self.layers] + ([self.branch] if self.branch else [])


def time_geometries(layers: list[LayerConfig]) -> list[AxisGeometry]:
    """Time-axis geometry of each layer, for the functions of :mod:`speechconv.shapes`."""
    return [lc.time_geometry() for lc in layers]


def freq_geometries(layers: list[LayerConfig], in_freq: int) -> list[AxisGeometry]:
    """Frequency-axis geometry of each layer given the input's ``F``."""
    out = []
    for lc in layers:
        g = lc.freq_geometry(in_freq)
        out.append(g)
        in_freq = shapes.conv_out_length(in_freq, g.kernel, g.stride, g.padding)
    return out


@dataclass
class Weiss2017Config:
    """Sizes of :class:`speechconv.Weiss2017Encoder` past its conv front (the front is an
    :class:`EncoderConfig`, ``encoder.layers`` in ``train.py``); the defaults are the paper's.

    Attributes:
        convlstm_filters: hidden channels ``C_h`` of the bidirectional conv LSTM per direction.
        convlstm_kernel: its filter width along frequency (the paper's 1x3); odd, so
            that its zero padding is symmetric and keeps ``F'``.
        lstm_layers: bidirectional LSTM layers after the ConvLSTM (3 in the paper).
        lstm_units: LSTM units per direction (256).
        projection: width of the linear projection after each BiLSTM (512), also the output ``D``.
        project_last: also project after the last BiLSTM (else ``D = 2 * lstm_units``).
        dropout: dropout on the input of each BiLSTM layer.
    """

    convlstm_filters: int = 32
    convlstm_kernel: int = 3
    lstm_layers: int = 3
    lstm_units: int = 256
    projection: int = 512
    project_last: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for key in ("convlstm_filters", "convlstm_kernel", "lstm_layers", "lstm_units", "projection"):
            check_int(f"encoder.weiss2017.{key}", getattr(self, key), 1)
        if self.convlstm_kernel % 2 == 0:
            raise bad("encoder.weiss2017.convlstm_kernel", self.convlstm_kernel, "an odd int (1, 3, 5...)",
                       "an odd kernel pads both sides equally and keeps F'")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise bad("encoder.weiss2017.dropout", self.dropout, "a float in [0, 1)")


def freq_min_geometries(layers: list[LayerConfig], in_freq: int) -> list[AxisGeometry]:
    """Frequency geometries for the minimum-``F`` search: a ``stack`` layer's frequency
    kernel is its whole input, so it accepts any ``F >= 1`` and stands in as a 1-wide kernel."""
    return [AxisGeometry(1, 1, "valid") if lc.kind == "stack" else lc.freq_geometry(in_freq) for lc in layers]


def check_freq_fit(layers: list[LayerConfig], in_freq: int, where: str = "encoder.layers") -> list[int]:
    """Rows ``F'`` after each of ``layers`` on an input of ``in_freq`` rows.

    Raises :class:`~speechconv.checks.ConfigError` naming the first layer whose frequency
    kernel is larger than its (padded) input, and the smallest ``features.n_mels`` the
    stack accepts: the one check of the frequency fit (config, encoder and inspector).
    """
    rows, out = in_freq, []
    for i, g in enumerate(freq_geometries(layers, in_freq)):
        nxt = shapes.conv_out_length(rows, g.kernel, g.stride, g.padding)
        if nxt < 1:
            need = shapes.stack_min_input(freq_min_geometries(layers, in_freq))
            raise bad(f"{where}.{i}.kernel", list(layers[i].kernel),
                      f"a frequency kernel that fits its input of {rows} rows with padding {g.padding!r} "
                      f"(this stack needs features.n_mels >= {need}, it gets {in_freq})",
                      "use a smaller kernel or stride, padding 'same', or raise features.n_mels")
        rows = nxt
        out.append(rows)
    return out

ENCODER_TYPES = ("conv", "weiss2017")


@dataclass
class EncoderSettings(EncoderConfig):
    """:class:`EncoderConfig` (the conv stack) plus which encoder to build around it: the
    ``encoder`` group of ``train.py``.

    Attributes:
        type: ``conv`` (the conv stack alone, flattened to ``(B, T', D)``) or ``weiss2017``
            (the conv stack as the front of :class:`speechconv.Weiss2017Encoder`, sized
            by ``weiss2017``), so ``encoder.layers.0.filters=64`` works for both.
        weiss2017: the sizes past the conv front; ignored for ``type=conv``.
    """

    type: str = "conv"
    weiss2017: Weiss2017Config = field(default_factory=Weiss2017Config)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("encoder.type", self.type, ENCODER_TYPES)
        if not isinstance(self.weiss2017, Weiss2017Config):
            self.weiss2017 = Weiss2017Config(**self.weiss2017)
        if self.type == "weiss2017" and self.branch is not None:
            raise bad("encoder.branch", "<set>", "null with encoder.type=weiss2017",
                      "the paper's encoder has one conv branch; use encoder.type=conv for fused branches")

    def conv_config(self) -> EncoderConfig:
        """The plain :class:`EncoderConfig` of the conv stack."""
        return EncoderConfig(layers=self.layers, branch=self.branch, fusion=self.fusion, too_short=self.too_short)
