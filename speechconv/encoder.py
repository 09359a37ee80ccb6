"""`ConvEncoder`: strided 2-D conv front-end with exact lengths on padded batches.

The default is the front of Weiss et al. 2017: two conv layers of 32 filters, 3x3,
stride 2x2, TF SAME padding, batch norm and ReLU, turning ``(B, T, 80, 3)`` features
into ``(B, ceil(T/4), 20, 32)``.

Exactness on padded batches (every utterance gives the same frames alone and in any
batch, up to float rounding) comes from :mod:`speechconv.masking`:

* before every conv, each utterance's valid frames are copied into a zero buffer at
  its own SAME offset (padding before depends on ``L mod stride``), so no conv reads a
  padding frame and the conv itself runs with no time padding;
* batch norm in training takes its statistics over valid frames only (per-utterance
  reductions over each utterance's valid rows, no gather; a hand-written backward,
  with the ReLU fused in: :meth:`speechconv.masking.MaskedBatchNorm2d.forward_lengths`);
* every layer's output is zero past each utterance's output length (what forward
  hooks, e.g. the shape inspector's, see), and so is the encoder's.

Chained eval (eager, no autograd, batch norms on running statistics): each conv's
output is the next conv's padded input as it stands, and the batch runs in groups of
a few utterances whose buffers stay in cache (:meth:`ConvBranch._forward_chained`).

Placed outputs (eager mode): a layer followed by another writes its output straight
into the next conv's zero-padded input, each utterance at that conv's offset, instead
of returning it for the next layer to copy there (the training norm does it inside its
autograd Function, eval layers outside autograd; :class:`ConvBranch`).  Same values bit
for bit, one batch-sized tensor and two passes fewer per conv after the first: this is
what makes the masked encoder's training step as fast as a plain channels_last
``nn.Sequential`` (``bench/encoder.py``).  Layers with hooks (forward or backward, so
that the hooks see what they expect), activations other than ReLU or active dropout,
and TorchScript, run layer by layer.

Conv bias: a layer's conv has a bias only when the layer has no batch norm (the norm
subtracts the mean, which would cancel the bias).

Output length ``T'`` of the batch is the length formula applied to the padded ``T``
of the input (so the output shape depends on the input shape only); the lengths
follow :func:`speechconv.shapes.stack_out_length_tensor`.

In eval mode each batch norm is folded into its conv (same function, one pass less).
The convs run on channels_last tensors: ``(B, T, F, C)`` features permuted to
``(B, C, T, F)`` already have channels_last strides, and the output permuted back to
``(B, T', F', C')`` is contiguous again, so neither permute copies.
"""

from __future__ import annotations

import torch
from torch import nn

from speechconv import masking, shapes
from speechconv.encoder_config import EncoderConfig, LayerConfig, freq_geometries, time_geometries
from speechconv.layers import GatedMix, LearnedMix


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


def _split_padding(padding: shapes.Padding) -> tuple[bool, int]:
    """``"same"`` / ``"valid"`` / int -> ``(same, zeros per side)`` for the TorchScript forms."""
    if padding == "same":
        return True, 0
    if padding == "valid":
        return False, 0
    return False, int(padding)


def _time_formula(layers: list[LayerConfig]) -> str:
    """The output-length formula of a stack along time, e.g. ``ceil(ceil(T/2)/2)``."""
    expr = "T"
    for g in time_geometries(layers):
        if g.padding == "same":
            expr = f"ceil({expr}/{g.stride})"
        else:
            pad = 0 if g.padding == "valid" else 2 * int(g.padding)
            inner = f"{expr}{f' + {pad}' if pad else ''} - {g.kernel}"
            expr = f"floor(({inner})/{g.stride}) + 1"
    return expr


class MaskedConv2dLayer(nn.Module):
    """One encoder layer: per-utterance padding, conv, (masked) batch norm, activation,
    dropout.

    Attributes ``conv`` (``nn.Conv2d`` with no padding of its own; bias only without batch
    norm) and ``norm`` (:class:`speechconv.masking.MaskedBatchNorm2d` or None) carry all
    parameters.

    Shapes:
        ``forward(x, lengths)``: ``(B, C, T, F)`` and ``(B,)`` ->
        ``(B, C', T', F')`` (channels_last strides) and ``(B,)`` output lengths.  Frames
        past the output lengths are exactly zero; frames of ``x`` past ``lengths`` are
        never read, whatever they hold.

    In training, batch norm takes its statistics over the valid frames only and writes
    zeros on padding (a ReLU is fused into it; other activations and dropout keep zeros
    zero); in eval the norm is folded into the conv and padding is zeroed after the
    activation.
    """

    def __init__(self, lc: LayerConfig, in_channels: int, in_freq: int, index: str) -> None:
        super().__init__()
        tg, fg = lc.time_geometry(), lc.freq_geometry(in_freq)
        self.time_kernel, self.time_stride = tg.kernel, tg.stride
        self.time_same, self.time_pad = _split_padding(tg.padding)
        if fg.padding == "same":
            self.freq_before, self.freq_after = shapes.same_padding(in_freq, fg.kernel, fg.stride)
        else:
            pad = 0 if fg.padding == "valid" else int(fg.padding)
            self.freq_before, self.freq_after = pad, pad
        padded_freq = in_freq + self.freq_before + self.freq_after
        if fg.kernel > padded_freq:
            raise ValueError(
                f"encoder {index}: frequency kernel {fg.kernel} is larger than the {padded_freq} rows it sees "
                f"({in_freq} input rows + padding {fg.padding!r}); use a smaller kernel, 'same' padding or fewer "
                f"subsampling layers before it"
            )
        self.in_freq = in_freq
        self.out_freq = shapes.conv_out_length(in_freq, fg.kernel, fg.stride, fg.padding)
        assert self.out_freq == (padded_freq - fg.kernel) // fg.stride + 1, (
            f"encoder {index}: frequency padding {self.freq_before}+{self.freq_after} disagrees with shapes.py"
        )
        self.out_channels = lc.filters
        self.conv = nn.Conv2d(
            in_channels, lc.filters, (tg.kernel, fg.kernel), (tg.stride, fg.stride), padding=0,
            bias=not lc.batch_norm,
        )
        self.norm = masking.MaskedBatchNorm2d(lc.filters) if lc.batch_norm else None
        self.act = _activation(lc.activation)
        self.activation = lc.activation
        self.fuse_relu = lc.activation == "relu"
        self.dropout = nn.Dropout(lc.dropout) if lc.dropout > 0 else nn.Identity()

    def geometry(self, num_frames: int, lengths: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor, int]:
        """Time geometry of this layer for ``num_frames`` padded input frames and ``(B,)``
        ``lengths``: ``(T', out_lengths (B,), pad_before (B,), span)``, ``span`` the frames
        of the zero-padded conv input (:func:`speechconv.masking.pad_per_utterance`)."""
        k, s = self.time_kernel, self.time_stride
        out_time = shapes.conv_out_length_int(num_frames, k, s, self.time_same, self.time_pad)
        assert out_time > 0, f"a batch of {num_frames} frames gives no output; the encoder checks the minimum"
        out_lengths = shapes.conv_out_length_script(lengths, k, s, self.time_same, self.time_pad)
        if self.time_same:
            pad_before = shapes.same_pad_before_tensor(lengths, k, s)
        else:
            pad_before = torch.full_like(lengths, self.time_pad)
        return out_time, out_lengths, pad_before, shapes.conv_input_span(out_time, k, s)

    def pad_input(
        self, x: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[int, torch.Tensor, torch.Tensor, int]]:
        """``x`` ``(B, C, T, F)`` copied into this conv's zero-padded input
        ``(B, C, span, F_pad)`` (:func:`speechconv.masking.pad_per_utterance`), and the
        :meth:`geometry` it was placed by."""
        geometry = self.geometry(x.shape[2], lengths)
        _, _, pad_before, span = geometry
        return masking.pad_per_utterance(x, lengths, pad_before, span, self.freq_before, self.freq_after), geometry

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, C, T, F)``, ``lengths`` ``(B,)`` -> ``(B, C', T', F')``, ``(B,)``."""
        x, geometry = self.pad_input(x, lengths)
        out_lengths = geometry[1]
        return self.forward_padded(x, out_lengths, None), out_lengths

    def forward_padded(
        self, x: torch.Tensor, out_lengths: torch.Tensor, place: masking.Placement | None
    ) -> torch.Tensor:
        """Conv, norm, activation and dropout of an input already zero-padded for the conv.

        Args:
            x: ``(B, C, span, F_pad)`` from :func:`speechconv.masking.pad_per_utterance`
                (or written there by the layer before, see :class:`ConvBranch`).
            out_lengths: ``(B,)`` output lengths (:meth:`geometry`).
            place: None, or where the next conv wants this output
                (:data:`speechconv.masking.Placement`; only when :meth:`can_place_output`).

        Returns:
            ``(B, C', T', F')`` zero past ``out_lengths``, or with ``place`` the next conv's
            padded input ``(B, C', span', F_pad')``; channels_last strides.
        """
        norm = self.norm
        if self.batch_statistics():
            assert norm is not None
            y = self.conv(x)
            lens = torch.jit.annotate(list[int], out_lengths.tolist())
            # Statistics over valid frames by per-utterance reductions, output zero on
            # padding, the ReLU fused in; activation and dropout map zeros to zeros, so
            # padding stays zero.
            y = norm.forward_lengths(y, lens, self.fuse_relu, place)
            if not self.fuse_relu:
                y = self.act(y)
            return self.dropout(y)
        y = self.conv_folded(x)
        if place is not None:
            return masking.place_frames(y, torch.jit.annotate(list[int], out_lengths.tolist()), place, self.fuse_relu)
        y = self.dropout(self.act(y))
        if torch.is_grad_enabled() and y.requires_grad:
            y = masking.zero_padding(y, out_lengths)
        else:
            y = masking.zero_padding_(y, out_lengths)
        return y

    def batch_statistics(self) -> bool:
        """Whether the batch norm normalises by the batch's own statistics (training, or
        no running statistics kept), rather than being folded into the conv."""
        norm = self.norm
        return norm is not None and (self.training or not norm.track_running_stats)

    @torch.jit.unused
    def dropping(self) -> bool:
        """Whether the dropout is active, by its own flag (Monte Carlo dropout runs it in
        an eval-mode layer)."""
        return self.dropout.training and not isinstance(self.dropout, nn.Identity)

    def conv_folded(self, x: torch.Tensor) -> torch.Tensor:
        """The conv with the batch norm, if any, folded in (eval, running statistics):
        ``(B, C, span, F_pad)`` -> ``(B, C', T', F')``."""
        norm = self.norm
        if norm is not None:
            weight, bias = norm.fold(self.conv.weight, self.conv.bias)
            return nn.functional.conv2d(x, weight, bias, self.conv.stride)
        return self.conv(x)

    @torch.jit.unused
    def is_fixed_map(self) -> bool:
        """Whether the layer maps each input to one output whatever else is in the batch:
        its batch norm (if any) uses running statistics and its dropout is inactive.  Such
        layers can be chained (:meth:`ConvBranch._forward_chained`)."""
        return not self.batch_statistics() and not self.dropping()

    @torch.jit.unused
    def can_place_output(self) -> bool:
        """Whether :meth:`forward_padded` can write its output straight into the next
        conv's padded input: after the conv only ReLU (or nothing) and no active dropout,
        and either the training norm's autograd Function does the writing or no autograd
        is recording (eval: per-utterance slice writes)."""
        if self.activation not in ("relu", "none") or self.dropping():
            return False
        return self.batch_statistics() or not torch.is_grad_enabled()


def _hooked(module: nn.Module) -> bool:
    """Whether calling ``module`` runs hooks (forward or backward, on it or on one of its
    submodules, e.g. ``layer.act``, or global ones) that would see an input, an output or
    their gradients."""
    g = nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks \
            or g._global_backward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in module.modules())


class ConvBranch(nn.Module):
    """A stack of :class:`MaskedConv2dLayer` (one branch of the encoder).

    Three forwards: chained (eager, no autograd, every layer a fixed map:
    :meth:`_forward_chained`), placed (eager: :meth:`_forward_placed`) and layer by layer
    (hooks, TorchScript).  Placed and layer by layer give the same values bit for bit;
    chained runs its convs on other shapes, and agrees with them to float32 rounding.

    Shapes:
        ``forward(x, lengths)``: ``(B, C, T, F)``, ``(B,)`` -> ``(B, C', T', F')`` zero
        past each output length, and ``(B,)`` output lengths.
    """

    __jit_ignored_attributes__ = ["freq_sizes", "freq_offsets"]

    def __init__(self, layers: list[LayerConfig], in_channels: int, in_freq: int, name: str) -> None:
        super().__init__()
        mods = []
        for i, lc in enumerate(layers):
            mod = MaskedConv2dLayer(lc, in_channels, in_freq, f"{name}.{i}")
            mods.append(mod)
            in_channels, in_freq = mod.out_channels, mod.out_freq
        self.layers = nn.ModuleList(mods)
        self.out_channels, self.out_freq = in_channels, in_freq
        self.freq_sizes, self.freq_offsets = self._chain_frequency(mods)

    @staticmethod
    def _chain_frequency(mods: list[MaskedConv2dLayer]) -> tuple[list[int], list[int]]:
        """Each conv's chained buffer rows and data offset along frequency
        (:func:`speechconv.shapes.chained_sizes`, :func:`speechconv.shapes.chained_offsets`);
        empty lists when the first conv's input would have no data row (paddings wider
        than the kernels), where the chained path is not used."""
        last = mods[-1]
        last_span = last.freq_before + last.in_freq + last.freq_after
        strides = [m.conv.stride[1] for m in mods]
        sizes = shapes.chained_sizes([m.conv.kernel_size[1] for m in mods], strides, last_span)
        offsets = shapes.chained_offsets(strides, [m.freq_before for m in mods])
        if sizes[0] - offsets[0] < 1:
            return [], []
        return sizes, offsets

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, T, F)``, ``(B,)`` -> ``(B, C', T', F')``, ``(B,)``."""
        if not torch.jit.is_scripting():
            if x.shape[0] > 0 and self._can_chain():
                return self._forward_chained(x, lengths)
            return self._forward_placed(x, lengths)
        for layer in self.layers:
            x, lengths = layer(x, lengths)
        return x, lengths

    @torch.jit.unused
    def _forward_placed(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager forward: each layer that can (:meth:`MaskedConv2dLayer.can_place_output`)
        writes its output straight into the next conv's zero-padded input, instead of
        returning it for the next layer to copy there.  Same values as calling the layers
        in turn, bit for bit; one batch-sized tensor and two passes fewer per conv after
        the first.  A layer with hooks (forward or backward, its own or global, e.g. the
        shape inspector's) is called as a module, so the hooks see its usual input and
        output.

        ``(B, C, T, F)``, ``(B,)`` -> ``(B, C', T', F')``, ``(B,)``."""
        layers = list(self.layers)
        ready: tuple[int, torch.Tensor, torch.Tensor, int] | None = None  # x is layers[i]'s padded input
        for i, layer in enumerate(layers):
            if ready is None:
                if _hooked(layer):
                    x, lengths = layer(x, lengths)
                    continue
                x, geometry = layer.pad_input(x, lengths)
            else:
                geometry = ready
            out_time, out_lengths = geometry[0], geometry[1]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            ready, place = None, None
            if nxt is not None and not _hooked(nxt) and layer.can_place_output():
                ready = nxt.geometry(out_time, out_lengths)
                place = (ready[2].tolist(), ready[3], nxt.freq_before, nxt.freq_after)
            x = layer.forward_padded(x, out_lengths, place)
            lengths = out_lengths
        return x, lengths

    @torch.jit.unused
    def _can_chain(self) -> bool:
        """Whether :meth:`_forward_chained` applies: no autograd recording, every layer a
        fixed map (:meth:`MaskedConv2dLayer.is_fixed_map`) without hooks, and a frequency
        chain (:meth:`_chain_frequency`)."""
        return (not torch.is_grad_enabled() and bool(self.freq_sizes)
                and all(layer.is_fixed_map() and not _hooked(layer) for layer in self.layers))

    @torch.jit.unused
    def _forward_chained(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval forward with no copy between convs, in groups of consecutive utterances.

        Each conv's output, after the activation, *is* the next conv's padded input: the
        first conv's input buffer is made big enough, and each utterance placed far enough
        in, that every later buffer comes out of the conv before it with the data where
        the layer-by-layer path would copy it (:func:`speechconv.shapes.chained_sizes`,
        :func:`speechconv.shapes.chained_offsets`); all that is left between convs is to
        zero what valid outputs read outside the data (:func:`speechconv.masking.zero_margins_`).  The
        values of the layers called in turn, up to float32 rounding: oneDNN chooses its
        kernels, and so its summation order, by the shapes it is given, and these differ
        (tests/test_encoder.py; over 17,182 random configs, float32 within 1.3e-6 of outputs
        up to 2.1, float64 within 2.1e-15).

        Groups: the utterances run :data:`CHAIN_GROUP_ELEMENTS` conv-output elements at a
        time, each group cut to its own longest utterance, and are copied into the
        output.  A group's buffers then come back from the allocator's free lists and
        mostly stay in cache, where whole-batch buffers of tens of MB are fresh pages on
        every call (``bench/encoder.py``: eval 2-6x plain ``nn.Sequential``).

        ``(B, C, T, F)``, ``(B,)`` -> ``(B, C', T', F')``, ``(B,)``."""
        layers = list(self.layers)
        b_size, t_size = x.shape[0], x.shape[2]
        per_utterance, out_time = 0, t_size
        for layer, out_rows in zip(layers, self.freq_sizes[1:] + [self.out_freq], strict=True):
            out_time = shapes.conv_out_length_int(out_time, layer.time_kernel, layer.time_stride, layer.time_same,
                                                  layer.time_pad)
            per_utterance = max(per_utterance, layer.out_channels * out_time * out_rows)
        group = max(1, CHAIN_GROUP_ELEMENTS // max(per_utterance, 1))
        if group >= b_size and int(lengths.max()) == t_size:
            return self._chain_group(x, lengths)
        out = masking.conv_layout(x.new_empty(b_size, out_time, self.out_freq, self.out_channels))
        out_lengths = []
        for b0 in range(0, b_size, group):
            y, group_lengths = self._chain_group(x[b0 : b0 + group], lengths[b0 : b0 + group])
            t = y.shape[2]
            out[b0 : b0 + group, :, :t].copy_(y)
            out[b0 : b0 + group, :, t:].zero_()
            out_lengths.append(group_lengths)
        return out, torch.cat(out_lengths)

    @torch.jit.unused
    def _chain_group(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_forward_chained` of one group, cut to its longest utterance:
        ``(b, C, T, F)``, ``(b,)`` -> ``(b, C', T'', F')`` with ``T''`` the output frames
        of ``max(lengths)`` input frames, and ``(b,)`` output lengths."""
        layers = list(self.layers)
        num_frames = int(lengths.max())
        geometries, lens = [], lengths
        for layer in layers:
            geometries.append(layer.geometry(num_frames, lens))
            num_frames, lens = geometries[-1][0], geometries[-1][1]
        strides = [layer.time_stride for layer in layers]
        sizes = shapes.chained_sizes([layer.time_kernel for layer in layers], strides, geometries[-1][3])
        pads = [g[2].tolist() for g in geometries]
        offsets = [shapes.chained_offsets(strides, list(per_layer)) for per_layer in zip(*pads, strict=True)]  # [b][l]
        fq, fo = self.freq_sizes, self.freq_offsets
        keep = min(x.shape[3], fq[0] - fo[0])  # frequency rows of the input any output reads
        y = masking.place_frames(x[:, :, :, :keep], lengths.tolist(), ([o[0] for o in offsets], sizes[0], fo[0],
                                 fq[0] - fo[0] - keep), False)  # (b, C, sizes[0], fq[0])
        for i, layer in enumerate(layers):
            y = layer.act(layer.conv_folded(y))  # (b, C_i, size_i, fq_i) -> (b, C_i+1, size_i+1, fq_i+1)
            if i + 1 < len(layers):
                nxt = layers[i + 1]
                # Conv i+1's valid outputs read utterance b's frames from pads[i+1][b] before
                # its data on: zeros are needed up to the end of that span only (no valid
                # output reads what lies past it).
                ends = [o[i + 1] - pad + shapes.conv_input_span(n, nxt.time_kernel, nxt.time_stride)
                        for o, pad, n in zip(offsets, pads[i + 1], geometries[i + 1][1].tolist(), strict=True)]
                # (b, C', T', F') -> (b, T', F', C'): a view of channels_last output; a copy
                # after a single-channel input (contiguous strides in, NCHW out), so that
                # the next conv reads the layout of the layer-by-layer buffer, and rounds alike
                rows = y.permute(0, 2, 3, 1).contiguous()
                masking.zero_margins_(rows, [o[i + 1] for o in offsets], geometries[i][1].tolist(), fo[i + 1],
                                      layer.out_freq, ends)
                y = masking.conv_layout(rows)  # one channel: contiguous strides (oneDNN single-channel bug)
        return masking.zero_padding_(y, lens), lens


CHAIN_GROUP_ELEMENTS = 1_500_000
"""Largest conv output per group of :meth:`ConvBranch._forward_chained`, in elements
(6 MB of float32).  Measured on the default encoder, B=16, T=1000 (2.6 MB of first-conv
output per utterance; this budget makes groups of 2), 1 and 2 threads, both page sizes
of ``bench/encoder.py``: groups of 2 utterances ran as fast as or up to 1.3x faster than
groups of 1 or 3, and 1.8x (huge pages) to 2.9x (4 KB pages) faster than the whole
batch at once."""


class ConvEncoder(nn.Module):
    """Strided 2-D conv encoder over ``(B, T, F, C)`` features with exact lengths.

    Args:
        config: layers, optional second branch, fusion and too-short policy;
            None for the default (Weiss et al. 2017: 2 x [32 filters, 3x3, stride 2x2,
            SAME, batch norm, ReLU]).
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
    length is that of the minimum (at least one frame).

    Two branches (``config.branch``): both read the same input, are flattened to
    ``(B, T', D)`` and fused by ``LearnedMix`` (``fusion="mix"``) or ``GatedMix(D)``
    (``"gated"``); their ``T'`` formulas and ``D`` must agree (checked at construction).

    TorchScript: ``torch.jit.script(ConvEncoder(...))`` compiles ``forward``; the
    properties and :meth:`output_lengths` stay Python-only.
    """

    __jit_unused_properties__ = ["output_dim", "subsampling", "min_input_frames", "out_freq", "out_channels"]
    __jit_ignored_attributes__ = ["config"]

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
        self.too_short_pad = self.config.too_short == "pad"
        self.min_frames = max(shapes.stack_min_input(time_geometries(ls)) for ls in layer_lists)
        self.fusion: nn.Module | None = None
        if self.has_branch:
            self._check_branches_agree(layer_lists)
            dim = self.branches[0].out_freq * self.branches[0].out_channels
            self.fusion = LearnedMix() if self.config.fusion == "mix" else GatedMix(dim)

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
        if dims[0] != dims[1] or differ.numel() > 0:
            formulas = [_time_formula(ls) for ls in layer_lists]
            shapes_txt = [
                f"D = {br.out_freq}*{br.out_channels} = {d}, T' = {f}"
                for br, d, f in zip(self.branches, dims, formulas, strict=True)
            ]
            where = f"; they first differ at T={int(differ[0])}" if differ.numel() > 0 else ""
            raise ValueError(
                f"encoder branches must give the same (T', D) to be fused: layers give {shapes_txt[0]}; "
                f"branch gives {shapes_txt[1]}{where}. Change the branch's strides, frames, padding or filters "
                f"so both match"
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
        return self.out_freq * self.out_channels

    @property
    def subsampling(self) -> int:
        """Frames in per frame out along time (4 by default)."""
        return shapes.subsampling(time_geometries(self.config.layers))

    @property
    def min_input_frames(self) -> int:
        """Fewest input frames that give one output frame (max over branches)."""
        return self.min_frames

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """``(B,)`` input lengths -> ``(B,)`` output lengths, as ``forward`` returns them.

        Under ``too_short="pad"`` short lengths count as :attr:`min_input_frames`.
        """
        lengths = lengths.to(torch.int64)
        if self.too_short_pad:
            lengths = lengths.clamp(min=self.min_frames)
        return shapes.stack_out_length_tensor(lengths, time_geometries(self.config.layers))

    def freq_geometries(self) -> list[list[shapes.AxisGeometry]]:
        """Per branch, each layer's frequency geometry (for the shape inspector)."""
        return [freq_geometries(ls, self.input_freq) for ls in self.config.branches()]

    # ------------------------------------------------------------------------ forward

    def _check_input(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate ``(B, T, F, C)`` features and ``(B,)`` lengths; apply the too-short policy."""
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
        lengths = lengths.to(torch.int64)
        num_frames = features.shape[1]
        bad = torch.nonzero((lengths < 0) | (lengths > num_frames)).flatten()
        if bad.numel() > 0:
            i = int(bad[0])
            raise ValueError(
                f"ConvEncoder lengths[{i}]={int(lengths[i])} is outside [0, {num_frames}] (the padded T of features)"
            )
        short = torch.nonzero(lengths < self.min_frames).flatten()
        if short.numel() > 0:
            if not self.too_short_pad:
                i = int(short[0])
                raise ValueError(
                    f"utterance {i} of the batch has {int(lengths[i])} frames, but this encoder needs at least "
                    f"{self.min_frames} frames; drop or pad short utterances, or set encoder.too_short=pad"
                )
            # Frames past the old lengths may hold anything: zero them before they count.
            features = features * shapes.make_pad_mask(lengths, num_frames)[:, :, None, None].to(features.dtype)
            lengths = lengths.clamp(min=self.min_frames)
            if num_frames < self.min_frames:
                extra = self.min_frames - num_frames
                features = nn.functional.pad(features, (0, 0, 0, 0, 0, extra))  # (B, T, F, C) -> (B, T+e, F, C)
        return features, lengths

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features`` ``(B, T, F, C)``, ``lengths`` ``(B,)`` -> ``(B, T', F', C')`` or
        ``(B, T', D)``, and ``(B,)`` output lengths."""
        features, lengths = self._check_input(features, lengths)
        x = features.permute(0, 3, 1, 2)  # (B, T, F, C) -> (B, C, T, F), channels_last strides
        outs: list[torch.Tensor] = []
        out_lengths = lengths
        for branch in self.branches:
            y, out_lengths = branch(x, lengths)
            y = y.permute(0, 2, 3, 1)  # (B, C', T', F') -> (B, T', F', C')
            if self.flatten:
                y = y.reshape(y.shape[0], y.shape[1], -1)  # (B, T', F', C') -> (B, T', F' * C')
            outs.append(y)
        fusion = self.fusion
        if fusion is not None:
            return fusion(outs[0], outs[1]), out_lengths
        return outs[0], out_lengths
