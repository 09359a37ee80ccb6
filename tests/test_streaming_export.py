"""The feature stream's step exported to ONNX: onnxruntime fed chunk by chunk gives the
offline eager features.

One export (2 streams, 100 ms chunks); two real clips of different lengths streamed side
by side, the shorter one ending (a call with ``final``) while the other goes on.  Bound:
1e-3 absolute in the log domain (the issue's), against offline eager; onnxruntime's FFT
and reductions round otherwise than torch's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from speechconv.audio import load_audio
from speechconv.features import LogMelDeltas
from speechconv.streaming.step import STATE_NAMES, FeatureStep, export_feature_step

ATOL = 1e-3
CHUNK = 1600


@pytest.mark.slow
def test_onnx_feature_step_streams_the_offline_features(tmp_path, speech_clips):
    features = LogMelDeltas().eval()
    path = export_feature_step(features, tmp_path / "step.onnx", CHUNK, batch=2)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["chunk", "lengths", "final", *STATE_NAMES]
    clips = {p.name: p for p in speech_clips}
    waves = [load_audio(clips["yes_1000ms.wav"]), load_audio(clips["yes_1000ms.wav"])[:9123]]
    state = [s.numpy() for s in FeatureStep(features).initial_state(2)]
    got: list[list[np.ndarray]] = [[], []]
    done = [False, False]
    start = 0
    while not all(done):
        chunk = np.zeros((2, CHUNK), dtype=np.float32)
        lengths = np.zeros(2, dtype=np.int64)
        final = np.zeros(2, dtype=bool)
        for b, wave in enumerate(waves):
            if not done[b]:
                piece = wave[start : start + CHUNK].numpy()
                chunk[b, : piece.size], lengths[b] = piece, piece.size
                final[b] = start + CHUNK >= wave.numel()
        frames, counts, *state = session.run(None, dict(zip(names, [chunk, lengths, final, *state], strict=True)))
        for b in range(2):
            got[b].append(frames[b, : counts[b]])
            done[b] = done[b] or bool(final[b])
        start += CHUNK
    for b, wave in enumerate(waves):
        streamed, (want, n) = np.concatenate(got[b]), features(wave)
        assert streamed.shape == tuple(want.shape) and int(n) == want.shape[0]
        np.testing.assert_allclose(streamed, want.numpy(), rtol=0, atol=ATOL)
        print(f"\nONNX step vs offline eager, clip {b}: {want.shape[0]} frames, largest difference "
              f"{np.abs(streamed - want.numpy()).max():.1e}")
    # the eager module is the stream itself: equal to offline bit for bit
    step = FeatureStep(features)
    state = step.initial_state(1)
    wave = waves[1]
    out = []
    for i in range(0, wave.numel(), CHUNK):
        piece = wave[None, i : i + CHUNK]
        final = torch.tensor([i + CHUNK >= wave.numel()])
        frames, counts, *state = step(piece, torch.tensor([piece.shape[1]]), final, *state)
        out.append(frames[0, : int(counts[0])])
    assert torch.equal(torch.cat(out), features(wave)[0])
