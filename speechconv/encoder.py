"""`ConvEncoder`: strided 2-D conv front-end with exact lengths on padded batches.

The default is the front of Weiss et al. 2017: two conv layers of 32 filters, 3x3,
stride 2x2, batch norm and ReLU, turning ``(B, T, 80, 3)`` features into
``(B, ceil(T/4), 20, 32)``, with one zero frame and row of padding on each side (TF
SAME's lengths, with an alignment that does not depend on the utterance's length, so
the default streams; ``padding: same`` gives TF's rule).

Each layer (:class:`ConvLayer`) runs four steps on ``(B, C, T, F)``:

1. pad: with TF SAME along time each utterance's frames are copied into a zero buffer
   at its own offset, frequency rows padded alike
   (:func:`speechconv.masking.pad_per_utterance`: SAME's padding before depends on the
   utterance's length); with fixed alignment (``valid``, ``causal``, an int) the conv
   pads both axes itself, since every layer's input is zero past each length;
2. conv (a bias only without batch norm: the norm's mean would cancel it);
3. batch norm over valid frames only (:class:`speechconv.masking.MaskedBatchNorm`),
   which writes zeros past each output length;
4. activation and dropout, which map those zeros to zeros (without a norm the output
   is multiplied by the length mask instead).

So every layer's output, and the encoder's, is exactly zero past each utterance's
output length, and an utterance gives the same frames alone and in any batch (up to
float rounding: the batch changes the shapes oneDNN picks its kernels by).  The
output length of the batch ``T'`` is the length formula of :mod:`speechconv.shapes`
applied to the padded ``T``, so the output shape depends on the input shape only.

The steps are plain PyTorch ops with no Python control flow on tensor values: the
same forward trains, evaluates, hooks (the shape inspector), exports
(``torch.export``, ONNX; :func:`fold_batch_norms` gives the eval form with each norm
folded into its conv) and streams (:meth:`ConvEncoder.streaming`, which calls each
layer's :meth:`ConvLayer.transform` on the frames it holds).

The convs run on channels_last tensors: ``(B, T, F, C)`` features permuted to
``(B, C, T, F)`` already have channels_last strides, and the output permuted back to
``(B, T', F', C')`` is contiguous again, so neither permute copies.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from speechconv import masking, shapes
from speechconv.encoder_config import EncoderConfig, LayerConfig, check_freq_fit, freq_geometries, time_geometries
from speechconv.encoder_stream import BatchedEncoderStream, EncoderStream
from speechconv.layers import Concat, GatedMix, LearnedMix, Sum


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    if name == "tanh":
        return nn.Tanh()
    assert name == "none", f"activation {name!r} should have been rejected by LayerConfig.validate"
    return nn.Identity()


def _time_formula(layers: list[LayerConfig]) -> str:
    """The output-length formula of a stack along time, e.g. ``ceil(ceil(T/2)/2)``."""
    expr = "T"
    for g in time_geometries(layers):
        # same, causal and an odd kernel's half (L + 2p - k = L - 1) all give ceil(L / s)
        if g.padding in ("same", "causal") or (isinstance(g.padding, int) and 2 * g.padding == g.kernel - 1):
            expr = f"ceil({expr}/{g.stride})"
        else:
            pad = 0 if g.padding == "valid" else 2 * int(g.padding)
            inner = f"{expr}{f' + {pad}' if pad else ''} - {g.kernel}"
            expr = f"floor(({inner})/{g.stride}) + 1"
    return expr


class ConvLayer(nn.Module):
    """One encoder layer: per-utterance padding, conv, masked batch norm, activation, dropout.

    Attributes ``conv`` (``nn.Conv2d``; :meth:`transform` pads for it) and ``norm``
    (:class:`speechconv.masking.MaskedBatchNorm` or None) hold every parameter; ``time``
    is the time geometry (:class:`speechconv.shapes.AxisGeometry`).  With SAME along
    time, ``gather_freq`` holds the zero rows :func:`speechconv.masking.pad_per_utterance`
    puts before and after along frequency; else (None) the conv pads itself:
    ``time_pad`` and ``freq_pad`` zeros on both sides of each axis, and ``kernel_pad``
    zero taps in front of and behind its kernel along frequency, which make an
    asymmetric split out of the symmetric padding (``(0, 1)`` rows at stride 2 is
    padding 1 and one tap in front: the window of output ``j`` then starts at row
    ``2j``).

    Shapes:
        ``forward(x, lengths)``: ``(B, C, T, F)`` zero past ``lengths`` (what every layer
        gives, and what the encoder makes of its features) and ``(B,)`` ->
        ``(B, C', T', F')`` (channels_last strides), zero past each output length, and
        ``(B,)`` output lengths.
    """

    def __init__(self, lc: LayerConfig, in_channels: int, in_freq: int, name: str) -> None:
        super().__init__()
        self.time = lc.time_geometry()
        fg = lc.freq_geometry(in_freq)
        freq_before, freq_after = shapes.padding_amounts(in_freq, fg.kernel, fg.stride, fg.padding)
        padded_freq = in_freq + freq_before + freq_after
        self.in_freq = in_freq
        self.out_freq = shapes.conv_out_length(in_freq, fg.kernel, fg.stride, fg.padding)
        assert self.out_freq == (padded_freq - fg.kernel) // fg.stride + 1, (
            f"encoder {name}: frequency padding {freq_before}+{freq_after} disagrees with shapes.py"
        )
        if self.time.padding == "same":  # pad_per_utterance lays out the zeros of both axes
            self.gather_freq, self.time_pad, self.freq_pad, self.kernel_pad = (freq_before, freq_after), 0, 0, (0, 0)
        else:
            # Fixed alignment: the input is zero past each length, so the conv's own zeros
            # behind an utterance are its own, and the conv pads both axes itself (no copy
            # of its input).  Zero taps in front of its kernel (more zeros after) or behind
            # it (more before) make an asymmetric split out of its symmetric padding
            # (cutting output rows instead would cost a zero fill and a copy in backward).
            self.gather_freq = None
            self.time_pad = shapes.padding_amounts(1, self.time.kernel, self.time.stride, self.time.padding)[0]
            self.freq_pad = max(freq_before, freq_after)
            self.kernel_pad = (self.freq_pad - freq_before, self.freq_pad - freq_after)
        self.out_channels = lc.filters
        self.conv = nn.Conv2d(in_channels, lc.filters, (self.time.kernel, fg.kernel), (self.time.stride, fg.stride),
                              bias=not lc.batch_norm)
        self.norm = masking.MaskedBatchNorm(lc.filters) if lc.batch_norm else None
        self.act = _activation(lc.activation)
        self.dropout = nn.Dropout(lc.dropout) if lc.dropout > 0 else nn.Identity()
        self.folded = False

    def extra_repr(self) -> str:
        g = self.time
        return f"time: kernel {g.kernel}, stride {g.stride}, padding {g.padding!r}; " \
               f"frequency rows {self.in_freq} -> {self.out_freq}"

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """``(B,)`` input lengths -> ``(B,)`` int64 output lengths (:mod:`speechconv.shapes`)."""
        g = self.time
        return shapes.conv_out_length_tensor(lengths, g.kernel, g.stride, g.padding)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C, T, F)``, zero past ``lengths`` ``(B,)`` -> ``(B, C', T', F')``, ``(B,)``."""
        g = self.time
        out_time = shapes.conv_out_length(x.shape[2], g.kernel, g.stride, g.padding)
        out_lengths = self.output_lengths(lengths)
        if self.gather_freq is not None:  # each utterance at its own offset: (B, C, T, F) -> (B, C, span, F_pad)
            pad_before = shapes.pad_before_tensor(lengths, g.kernel, g.stride, g.padding)
            x = masking.pad_per_utterance(x, lengths, pad_before, shapes.conv_input_span(out_time, g.kernel, g.stride),
                                          *self.gather_freq)
        return self.transform(x, shapes.make_pad_mask(out_lengths, out_time), self.time_pad), out_lengths

    def transform(self, x: torch.Tensor, mask: torch.Tensor | None, time_pad: int = 0) -> torch.Tensor:
        """Conv, norm, activation and dropout.

        Args:
            x: ``(B, C, T, F)``, already padded along time unless ``time_pad`` (then zero
                past each length), and padded along frequency by ``freq_pad`` zeros of
                the conv and its kernel's zero taps (none after a SAME layer's gather).
            mask: ``(B, T')`` bool, True on the output frames to keep; ``None``: all of
                them (streams that each complete every window computed, on a layer
                without batch norm whose input is padded already, ``time_pad=0``).
            time_pad: zeros the conv puts on both sides along time.

        Returns:
            ``(B, C', T', F')``, zero where ``mask`` is False.
        """
        conv = self.conv
        if x.shape[1] == 1:  # one channel: the strides of a contiguous (B, 1, T, F) (oneDNN bug, masking.conv_layout)
            x = x.squeeze(1).unsqueeze(1)
        weight = nn.functional.pad(conv.weight, self.kernel_pad) if any(self.kernel_pad) else conv.weight
        y = nn.functional.conv2d(x, weight, conv.bias, conv.stride, (time_pad, self.freq_pad))
        if mask is None:
            assert self.norm is None and time_pad == 0, "mask=None is for a layer without norm on padded input"
            return self.dropout(self.act(y))
        if self.time.padding == "causal":  # the symmetric padding's outputs past the end (offline)
            y = y[:, :, : mask.shape[1]]
        if self.norm is not None:
            return self.dropout(self.act(self.norm(y, mask)))  # zero past the lengths, and 0 -> 0 after
        return self.dropout(self.act(y)) * mask[:, None, :, None].to(y.dtype)  # (B, T') -> (B, 1, T', 1)

    def train(self, mode: bool = True) -> ConvLayer:
        if mode and self.folded:
            raise ValueError("this encoder layer has its batch norm folded into its conv (fold_batch_norms): it is "
                             "for inference and export only; train the encoder it was folded from")
        return super().train(mode)


class ConvBranch(nn.Module):
    """A stack of :class:`ConvLayer` (one branch of the encoder), called in turn.

    Shapes:
        ``forward(x, lengths)``: ``(B, C, T, F)``, ``(B,)`` -> ``(B, C', T', F')`` zero
        past each output length, and ``(B,)`` output lengths.
    """

    def __init__(self, layers: list[LayerConfig], in_channels: int, in_freq: int, name: str) -> None:
        super().__init__()
        check_freq_fit(layers, in_freq, f"encoder.{name}")
        mods = []
        for i, lc in enumerate(layers):
            mods.append(ConvLayer(lc, in_channels, in_freq, f"{name}.{i}"))
            in_channels, in_freq = mods[-1].out_channels, mods[-1].out_freq
        self.layers = nn.ModuleList(mods)
        self.out_channels, self.out_freq = in_channels, in_freq

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, T, F)``, ``(B,)`` -> ``(B, C', T', F')``, ``(B,)``."""
        for layer in self.layers:
            x, lengths = layer(x, lengths)
        return x, lengths


FUSION_MODULES = {"mix": LearnedMix, "gated": GatedMix, "concat": Concat, "sum": Sum}

GROUP_ELEMENTS = 1_000_000
"""Largest layer output per group of :meth:`ConvEncoder._forward_grouped`, in elements
(4 MB of float32; for the default encoder, groups of 6 utterances of 250 frames, or
single utterances of 1000 frames)."""


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` runs forward hooks (its own, a submodule's or global ones)."""
    g = nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class ConvEncoder(nn.Module):
    """Strided 2-D conv encoder over ``(B, T, F, C)`` features with exact lengths.

    Args:
        config: layers, optional second branch, fusion and too-short policy;
            None for the default (Weiss et al. 2017: 2 x [32 filters, 3x3, stride 2x2,
            padding 1, batch norm, ReLU]).
        input_freq: ``F`` of the input features (80 mel bins).
        input_channels: ``C`` of the input features (3: static, delta, delta-delta).
        flatten: return ``(B, T', F' * C')`` instead of ``(B, T', F', C')``, the input of
            an RNN or Transformer.  Each frame's vector is F' major, C' minor:
            ``(B, C', T', F') -> (B, T', F', C') -> (B, T', F' * C')``, so element
            ``f * C' + c`` is row ``f``, channel ``c``.  Ignored with a branch, which
            always returns ``(B, T', D)``.

    Shapes:
        ``forward(features, lengths)``: features ``(B, T, F, C)`` (frames past each length
        are ignored, whatever they hold), lengths ``(B,)`` ints ``<= T`` ->
        ``(out, out_lengths)`` with ``out`` ``(B, T', F', C')`` (or ``(B, T', D)``, see
        ``flatten``), zero past each output length, ``T'`` the stack's length formula
        applied to ``T`` (so ``max(out_lengths) == T'`` when the longest utterance fills
        the batch), and ``out_lengths = output_lengths(lengths)``.

    Too-short utterances (fewer than :attr:`min_input_frames` frames), by
    ``config.too_short``: ``error`` raises a ``ValueError`` naming the batch index, its
    length and the minimum; ``pad`` zero-pads them to the minimum, so their output
    length is that of the minimum (at least one frame).  The lengths are checked in
    eager mode; a traced program (``torch.export``, ONNX) trusts them.

    Two branches (``config.branch``): both read the same input, are flattened to
    ``(B, T', D)`` and fused by :class:`speechconv.layers.LearnedMix` (``fusion="mix"``),
    ``GatedMix(D)`` (``"gated"``), ``Concat`` (``"concat"``, ``D = D1 + D2``) or ``Sum``
    (``"sum"``); their ``T'`` formulas must agree, and their ``D`` except for
    ``concat`` (checked at construction).
    """

    def __init__(
        self,
        config: EncoderConfig | None = None,
        input_freq: int = 80,
        input_channels: int = 3,
        flatten: bool = False,
    ) -> None:
        super().__init__()
        self.config = EncoderConfig() if config is None else config
        self.config.validate()
        for name, value in (("input_freq", input_freq), ("input_channels", input_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ConvEncoder {name}={value!r} is invalid: expected an int >= 1")
        self.input_freq, self.input_channels = input_freq, input_channels
        layer_lists = self.config.branches()
        names = ["layers", "branch"]
        self.branches = nn.ModuleList(
            [ConvBranch(ls, input_channels, input_freq, names[i]) for i, ls in enumerate(layer_lists)]
        )
        self.has_branch = len(layer_lists) > 1
        self.flatten = flatten or self.has_branch
        self.min_input_frames = max(shapes.stack_min_input(time_geometries(ls)) for ls in layer_lists)
        self.fusion: nn.Module | None = None
        if self.has_branch:
            self._check_branches_agree(layer_lists)
            fusion = FUSION_MODULES[self.config.fusion]
            self.fusion = fusion(self.branches[0].out_freq * self.branches[0].out_channels) \
                if fusion is GatedMix else fusion()

    def _check_branches_agree(self, layer_lists: list[list[LayerConfig]]) -> None:
        dims = [br.out_freq * br.out_channels for br in self.branches]
        geoms = [time_geometries(ls) for ls in layer_lists]
        # T'(L) of a stack is (L + c) / J with floors, J the product of strides, after a
        # transient shorter than the receptive fields: checking every L up to a few
        # periods past both receptive fields decides agreement for all L.
        horizon = 4 * (shapes.subsampling(geoms[0]) * shapes.subsampling(geoms[1])
                       + shapes.receptive_field(geoms[0]) + shapes.receptive_field(geoms[1]) + 8)
        grid = torch.arange(horizon)
        t0, t1 = (shapes.stack_out_length_tensor(grid, g) for g in geoms)
        differ = torch.nonzero(t0 != t1).flatten()
        if (dims[0] != dims[1] and self.config.fusion != "concat") or differ.numel() > 0:
            formulas = [_time_formula(ls) for ls in layer_lists]
            shapes_txt = [
                f"D = {br.out_freq}*{br.out_channels} = {d}, T' = {f}"
                for br, d, f in zip(self.branches, dims, formulas, strict=True)
            ]
            where = f"; they first differ at T={int(differ[0])}" if differ.numel() > 0 else ""
            need = "T'" if self.config.fusion == "concat" else "(T', D)"
            raise ValueError(
                f"encoder branches must give the same {need} to be fused by {self.config.fusion!r}: layers give "
                f"{shapes_txt[0]}; branch gives {shapes_txt[1]}{where}. Change the branch's strides, frames, padding "
                f"or filters so both match"
            )

    # ---------------------------------------------------------------- derived values

    @property
    def out_freq(self) -> int:
        """``F'`` of the main branch (20 by default)."""
        return self.branches[0].out_freq

    @property
    def out_channels(self) -> int:
        """``C'`` of the main branch (32 by default)."""
        return self.branches[0].out_channels

    @property
    def output_dim(self) -> int:
        """``D = F' * C'`` of the flattened output (640 by default); the fused ``D`` with a branch."""
        dims = [br.out_freq * br.out_channels for br in self.branches]
        return sum(dims) if self.has_branch and self.config.fusion == "concat" else dims[0]

    @property
    def subsampling(self) -> int:
        """Frames in per frame out along time (4 by default)."""
        return shapes.subsampling(time_geometries(self.config.layers))

    @property
    def look_ahead(self) -> int:
        """Input frames past an output frame's own position that it reads (the most over
        branches; for ``same`` padding the worst case over lengths): :func:`speechconv.shapes.look_ahead`."""
        return max(shapes.look_ahead(time_geometries(ls)) for ls in self.config.branches())

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """``(B,)`` input lengths -> ``(B,)`` output lengths, as ``forward`` returns them.

        Under ``too_short="pad"`` short lengths count as :attr:`min_input_frames`.
        """
        lengths = lengths.to(torch.int64)
        if self.config.too_short == "pad":
            lengths = lengths.clamp(min=self.min_input_frames)
        return shapes.stack_out_length_tensor(lengths, time_geometries(self.config.layers))

    def freq_geometries(self) -> list[list[shapes.AxisGeometry]]:
        """Per branch, each layer's frequency geometry (for the shape inspector)."""
        return [freq_geometries(ls, self.input_freq) for ls in self.config.branches()]

    # ------------------------------------------------------------------------ forward

    def check_input(self, features: torch.Tensor, lengths: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the problem unless ``features`` is ``(B, T, F, C)``
        with this encoder's ``F`` and ``C`` and ``lengths`` ``(B,)`` integers in ``[0, T]``,
        each at least :attr:`min_input_frames` under ``too_short="error"``."""
        if features.dim() != 4 or features.shape[2] != self.input_freq or features.shape[3] != self.input_channels:
            raise ValueError(
                f"ConvEncoder expected features (B, T, {self.input_freq}, {self.input_channels}), got "
                f"{list(features.shape)}; pass (batch, frames, mel bins, channels) or set input_freq/input_channels"
            )
        if lengths.dim() != 1 or lengths.shape[0] != features.shape[0]:
            raise ValueError(
                f"ConvEncoder expected lengths of shape ({features.shape[0]},), got {list(lengths.shape)}"
            )
        if lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise ValueError(f"ConvEncoder lengths must be integers, got dtype {lengths.dtype}")
        if torch.compiler.is_compiling():
            return  # a traced program cannot branch on values; it trusts the lengths
        num_frames = features.shape[1]
        bad = torch.nonzero((lengths < 0) | (lengths > num_frames)).flatten()
        if bad.numel() > 0:
            i = int(bad[0])
            raise ValueError(
                f"ConvEncoder lengths[{i}]={int(lengths[i])} is outside [0, {num_frames}] (the padded T of features)"
            )
        short = torch.nonzero(lengths < self.min_input_frames).flatten()
        if short.numel() > 0 and self.config.too_short == "error":
            i = int(short[0])
            raise ValueError(
                f"utterance {i} of the batch has {int(lengths[i])} frames, but this encoder needs at least "
                f"{self.min_input_frames} frames; drop or pad short utterances, or set encoder.too_short=pad"
            )

    def _pad_short(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``too_short="pad"``: utterances under :attr:`min_input_frames` zero-padded to it.
        ``(B, T, F, C)``, ``(B,)`` -> ``(B, max(T, min), F, C)``, ``(B,)``."""
        num_frames = features.shape[1]
        # Frames past the old lengths may hold anything: zero them before they count.
        features = torch.where(shapes.make_pad_mask(lengths, num_frames)[:, :, None, None], features, 0.0)
        if num_frames < self.min_input_frames:
            extra = self.min_input_frames - num_frames
            features = nn.functional.pad(features, (0, 0, 0, 0, 0, extra))  # (B, T, F, C) -> (B, T+e, F, C)
        return features, lengths.clamp(min=self.min_input_frames)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` ``(B, T, F, C)``, ``lengths`` ``(B,)`` -> ``(B, T', F', C')`` or
        ``(B, T', D)``, and ``(B,)`` output lengths."""
        self.check_input(features, lengths)
        lengths = lengths.to(torch.int64)
        if self.config.too_short == "pad":
            features, lengths = self._pad_short(features, lengths)
        group = self._group_size(features)
        if group < features.shape[0]:
            return self._forward_grouped(features, lengths, group)
        return self._forward_layers(features, lengths)

    def _group_size(self, features: torch.Tensor) -> int:
        """Utterances per group of :meth:`_forward_grouped`: ``B`` (no grouping) unless no
        autograd is recording, nothing is being traced, no hook would see the groups and
        every layer maps each utterance on its own (running statistics, no active
        dropout); then as many as keep each layer's output under
        :data:`GROUP_ELEMENTS` elements."""
        batch = features.shape[0]
        if (torch.is_grad_enabled() or torch.compiler.is_compiling() or batch <= 1 or _hooked(self)
                or any(m.training for m in self.modules() if isinstance(m, (masking.MaskedBatchNorm, nn.Dropout)))):
            return batch
        largest = 1
        for branch in self.branches:
            t = features.shape[1]
            for layer in branch.layers:
                t = shapes.conv_out_length(t, layer.time.kernel, layer.time.stride, layer.time.padding)
                largest = max(largest, t * layer.out_freq * layer.out_channels)
        return max(1, GROUP_ELEMENTS // largest)

    def _forward_grouped(self, features: torch.Tensor, lengths: torch.Tensor,
                         group: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The fast path: :meth:`_forward_layers` on groups of ``group`` utterances of
        similar length (taken in order of decreasing length), each group cut to its own
        longest one, copied into the batch output.  Same values up to float rounding
        (oneDNN picks kernels by shape): every layer maps each utterance on its own here.
        Sorting leaves little padding in any group, and small groups keep every
        intermediate tensor small enough to be reused from the allocator's free lists
        and caches, where batch-sized ones are fresh pages on every call.
        ``(B, T, F, C)``, ``(B,)`` -> as :meth:`forward`."""
        out_lengths = self.output_lengths(lengths)
        order = torch.argsort(lengths, descending=True, stable=True)  # (B,): longest first
        longest = lengths[order].tolist()
        out: torch.Tensor | None = None
        for start in range(0, features.shape[0], group):
            index = order[start : start + group]  # (g,)
            y, _ = self._forward_layers(features[index, : longest[start]], lengths[index])  # (g, T_g', ...)
            if out is None:  # (B, T', ...) of the whole batch, zero past each output length
                out_time = shapes.stack_out_length(features.shape[1], time_geometries(self.config.layers))
                out = y.new_zeros((features.shape[0], out_time) + tuple(y.shape[2:]))
            out[index, : y.shape[1]] = y
        assert out is not None, "_forward_grouped runs on a non-empty batch"
        return out, out_lengths

    def _forward_layers(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain path: each branch's layers in turn on the whole batch, then the fusion.
        ``(B, T, F, C)``, ``(B,)`` -> as :meth:`forward`."""
        # Zeros past each length, whatever the features hold there: what the layers read.
        features = torch.where(shapes.make_pad_mask(lengths, features.shape[1])[:, :, None, None], features, 0.0)
        x = features.permute(0, 3, 1, 2)  # (B, T, F, C) -> (B, C, T, F), channels_last strides
        outs: list[torch.Tensor] = []
        out_lengths = lengths
        for branch in self.branches:
            y, out_lengths = branch(x, lengths)
            y = y.permute(0, 2, 3, 1)  # (B, C', T', F') -> (B, T', F', C')
            if self.flatten:
                y = y.flatten(2)  # (B, T', F', C') -> (B, T', F' * C')
            outs.append(y)
        if self.fusion is not None:
            return self.fusion(outs[0], outs[1]), out_lengths
        return outs[0], out_lengths

    # -------------------------------------------------------------------- streaming

    def streaming(self, batch: int | None = None) -> EncoderStream | BatchedEncoderStream:
        """A stream of this (eval-mode) encoder that takes features chunk by chunk and
        gives the frames of ``self(features[None], lengths)`` as soon as they are final.

        ``batch=None``: one stream, ``accept((t, F, C)) -> (t', F', C')`` (or ``(t', D)``
        when flattened) and ``finish()``; ``batch=B``: ``B`` independent streams at once
        (:class:`speechconv.encoder_stream.BatchedEncoderStream`).

        Needs fixed alignment along time (every layer's time padding ``valid``,
        ``causal`` or an int): TF SAME puts the first output frame where the utterance's
        total length decides, which a stream cannot know; a ``ValueError`` says which
        layer and what to use instead.  One branch only.  The stream runs a copy of the
        layers with their batch norms folded (:func:`fold_batch_norms`): later changes to
        this encoder's weights do not reach it.
        """
        if self.training:
            raise ValueError("ConvEncoder.streaming() needs an eval-mode encoder (batch norms on running "
                             "statistics): call encoder.eval() first")
        if self.has_branch:
            raise ValueError("ConvEncoder.streaming() streams one branch; this encoder fuses two "
                             "(encoder.branch is set): stream an encoder without encoder.branch")
        for i, lc in enumerate(self.config.layers):
            if lc.time_geometry().padding == "same":
                raise ValueError(
                    f"encoder.layers.{i} pads time with TF SAME, whose padding before an utterance depends on its "
                    f"total length (for a {lc.time_geometry().kernel}-frame kernel with stride "
                    f"{lc.time_geometry().stride}: L mod {lc.time_geometry().stride}), so a stream, which does not "
                    f"know the length yet, cannot place its first output frame as the offline encoder does. Use "
                    f"fixed alignment: padding 1 (one zero frame on each side, the default), 'valid', or "
                    f"'causal' (all padding before: no look-ahead)"
                )
        # The eval form, each norm folded into its conv: the norm's ops per chunk cost the
        # front-end stream about a tenth of its time at 100 ms chunks.
        layers = list(fold_batch_norms(self).branches[0].layers)
        stream = BatchedEncoderStream(layers, self.input_freq, self.input_channels,
                                      batch or 1, self.min_input_frames, self.config.too_short, self.flatten)
        return stream if batch is not None else EncoderStream(stream)


def fold_batch_norms(encoder: ConvEncoder) -> ConvEncoder:
    """An eval-form copy of ``encoder``: each batch norm folded into its conv.

    ``bn(conv(x)) = conv'(x)`` on running statistics
    (:meth:`speechconv.masking.MaskedBatchNorm.fold`), and each kernel's zero taps of
    asymmetric frequency padding (:class:`ConvLayer`) written into it, so the copy
    computes what the eval-mode ``encoder`` computes (up to float rounding) with plain
    convs: what ``torch.export`` and ONNX are given.  Training the copy raises;
    ``encoder`` is left as it is.
    """
    folded = copy.deepcopy(encoder).eval()
    for branch in folded.branches:
        for layer in branch.layers:
            conv = layer.conv
            weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
            if layer.norm is not None:
                weight, bias = layer.norm.fold(weight, bias)
            weight = nn.functional.pad(weight, layer.kernel_pad)  # (C', C, kT, kF) -> (C', C, kT, kF + taps)
            layer.conv = nn.Conv2d(conv.in_channels, conv.out_channels, tuple(weight.shape[2:]), conv.stride,
                                   bias=bias is not None).to(device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                layer.conv.weight.copy_(weight)
                if bias is not None:
                    layer.conv.bias.copy_(bias)
            layer.norm, layer.kernel_pad, layer.folded = None, (0, 0), True
    return folded


def export_program(encoder: ConvEncoder) -> torch.export.ExportedProgram:
    """``torch.export`` of ``encoder``'s eval form (:func:`fold_batch_norms`) with any
    batch size and length.

    Inputs ``features`` ``(B, T, F, C)`` float and ``lengths`` ``(B,)`` int64, outputs
    those of :meth:`ConvEncoder.forward`, for every ``B >= 1`` and ``T >= min_input_frames``
    (1 for the default; a batch padded to that many frames takes shorter utterances).  The
    program trusts its lengths (``0 <= lengths <= T``, and at least
    ``min_input_frames`` under ``too_short="error"``), which the eager encoder checks.
    Traced with torch's size-oblivious shape reasoning (``backed_size_oblivious``), so
    that the example's sizes are not special cases of the program, and with deferred
    runtime asserts instead of guards: the fake conv's choice of a CPU backend by batch
    size would otherwise guard ``B > 1``.  For ONNX, pass the program to
    ``torch.onnx.export(program, dynamo=True)``; onnxruntime's CPU provider runs it
    (tests/test_export.py).
    """
    folded = fold_batch_norms(encoder)
    param = next(folded.parameters())
    frames = max(folded.min_input_frames, 16)
    features = torch.zeros(2, frames, folded.input_freq, folded.input_channels, dtype=param.dtype, device=param.device)
    lengths = torch.tensor([frames, frames - 1], device=param.device)
    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("frames", min=folded.min_input_frames)
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        return torch.export.export(folded, (features, lengths), dynamic_shapes=({0: batch, 1: time}, {0: batch}),
                                   prefer_deferred_runtime_asserts_over_guards=True)
