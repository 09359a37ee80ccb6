"""``mode=shapes``: the inspector's table for the composed config, checked by a real forward pass."""

from __future__ import annotations

from pathlib import Path

import torch

from speechconv.config import Config
from speechconv.training.runlog import say

DEFAULT_AUDIO = Path(__file__).resolve().parents[2] / "data" / "fixtures" / "yes_1000ms.wav"


def run_shapes(cfg: Config) -> int:
    """Print the conv encoder's layer table for the sample clip and compare it with a real
    forward pass (and, for ``encoder.type=weiss2017`` or any model, the whole model's
    output length against :mod:`speechconv.shapes`).  Returns 1 on any mismatch."""
    from speechconv.audio import load_audio
    from speechconv.features import LogMelDeltas
    from speechconv.inspector import check_against_forward
    from speechconv.models import build_encoder

    audio = Path(cfg.shapes_audio) if cfg.shapes_audio else DEFAULT_AUDIO
    wave = load_audio(audio, sample_rate=cfg.features.sample_rate)
    report = check_against_forward((cfg.features, cfg.encoder.conv_config()), audio=audio, raise_on_mismatch=False)
    say(f"features: {cfg.features.n_mels} mel bins x {cfg.features.n_channels} channels "
        f"({', '.join(cfg.features.channels)}), {cfg.features.win_ms:g} ms windows every {cfg.features.hop_ms:g} ms; "
        f"audio {audio}")
    say(report.format())
    ok = report.ok
    encoder = build_encoder(cfg.encoder, cfg.features).eval()
    features, length = LogMelDeltas(cfg.features).eval()(wave)  # (S,) -> (T, F, C)
    with torch.no_grad():
        out, out_lengths = encoder(features[None], length.reshape(1))  # (T, F, C) -> (1, T, F, C)
    expected = int(encoder.output_lengths(length.reshape(1))[0])
    n_params = sum(p.numel() for p in encoder.parameters())
    say(f"{cfg.encoder.type} encoder as the model uses it (flattened): (1, {features.shape[0]}, "
        f"{features.shape[1]}, {features.shape[2]}) -> {tuple(out.shape)}, output_dim {encoder.output_dim}, "
        f"{n_params:,} parameters; output length {int(out_lengths[0])} (formula {expected})")
    if int(out_lengths[0]) != expected or out.shape[1] != expected or out.shape[-1] != encoder.output_dim:
        say("MISMATCH: the encoder's output disagrees with its length formula or output_dim")
        ok = False
    return 0 if ok else 1
