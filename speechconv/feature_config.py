"""`FeatureConfig`: every setting of the feature stage, with the defaults and why.

Toolkits disagree on many small DSP conventions (torchaudio, librosa and Kaldi each
have other defaults), so each one is a named setting here.  Values are checked when
the config is made; a bad value raises :class:`speechconv.checks.ConfigError` (a
``ValueError``) naming the key, the value, the
allowed range and the fix.  Derived sizes (samples per window and hop, channels) are
properties, never settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from speechconv import shapes
from speechconv.checks import bad

CHANNELS = ("static", "delta", "delta_delta")
BACKENDS = ("torchaudio", "kaldi")
MEL_SCALES = ("htk", "slaney")
MEL_NORMS = (None, "slaney")
ORDER2_RULES = ("kaldi", "cascade")
NORMALIZATIONS = ("none", "utterance", "global")
FLT_EPSILON = 1.1920928955078125e-07
"""float32 machine epsilon: Kaldi's log floor (``log(max(x, FLT_EPSILON))``)."""


@dataclass
class FeatureConfig:
    """Settings of :class:`speechconv.LogMelDeltas`.

    Defaults are the paper's front-end (Weiss et al. 2017): 16 kHz audio, 80 log-mel
    bins from 25 ms windows every 10 ms, stacked with deltas and delta-deltas.

    Attributes:
        sample_rate: Hz of the waveforms given to the module (files are resampled to it).
        n_mels: mel bins ``F``.
        win_ms, hop_ms: window and hop in milliseconds (400 and 160 samples at 16 kHz).
        n_fft: FFT size; windows are zero-padded to it. Must be >= the window length.
        f_min, f_max: mel filterbank edges in Hz; ``f_max=None`` is Nyquist.  20 Hz is
            Kaldi's default low edge (nothing of speech lies below it).
        mel_scale: ``htk`` (``1127 ln(1 + f/700)``, Kaldi's and torchaudio's default) or
            ``slaney`` (librosa's default).
        mel_norm: ``None`` (triangles peak at 1, as Kaldi) or ``slaney`` (equal area).
        framing: ``kaldi`` (snip edges: ``T = 1 + (S - win) // hop``, frames start at
            sample 0) or ``center`` (``T = 1 + S // hop``, frames centred with zero
            padding, as torch.stft and librosa).  See :mod:`speechconv.shapes`.
        power: 2.0 power spectrum (Kaldi's default), 1.0 magnitude.
        log_floor: ``log(max(mel, log_floor))``; Kaldi's float32 epsilon by default.
        dither: Gaussian dither amplitude (Kaldi's units, int16 scale); 0 = off, which
            keeps features deterministic.
        delta_window: ``N`` of the regression ``d_t = sum_n n (c_{t+n} - c_{t-n}) /
            (2 sum n^2)`` (N=2: 5 taps, Kaldi's and HTK's), edge frames replicated.
        order2: second-order rule: ``kaldi`` (Kaldi's add-deltas, the 9-tap filter
            [4, 4, 1, -4, -10, -4, 1, 4, 4] / 100 on the static features) or
            ``cascade`` (delta of the delta, torchaudio's compute_deltas twice).  The two
            differ only within 4 frames of the edges.
        channels: which of ``static``, ``delta``, ``delta_delta`` to stack as ``C``.
        normalization: ``none`` (the default: the features as computed, the same bits
            alone, in any batch and streamed); ``utterance`` (per-bin mean and variance
            over each utterance's valid frames: needs the whole utterance, so it cannot
            stream, and its sums follow the batch's padded length, so batched equals
            alone only to float rounding); ``global`` (statistics from
            :func:`speechconv.compute_global_stats`, loaded from ``global_stats_path``;
            streams exactly).
        backend: ``torchaudio`` (torchaudio's mel filterbank and deltas, batched) or
            ``kaldi`` (numerically Kaldi's compute-fbank-feats + add-deltas).
        preemphasis, remove_dc_offset, window: framing details of the ``kaldi``
            backend (Kaldi's defaults); the ``torchaudio`` backend uses a Hann window
            and neither pre-emphasis nor DC removal.
        kaldi_int16_scale: the ``kaldi`` backend multiplies [-1, 1] waveforms by 32768
            first, as Kaldi reads WAV files as int16 values; this only shifts log
            energies by ``2 ln 32768`` (power) but makes the numbers match Kaldi's.
    """

    sample_rate: int = 16000
    n_mels: int = 80
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    f_min: float = 20.0
    f_max: float | None = None
    mel_scale: str = "htk"
    mel_norm: str | None = None
    framing: str = "kaldi"
    power: float = 2.0
    log_floor: float = FLT_EPSILON
    dither: float = 0.0
    delta_window: int = 2
    order2: str = "kaldi"
    channels: list[str] = field(default_factory=lambda: list(CHANNELS))
    normalization: str = "none"
    global_stats_path: str | None = None
    backend: str = "torchaudio"
    preemphasis: float = 0.97
    remove_dc_offset: bool = True
    window: str = "povey"
    kaldi_int16_scale: bool = True

    def __post_init__(self) -> None:
        self.channels = list(self.channels)
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def win_length(self) -> int:
        """Samples per window (400 at 16 kHz, 25 ms)."""
        return round(self.sample_rate * self.win_ms / 1000)

    @property
    def hop_length(self) -> int:
        """Samples per hop (160 at 16 kHz, 10 ms)."""
        return round(self.sample_rate * self.hop_ms / 1000)

    @property
    def n_channels(self) -> int:
        """``C`` of the features (3 by default)."""
        return len(self.channels)

    @property
    def nyquist(self) -> float:
        return self.sample_rate / 2

    @property
    def upper_hz(self) -> float:
        """The filterbank's upper edge in Hz."""
        return self.nyquist if self.f_max is None else float(self.f_max)

    def num_frames(self, num_samples: int) -> int:
        """``T`` for ``num_samples`` samples (:func:`speechconv.shapes.frames_from_samples`)."""
        return shapes.frames_from_samples(num_samples, self.win_length, self.hop_length, self.framing)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`~speechconv.checks.ConfigError` naming the first bad key, its allowed range and the fix."""
        if not isinstance(self.sample_rate, int) or self.sample_rate < 1000:
            raise bad("features.sample_rate", self.sample_rate, "an int >= 1000 Hz")
        if self.win_ms <= 0 or self.hop_ms <= 0:
            raise bad("features.win_ms/hop_ms", (self.win_ms, self.hop_ms), "positive milliseconds")
        if self.win_length < 2 or self.hop_length < 1:
            raise bad("features.win_ms", self.win_ms, "a window of at least 2 samples at this sample_rate")
        if self.n_fft < self.win_length:
            raise bad("features.n_fft", self.n_fft, f">= the window length {self.win_length} samples",
                       "raise n_fft or shorten win_ms")
        n_bins = self.n_fft // 2 + 1
        if not isinstance(self.n_mels, int) or not 1 <= self.n_mels <= n_bins:
            raise bad("features.n_mels", self.n_mels, f"an int in [1, n_fft/2+1 = {n_bins}]",
                       "lower n_mels or raise n_fft")
        if not 0 <= self.f_min < self.upper_hz <= self.nyquist:
            raise bad("features.f_min/f_max", (self.f_min, self.f_max),
                       f"0 <= f_min < f_max <= Nyquist ({self.nyquist:g} Hz)")
        if self.mel_scale not in MEL_SCALES:
            raise bad("features.mel_scale", self.mel_scale, f"one of {MEL_SCALES}")
        if self.mel_norm not in MEL_NORMS:
            raise bad("features.mel_norm", self.mel_norm, f"one of {MEL_NORMS}")
        if self.framing not in shapes.FRAMINGS:
            raise bad("features.framing", self.framing, f"one of {shapes.FRAMINGS}")
        if self.power not in (1.0, 2.0):
            raise bad("features.power", self.power, "1.0 (magnitude) or 2.0 (power)")
        if not self.log_floor > 0:
            raise bad("features.log_floor", self.log_floor, "a positive float")
        if self.dither < 0:
            raise bad("features.dither", self.dither, "a float >= 0")
        if not isinstance(self.delta_window, int) or self.delta_window < 1:
            raise bad("features.delta_window", self.delta_window, "an int >= 1")
        if self.order2 not in ORDER2_RULES:
            raise bad("features.order2", self.order2, f"one of {ORDER2_RULES}")
        if self.order2 == "kaldi" and self.delta_window != 2 and "delta_delta" in self.channels:
            raise bad("features.order2", self.order2, "'cascade' when delta_window != 2",
                       "Kaldi's 9-tap second-order filter is defined for delta_window=2 only")
        if not self.channels or any(c not in CHANNELS for c in self.channels) or len(set(self.channels)) != len(
            self.channels
        ):
            raise bad("features.channels", self.channels, f"a non-empty list of distinct names from {CHANNELS}")
        if self.normalization not in NORMALIZATIONS:
            raise bad("features.normalization", self.normalization, f"one of {NORMALIZATIONS}")
        if self.normalization == "global" and not self.global_stats_path:
            raise bad("features.global_stats_path", self.global_stats_path, "a stats file path with normalization='global'",
                       "compute one with speechconv.compute_global_stats")
        if self.backend not in BACKENDS:
            raise bad("features.backend", self.backend, f"one of {BACKENDS}")
        if not 0 <= self.preemphasis < 1:
            raise bad("features.preemphasis", self.preemphasis, "a float in [0, 1)")
        if self.window not in ("povey", "hann", "hamming"):
            raise bad("features.window", self.window, "one of ('povey', 'hann', 'hamming')")
