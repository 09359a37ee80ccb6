"""Waveforms -> ``(B, T, F, C)`` log-mel + delta + delta-delta features, exact lengths.

:func:`log_mel_deltas` is the functional core; :class:`LogMelDeltas` holds the window,
the mel matrix and any global CMVN statistics as buffers and delegates to it.

The pipeline for a padded batch ``(B, S)`` with lengths ``(B,)``, run on groups of
consecutive utterances of at most :data:`GROUP_FRAMES` padded frames:

1. frames are cut from the batch as strided views (:func:`speechconv.fbank.window_frames`):
   in place for ``kaldi`` framing without dither, where no frame of an utterance reaches
   past its length, else from a copy with zeros beyond each utterance's length
   (``center`` framing, dither); either way an utterance gives the same features in
   any batch;
2. static log-mel ``(b, T, F)`` by the backend (``torchaudio``:
   :mod:`speechconv.fbank`; ``kaldi``: :mod:`speechconv.kaldi_fbank`), written into a
   buffer with room for the delta context; on CPU float32 tensors the per-frame passes
   around the FFT run as fused kernels (:mod:`speechconv.kernels`), on other devices as
   eager torch ops;
3. deltas and delta-deltas per utterance with its own edge frames replicated
   (:mod:`speechconv.deltas`); every channel is written straight into its slice of
   the ``(B, T, F, C)`` output, in ``config.channels`` order;
4. normalisation (:mod:`speechconv.cmvn`);
5. frames at or beyond each utterance's frame count are set to exactly zero.

Frame counts are :func:`speechconv.shapes.frames_from_samples_tensor`.  Audio shorter
than one window under ``kaldi`` framing (400 samples at the defaults) gives zero
frames: an empty ``(0, F, C)`` result with length 0, never an error here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from speechconv import cmvn, deltas, fbank, kaldi_fbank, shapes
from speechconv.feature_config import FeatureConfig
from speechconv.workspace import Workspace

__all__ = ["FeatureConfig", "LogMelDeltas", "log_mel_deltas", "as_feature_config"]


def as_feature_config(config: FeatureConfig | Mapping[str, Any] | None) -> FeatureConfig:
    """A :class:`FeatureConfig` from itself, a mapping of its fields (e.g. an OmegaConf
    ``DictConfig``), or ``None`` (the defaults)."""
    if config is None:
        return FeatureConfig()
    if isinstance(config, FeatureConfig):
        return config
    if isinstance(config, Mapping):
        names = {f.name for f in dataclasses.fields(FeatureConfig)}
        unknown = sorted(set(map(str, config.keys())) - names)
        if unknown:
            raise ValueError(f"unknown feature setting(s) {unknown}: expected keys from {sorted(names)}")
        return FeatureConfig(**{k: (list(v) if k == "channels" else v) for k, v in config.items()})
    raise TypeError(f"config must be a FeatureConfig, a mapping of its fields or None, got {type(config).__name__}")


def _check_backend(config: FeatureConfig) -> None:
    if config.backend == "kaldi" and (config.mel_scale != "htk" or config.mel_norm is not None):
        raise ValueError(
            f"features.backend='kaldi' computes Kaldi's HTK mel banks without normalisation, but "
            f"mel_scale={config.mel_scale!r}, mel_norm={config.mel_norm!r}; set mel_scale='htk' and "
            f"mel_norm=None, or use backend='torchaudio'"
        )


GROUP_FRAMES = 4096
"""Padded frames per group of consecutive utterances processed together.  A group's
temporaries are then a few MB (4096 x 80 float32 is 1.3 MB) and glibc reuses them from
its heap, where whole-batch temporaries above its mmap threshold (at most 32 MB) would
be mapped, page-faulted and unmapped on every op.  A longer utterance forms a group
of its own."""


def utterance_groups(frame_lengths: list[int], budget: int = GROUP_FRAMES) -> list[tuple[int, int]]:
    """Split a batch into runs ``[b0, b1)`` of consecutive utterances whose padded
    size ``(b1 - b0) * max(frames)`` stays within ``budget`` (one utterance at least)."""
    groups, b0, longest = [], 0, 0
    for b, n in enumerate(frame_lengths):
        widest = max(longest, n, 1)
        if b > b0 and (b - b0 + 1) * widest > budget:
            groups.append((b0, b))
            b0, widest = b, max(n, 1)
        longest = widest
    if frame_lengths:
        groups.append((b0, len(frame_lengths)))
    return groups


def _group_features(
    waveforms: torch.Tensor,
    lengths: torch.Tensor,
    frame_lengths: torch.Tensor,
    config: FeatureConfig,
    window: torch.Tensor,
    mel: torch.Tensor,
    global_stats: tuple[torch.Tensor, torch.Tensor] | None,
    plan: fbank.MelPlan | None,
    generator: torch.Generator | None,
    out: torch.Tensor,
    workspace: Workspace,
) -> None:
    """Features of one group written into ``out`` ``(b, T, F, C)`` (``T`` the group's longest).

    The statics are made straight into an edge buffer that the deltas read, and each
    channel's last operation writes into its strided slice of ``out``: no stacking.
    The edge buffer and the backend's work buffers come from ``workspace``.
    """
    T = out.shape[1]
    wanted = config.channels
    index = {name: c for c, name in enumerate(wanted)}
    want_dd = "delta_delta" in index
    P = deltas.context_frames(config.delta_window, config.order2, want_dd) if len(index.keys() - {"static"}) else 0
    extended = workspace.take("extended", (waveforms.shape[0], T + 2 * P, config.n_mels), waveforms)  # (b, T+2P, F)
    static = extended[:, P : P + T]
    backend = kaldi_fbank.kaldi_log_fbank if config.backend == "kaldi" else fbank.log_mel
    backend(waveforms, lengths, config, window, mel, plan, generator, out=static, workspace=workspace)  # (b, T, F)
    if "static" in index:
        out[..., index["static"]] = static
    if P:
        deltas.deltas_into(
            extended, frame_lengths, config.delta_window, config.order2,
            out[..., index["delta"]] if "delta" in index else None,
            out[..., index["delta_delta"]] if want_dd else None,
        )
    if config.normalization == "utterance":
        out.copy_(cmvn.utterance_cmvn(out, frame_lengths))
    elif config.normalization == "global":
        assert global_stats is not None, "normalization='global' needs the statistics"
        out.copy_(cmvn.global_cmvn(out, frame_lengths, *global_stats))


def log_mel_deltas(
    waveforms: torch.Tensor,
    lengths: torch.Tensor,
    config: FeatureConfig,
    window: torch.Tensor,
    mel: torch.Tensor,
    global_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    plan: fbank.MelPlan | None = None,
    generator: torch.Generator | None = None,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a padded batch (module docstring).

    Args:
        waveforms: ``(B, S)`` float32 in [-1, 1].
        lengths: ``(B,)`` int64 valid samples, each in ``[0, S]``.
        config: the feature settings.
        window: ``(win,)`` analysis window of the backend.
        mel: ``(n_fft//2 + 1, F)`` filterbank of the backend.
        global_stats: ``(mean, std)`` each ``(F, C)``, for ``normalization="global"``.
        plan: :func:`speechconv.fbank.mel_plan` of ``mel`` (``None``: one dense matmul, no kernel).
        generator: random source of the dither (``config.dither > 0`` only).
        workspace: work buffers kept between calls (:mod:`speechconv.workspace`;
            ``None``: fresh ones for this call).

    Returns:
        ``(features (B, T, F, C) float32, frame_lengths (B,) int64)`` with ``T`` the
        frame count of the longest utterance; frames ``t >= frame_lengths[b]`` are 0.
    """
    frame_lengths = shapes.frames_from_samples_tensor(lengths, config.win_length, config.hop_length, config.framing)
    B = lengths.shape[0]
    T = int(frame_lengths.max()) if B else 0
    features = waveforms.new_empty(B, T, config.n_mels, config.n_channels)
    sample_counts, frame_counts = lengths.tolist(), frame_lengths.tolist()
    workspace = workspace or Workspace()
    for b0, b1 in utterance_groups(frame_counts):
        t_group = max(frame_counts[b0:b1])
        if t_group == 0:
            continue
        s_group = max(sample_counts[b0:b1])
        _group_features(waveforms[b0:b1, :s_group], lengths[b0:b1], frame_lengths[b0:b1], config, window, mel,
                        global_stats, plan, generator, out=features[b0:b1, :t_group], workspace=workspace)
    for b, n in enumerate(frame_counts):
        if n < T:
            features[b, n:] = 0.0
    return features, frame_lengths


class LogMelDeltas(nn.Module):
    """``(B, S)`` waveforms -> ``(B, T, F, C)`` log-mel + deltas (the paper's T x 80 x 3).

    Args:
        config: a :class:`FeatureConfig`, a mapping of its fields, or ``None`` for the
            defaults (80 bins, 25/10 ms, ``kaldi`` framing, ``torchaudio`` backend,
            static + delta + delta-delta, no normalisation).

    Buffers: ``window`` ``(win,)``, ``mel_matrix`` ``(n_fft//2 + 1, F)`` and, with
    ``normalization="global"``, ``global_mean`` and ``global_std`` ``(F, C)`` read from
    ``config.global_stats_path``.  Work buffers (the FFT input, the statics with their
    delta context) are kept between calls in a :class:`speechconv.workspace.Workspace`,
    a few MB per thread that calls the module.
    """

    def __init__(self, config: FeatureConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config = as_feature_config(config)
        cfg = self.config
        _check_backend(cfg)
        if cfg.backend == "kaldi":
            window = kaldi_fbank.kaldi_window(cfg.window, cfg.win_length)
            mel = kaldi_fbank.kaldi_mel_banks(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.upper_hz)
        else:
            window, mel = fbank.hann_window(cfg.win_length), fbank.mel_matrix(cfg)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_matrix", mel, persistent=False)
        self.mel_plan = fbank.mel_plan(mel)
        self.workspace = Workspace()  # work buffers kept between calls, per thread
        mean = std = None
        if cfg.normalization == "global":
            mean, std = cmvn.load_global_stats(cfg.global_stats_path, cfg.n_mels, cfg.channels)
        # Persistent: a checkpoint of a model that holds this module carries its statistics.
        self.register_buffer("global_mean", mean)
        self.register_buffer("global_std", std)

    @property
    def output_size(self) -> tuple[int, int]:
        """``(F, C)`` of the features."""
        return self.config.n_mels, self.config.n_channels

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """``(B,)`` samples -> ``(B,)`` frames (:func:`speechconv.shapes.frames_from_samples_tensor`)."""
        return shapes.frames_from_samples_tensor(num_samples, self.config.win_length, self.config.hop_length,
                                                 self.config.framing)

    def forward(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of a batch, or of one waveform.

        Args:
            waveforms: ``(B, S)`` padded batch, or ``(S,)`` one utterance; float in [-1, 1].
            lengths: ``(B,)`` valid samples per utterance (``None``: all ``S``); for a
                1-D waveform ``None`` or a scalar.

        Returns:
            ``(features (B, T, F, C) float32, frame_lengths (B,) int64)``, or
            ``((T, F, C), scalar int64)`` for a 1-D waveform.  Frames beyond each
            utterance's frame count are exactly zero.
        """
        single = waveforms.dim() == 1
        if waveforms.dim() not in (1, 2):
            raise ValueError(f"waveforms must be (B, S) or (S,), got shape {tuple(waveforms.shape)}; "
                             f"mix channels to mono and stack utterances into a padded batch")
        if not (waveforms.is_floating_point()):
            raise ValueError(f"waveforms must be float in [-1, 1], got dtype {waveforms.dtype}; "
                             f"divide int16 audio by 32768 (speechconv.load_audio does this)")
        if waveforms.requires_grad and torch.is_grad_enabled():
            raise ValueError("waveforms require grad, but the feature stage computes no gradients; "
                             "pass waveforms.detach(), or call it under torch.no_grad()")
        device = self.mel_matrix.device
        batch = waveforms[None] if single else waveforms  # (S,) -> (1, S)
        batch = batch.to(device=device, dtype=torch.float32)
        B, S = batch.shape
        if lengths is None:
            lens = torch.full((B,), S, dtype=torch.int64, device=device)
        else:
            lens = torch.as_tensor(lengths, device=device).reshape(-1).to(torch.int64)
            if lens.shape != (B,) or bool(((lens < 0) | (lens > S)).any()):
                raise ValueError(f"lengths must be {B} sample counts in [0, {S}], got {lengths!r}; "
                                 f"pass each utterance's valid samples (or None for all)")
        stats = (self.global_mean, self.global_std) if self.global_mean is not None else None
        features, frame_lengths = log_mel_deltas(batch, lens, self.config, self.window, self.mel_matrix, stats,
                                                 self.mel_plan, workspace=self.workspace)
        if single:
            return features[0], frame_lengths[0]
        return features, frame_lengths

    def extra_repr(self) -> str:
        c = self.config
        return (f"backend={c.backend}, n_mels={c.n_mels}, win={c.win_length}, hop={c.hop_length}, "
                f"framing={c.framing}, channels={c.channels}, normalization={c.normalization}")


if __name__ == "__main__":
    from speechconv.extract_cli import main

    raise SystemExit(main())
