"""Perturbations of training utterances, as speech recipes use them, seeded per utterance.

On the waveform ``(S,)``, in the order a recording would meet them:

1. **speed** (Ko et al. 2015, Kaldi's 0.9/1.0/1.1 recipe): ``torchaudio.functional.speed``
   resamples, so tempo, pitch and formants move together and the length changes
   (:func:`speechconv.shapes.speed_samples` gives it before any audio is made);
2. **reverberation**: convolution (``torchaudio.functional.fftconvolve``) with a
   synthetic room impulse response: a direct path, then Gaussian noise decaying by
   60 dB over ``rt60`` seconds (the statistical model of a diffuse tail) at a
   direct-to-reverberant ratio drawn from :data:`DRR_DB`; the output keeps the input's
   length;
3. **additive noise** at a signal-to-noise ratio drawn in ``snr_db``
   (``torchaudio.functional.add_noise``): a random stretch of a recorded noise clip
   (the bundled ``data/fixtures/noise_1000ms.wav`` by default, looped) or generated
   white, pink or brown noise (power spectrum ``1 / f^beta``, beta 0, 1, 2);
4. **gain**: the whole recording scaled by ``gain_db``.

On the features ``(T, F, C)``: **vocal-tract-length perturbation** (Jaitly and Hinton
2013): the frequency axis is scaled by a factor ``alpha`` drawn in
``[1 - vtlp, 1 + vtlp]``; feature bin ``k`` takes the value the unwarped features
have at ``f_k / alpha`` (``f_k`` its centre frequency on the config's mel scale),
interpolated linearly between bins and held at the edges.  Formants move as a
shorter or longer vocal tract would move them, the tempo does not.

Determinism: every random choice of an utterance comes from :meth:`Perturb.draw` on
its own generator seeded by ``(seed, epoch, index)``, never from global random state
(torchaudio's ``SpeedPerturbation`` and ``AddNoise`` transforms draw from the global
torch generator, which would make an item depend on which worker made it and when;
their functional forms used here take every value explicitly).  A :class:`Draw` is
cheap, so lengths after speed perturbation are known for bucketing up front.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

from speechconv import shapes
from speechconv.audio import load_audio
from speechconv.checks import bad, check_range
from speechconv.feature_config import FeatureConfig

NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
"""Exponent ``beta`` of each generated noise's ``1 / f^beta`` power spectrum."""
NOISE_KINDS = ("clip", *NOISE_COLOURS)
DRR_DB = (0.0, 15.0)
"""Direct-to-reverberant energy ratios drawn for the synthetic rooms, in dB (rooms
from reverberant halls to small offices, as measured RIR collections span)."""
RIR_MAX_S = 1.0
"""Longest impulse response generated (the tail is 60 dB down by ``rt60`` anyway)."""


def default_noise_clips() -> list[Path]:
    """The bundled noise recording: ``data/fixtures/noise_1000ms.wav`` (Speech Commands, CC BY 4.0)."""
    return [Path(__file__).resolve().parents[2] / "data" / "fixtures" / "noise_1000ms.wav"]


def load_noise_clips(paths: list[str | os.PathLike] | None, sample_rate: int) -> list[torch.Tensor]:
    """Noise recordings as ``(S,)`` float32 at ``sample_rate`` (``None``: the bundled clip)."""
    clips = [load_audio(p, sample_rate=sample_rate) for p in (paths if paths is not None else default_noise_clips())]
    return [c.to(torch.float32) for c in clips if bool(c.abs().max() > 0)]


@dataclass(frozen=True)
class Draw:
    """Every random choice of one utterance's perturbation.

    Attributes:
        speed: speed factor (1.0: unchanged).
        rt60: reverberation time in seconds (0: no reverberation).
        drr_db: direct-to-reverberant ratio of the room.
        noise: ``""`` (none), ``clip`` or a colour of :data:`NOISE_COLOURS`.
        snr_db: signal-to-noise ratio of the added noise.
        gain_db: gain of the whole recording.
        vtlp: frequency warping factor (1.0: none).
        seed: seeds the generated noise, the noise clip's offset and the room's tail.
    """

    speed: float = 1.0
    rt60: float = 0.0
    drr_db: float = 0.0
    noise: str = ""
    snr_db: float = 0.0
    gain_db: float = 0.0
    vtlp: float = 1.0
    seed: int = 0


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


@dataclass(frozen=True)
class Perturb:
    """The perturbation settings; each part is off at its neutral value.

    Attributes:
        speeds: speed factors, one drawn uniformly per utterance (``(1.0,)``: off).
        reverb_prob: probability of reverberation (0: off).
        rt60_s: ``(min, max)`` reverberation time in seconds.
        noise_prob: probability of additive noise (0: off).
        snr_db: ``(min, max)`` signal-to-noise ratio in dB.
        noise_kinds: what noise may be drawn: ``clip`` (a recording) and colours of
            :data:`NOISE_COLOURS`.
        gain_db: ``(min, max)`` gain in dB (``(0, 0)``: off).
        vtlp: frequency warping factors are uniform in ``[1 - vtlp, 1 + vtlp]`` (0: off).
    """

    speeds: tuple[float, ...] = (0.9, 1.0, 1.1)
    reverb_prob: float = 0.3
    rt60_s: tuple[float, float] = (0.1, 0.6)
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (0.0, 30.0)
    noise_kinds: tuple[str, ...] = NOISE_KINDS
    gain_db: tuple[float, float] = (-10.0, 10.0)
    vtlp: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "speeds", tuple(float(s) for s in self.speeds))
        object.__setattr__(self, "noise_kinds", tuple(self.noise_kinds))
        if not self.speeds or not all(0.5 <= s <= 2.0 for s in self.speeds):
            raise bad("data.augment.speeds", list(self.speeds), "factors in [0.5, 2.0]", "[1.0] turns it off")
        for key in ("reverb_prob", "noise_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise bad(f"data.augment.{key}", getattr(self, key), "a probability in [0, 1]")
        object.__setattr__(self, "rt60_s", check_range("data.augment.rt60_s", self.rt60_s, 0.01, RIR_MAX_S))
        object.__setattr__(self, "snr_db", check_range("data.augment.snr_db", self.snr_db, -20.0, 100.0))
        object.__setattr__(self, "gain_db", check_range("data.augment.gain_db", self.gain_db, -60.0, 40.0))
        unknown = [k for k in self.noise_kinds if k not in NOISE_KINDS]
        if unknown or (self.noise_prob > 0 and not self.noise_kinds):
            raise bad("data.augment.noise_kinds", list(self.noise_kinds), f"a non-empty list from {list(NOISE_KINDS)}")
        if not 0 <= self.vtlp < 0.5:
            raise bad("data.augment.vtlp", self.vtlp, "a warp width in [0, 0.5)", "0 turns it off")

    def draw(self, rng: np.random.Generator) -> Draw:
        """One utterance's choices, from its own generator (always the same number of draws,
        so that switching one part off leaves the others' values as they were)."""
        speed = self.speeds[int(rng.integers(len(self.speeds)))]
        reverb, rt60, drr = rng.random() < self.reverb_prob, _uniform(rng, self.rt60_s), _uniform(rng, DRR_DB)
        noisy, snr = rng.random() < self.noise_prob, _uniform(rng, self.snr_db)
        kind = self.noise_kinds[int(rng.integers(len(self.noise_kinds)))] if self.noise_kinds else ""
        gain = _uniform(rng, self.gain_db)
        vtlp = _uniform(rng, (1 - self.vtlp, 1 + self.vtlp))
        seed = int(rng.integers(2**63 - 1))
        return Draw(speed, rt60 if reverb else 0.0, drr, kind if noisy else "", snr, gain, vtlp, seed)

    @staticmethod
    def num_samples(num_samples: int, draw: Draw, sample_rate: int) -> int:
        """Samples of the perturbed waveform of ``num_samples`` samples (only speed changes it)."""
        return num_samples if draw.speed == 1.0 else shapes.speed_samples(num_samples, sample_rate, draw.speed)

    @staticmethod
    def waveform(wave: torch.Tensor, draw: Draw, sample_rate: int, noise_clips: list[torch.Tensor]) -> torch.Tensor:
        """Speed, reverberation, noise and gain of ``draw``: ``(S,)`` -> ``(S',)`` float32,
        ``S' = num_samples(S, draw, sample_rate)``.

        Runs on one intra-op thread: torch splits reductions (the energies behind the SNR,
        the room's normalisation) and FFTs by thread count, so one thread makes an item
        the same bits in a DataLoader worker and in the main process.
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return Perturb._waveform(wave, draw, sample_rate, noise_clips)
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def _waveform(wave: torch.Tensor, draw: Draw, sample_rate: int, noise_clips: list[torch.Tensor]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(draw.seed)
        if draw.speed != 1.0:
            wave, _ = AF.speed(wave, sample_rate, draw.speed)
        if draw.rt60 > 0:
            rir = synthetic_rir(draw.rt60, draw.drr_db, sample_rate, generator)
            n = wave.shape[0]
            # zeros up to a power-of-two transform (FFTs of sizes with large prime factors
            # are several times slower); the output is the same first S samples
            padded = torch.nn.functional.pad(wave, (0, _fft_size(n + rir.shape[0] - 1) - (n + rir.shape[0] - 1)))
            wave = AF.fftconvolve(padded, rir)[:n]  # (S' + R - 1,) -> (S,)
        if draw.noise and bool(wave.abs().max() > 0):
            if draw.noise == "clip":
                noise = noise_stretch(noise_clips, wave.shape[0], generator)
            else:
                noise = coloured_noise(wave.shape[0], NOISE_COLOURS[draw.noise], generator)
            wave = AF.add_noise(wave[None], noise[None], torch.tensor([draw.snr_db]))[0]  # (1, S) -> (S,)
        if draw.gain_db != 0.0:
            wave = wave * 10.0 ** (draw.gain_db / 20)
        return wave.to(torch.float32).contiguous()


def _fft_size(n: int) -> int:
    """The power of two at or above ``n``."""
    return 1 << max(0, (n - 1).bit_length())


def synthetic_rir(rt60: float, drr_db: float, sample_rate: int, generator: torch.Generator) -> torch.Tensor:
    """A room impulse response ``(R,)``: 1 at sample 0 (the direct path), then from 1 ms a
    Gaussian tail whose amplitude falls by 60 dB over ``rt60`` seconds, scaled so that the
    direct path carries ``drr_db`` dB more energy than the tail.  ``R`` spans ``rt60``
    (at most :data:`RIR_MAX_S`)."""
    length = max(2, round(min(rt60, RIR_MAX_S) * sample_rate))
    t = torch.arange(length, dtype=torch.float32) / sample_rate  # seconds
    tail = torch.randn(length, generator=generator) * torch.exp(-math.log(1000.0) * t / rt60)
    tail[: max(1, round(0.001 * sample_rate))] = 0.0
    tail = tail * math.sqrt(10.0 ** (-drr_db / 10) / float(tail.square().sum()))
    tail[0] = 1.0
    return tail


def coloured_noise(num_samples: int, beta: float, generator: torch.Generator) -> torch.Tensor:
    """``(S,)`` Gaussian noise with power spectrum ``1 / f^beta`` (0 white, 1 pink, 2 brown),
    zero mean, unit RMS: white noise shaped in the frequency domain (at a power-of-two
    length, then cut to ``S``)."""
    if beta == 0.0 or num_samples < 4:
        white = torch.randn(num_samples, generator=generator)
        return white / white.square().mean().sqrt().clamp_min(1e-12)
    n = _fft_size(num_samples)
    spectrum = torch.fft.rfft(torch.randn(n, generator=generator))  # (n // 2 + 1,)
    f = torch.arange(spectrum.shape[0], dtype=torch.float32)
    shape = f.clamp_min(1.0).pow(-beta / 2)
    shape[0] = 0.0  # no DC
    noise = torch.fft.irfft(spectrum * shape, n=n)[:num_samples]
    return noise / noise.square().mean().sqrt().clamp_min(1e-12)


def noise_stretch(clips: list[torch.Tensor], num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """``(S,)`` of a noise recording chosen with ``generator``, from a random offset, looped."""
    if not clips:
        raise ValueError("noise augmentation drew a recorded noise clip but none is loaded; set "
                         "data.augment.noise_clips or drop 'clip' from data.augment.noise_kinds")
    clip = clips[int(torch.randint(len(clips), (1,), generator=generator))]
    start = int(torch.randint(clip.shape[0], (1,), generator=generator))
    reps = -(-(start + num_samples) // clip.shape[0])
    return clip.repeat(reps)[start : start + num_samples]


# ----------------------------------------------------------------- features


def _hz_to_mel(hz: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + hz / 700.0)
    linear = hz / (200.0 / 3)  # Slaney: linear below 1 kHz, logarithmic above
    return torch.where(hz < 1000.0, linear, 15.0 + torch.log(hz.clamp_min(1e-6) / 1000.0) * (27.0 / math.log(6.4)))


def _mel_to_hz(mel: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    return torch.where(mel < 15.0, mel * (200.0 / 3), 1000.0 * torch.exp((mel - 15.0) * (math.log(6.4) / 27.0)))


@dataclass
class MelWarp:
    """Vocal-tract-length warping of one utterance's features on ``config``'s mel axis.

    ``MelWarp(config)(features, alpha)``: ``(T, F, C)`` -> ``(T, F, C)``; bin ``k`` takes
    the features at frequency ``f_k / alpha`` (module docstring).  Every channel is
    warped alike: deltas are linear in time, so warping them equals the deltas of the
    warped static features.
    """

    config: FeatureConfig
    _mels: torch.Tensor = field(init=False, repr=False)
    _centres: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        scale = self.config.mel_scale
        low = _hz_to_mel(torch.tensor(float(self.config.f_min)), scale)
        high = _hz_to_mel(torch.tensor(float(self.config.upper_hz)), scale)
        self._mels = torch.linspace(float(low), float(high), self.config.n_mels + 2, dtype=torch.float64)[1:-1]
        self._centres = _mel_to_hz(self._mels, scale)

    def __call__(self, features: torch.Tensor, alpha: float) -> torch.Tensor:
        """``(T, F, C)`` features -> warped ``(T, F, C)`` (a copy; ``alpha == 1``: unchanged)."""
        assert features.dim() == 3 and features.shape[1] == self.config.n_mels, (
            f"MelWarp takes one utterance (T, {self.config.n_mels}, C), got {tuple(features.shape)}"
        )
        if alpha == 1.0:
            return features
        source = _hz_to_mel(self._centres / alpha, self.config.mel_scale)  # (F,) mel of each bin's source
        step = self._mels[1] - self._mels[0] if len(self._mels) > 1 else torch.tensor(1.0, dtype=torch.float64)
        pos = ((source - self._mels[0]) / step).clamp(0, features.shape[1] - 1)  # fractional source bin
        lo = pos.floor().to(torch.int64)
        hi = (lo + 1).clamp_max(features.shape[1] - 1)
        w = (pos - lo).to(features.dtype)[None, :, None]  # (1, F, 1)
        return features[:, lo] * (1 - w) + features[:, hi] * w
