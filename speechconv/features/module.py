"""``LogMelDeltas``: the feature stage as a module (``(B, S)`` waveforms -> ``(B, T, F, C)``).

It holds the settings, the window, the mel matrix and any global CMVN statistics as
buffers, and delegates to :func:`speechconv.features.pipeline.log_mel_deltas`
(offline) or :class:`speechconv.features.stream.FeatureStream` (chunk by chunk).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from speechconv import shapes
from speechconv.feature_config import FeatureConfig
from speechconv.features import cmvn, fbank, kaldi
from speechconv.features.pipeline import log_mel_deltas
from speechconv.features.stream import FeatureStream

DFT_FORMS = ("fft", "matrix")


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


class LogMelDeltas(nn.Module):
    """``(B, S)`` waveforms -> ``(B, T, F, C)`` log-mel + deltas (the paper's T x 80 x 3).

    Args:
        config: a :class:`FeatureConfig`, a mapping of its fields, or ``None`` for the
            defaults (80 bins, 25/10 ms, ``kaldi`` framing, ``torchaudio`` backend,
            static + delta + delta-delta, no normalisation).
        dft: how the spectrum is computed: ``"fft"`` (``torch.fft.rfft``; ONNX's DFT
            operator when exported) or ``"matrix"`` (a product with a fixed cos/sin
            basis, :func:`speechconv.features.fbank.dft_basis`): the same features up to
            float32 rounding, in a graph without an FFT operator, for runtimes that have
            none (executorch's portable runtime).  It is slower; use it for such exports.

    Buffers: ``window`` ``(win,)`` float64, ``mel_matrix`` ``(n_fft//2 + 1, F)``, ``dft_basis``
    ``(n_fft, n_fft + 2)`` float64 with ``dft="matrix"``, and with ``normalization="global"``,
    ``global_mean`` and ``global_std`` ``(F, C)`` read from ``config.global_stats_path``.

    Exports with ``torch.export`` and ``torch.onnx.export(dynamo=True)`` with a dynamic
    batch and length: an exported graph takes batches of at least two frames
    (torch.export specialises sizes 0 and 1: ``S >= win + hop`` with ``kaldi`` framing),
    and does not check ``lengths`` (eager calls raise for lengths outside ``[0, S]``).
    """

    def __init__(self, config: FeatureConfig | Mapping[str, Any] | None = None, dft: str = "fft") -> None:
        super().__init__()
        self.config = cfg = as_feature_config(config)
        if cfg.backend == "kaldi" and (cfg.mel_scale != "htk" or cfg.mel_norm is not None):
            raise ValueError(
                f"features.backend='kaldi' computes Kaldi's HTK mel banks without normalisation, but "
                f"mel_scale={cfg.mel_scale!r}, mel_norm={cfg.mel_norm!r}; set mel_scale='htk' and "
                f"mel_norm=None, or use backend='torchaudio'"
            )
        if dft not in DFT_FORMS:
            raise ValueError(f"dft={dft!r} is invalid: expected one of {DFT_FORMS}; 'matrix' makes a graph "
                             f"without an FFT operator, 'fft' is the fast default")
        if cfg.backend == "kaldi":
            window = kaldi.kaldi_window(cfg.window, cfg.win_length, cfg.kaldi_int16_scale)
            mel = kaldi.kaldi_mel_banks(cfg.n_mels, cfg.n_fft, cfg.sample_rate, cfg.f_min, cfg.upper_hz)
        else:
            window, mel = fbank.hann_window(cfg.win_length), fbank.mel_matrix(cfg)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_matrix", mel, persistent=False)
        self.register_buffer("dft_basis", fbank.dft_basis(cfg.n_fft) if dft == "matrix" else None, persistent=False)
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

    @property
    def global_stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(mean, std)`` ``(F, C)`` with global normalisation, else ``None``."""
        return None if self.global_mean is None else (self.global_mean, self.global_std)

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        """``(B,)`` samples -> ``(B,)`` frames (:func:`speechconv.shapes.frames_from_samples_tensor`)."""
        return shapes.frames_from_samples_tensor(num_samples, self.config.win_length, self.config.hop_length,
                                                 self.config.framing)

    def streaming(self, batch_size: int | None = None) -> FeatureStream:
        """A :class:`speechconv.features.stream.FeatureStream` with this module's settings
        and buffers: one stream (``batch_size=None``: ``accept((S,)) -> (t, F, C)``) or
        ``batch_size`` independent ones (``accept((B, S), lengths) -> [(t_b, F, C)] * B``).
        Raises ``ValueError`` for settings that cannot stream (utterance normalisation, dither)."""
        return FeatureStream(self, batch_size)

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
        if waveforms.dim() not in (1, 2):
            raise ValueError(f"waveforms must be (B, S) or (S,), got shape {tuple(waveforms.shape)}; "
                             f"mix channels to mono and stack utterances into a padded batch")
        if not waveforms.is_floating_point():
            raise ValueError(f"waveforms must be float in [-1, 1], got dtype {waveforms.dtype}; "
                             f"divide int16 audio by 32768 (speechconv.load_audio does this)")
        if waveforms.requires_grad and torch.is_grad_enabled():
            raise ValueError("waveforms require grad, but the feature stage computes no gradients; "
                             "pass waveforms.detach(), or call it under torch.no_grad()")
        single = waveforms.dim() == 1
        device = self.mel_matrix.device
        batch = (waveforms[None] if single else waveforms).to(device=device, dtype=torch.float32)  # (S,) -> (1, S)
        B, S = batch.shape
        if lengths is None:
            lens = torch.full((B,), S, dtype=torch.int64, device=device)
        else:
            lens = torch.as_tensor(lengths, device=device).reshape(-1).to(torch.int64)
            if lens.shape != (B,) or (not torch.compiler.is_compiling() and bool(((lens < 0) | (lens > S)).any())):
                raise ValueError(f"lengths must be {B} sample counts in [0, {S}], got {lengths!r}; "
                                 f"pass each utterance's valid samples (or None for all)")
        features, frame_lengths = log_mel_deltas(batch, lens, self.config, self.window, self.mel_matrix,
                                                 self.global_stats, self.dft_basis)
        if single:
            return features[0], frame_lengths[0]
        return features, frame_lengths

    def extra_repr(self) -> str:
        c = self.config
        return (f"backend={c.backend}, n_mels={c.n_mels}, win={c.win_length}, hop={c.hop_length}, "
                f"framing={c.framing}, channels={c.channels}, normalization={c.normalization}")
