"""The feature stage's kept work buffers: reused between calls, never shared between
threads or copies, and invisible in the features."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch

from speechconv import FeatureConfig
from speechconv.features import LogMelDeltas
from speechconv.workspace import MAX_KEPT, Workspace


def test_take_reuses_grows_and_keeps_only_small_buffers():
    ws = Workspace()
    like = torch.empty(0)
    a = ws.take("x", (3, 4), like)
    b = ws.take("x", (2, 5), like)
    assert a.data_ptr() == b.data_ptr() and b.shape == (2, 5) and b.is_contiguous()
    c = ws.take("x", (10, 10), like)  # larger: a new buffer, kept from now on
    assert ws.take("x", (3, 4), like).data_ptr() == c.data_ptr()
    assert ws.take("y", (3, 4), like).data_ptr() != c.data_ptr()
    assert ws.take("x", (3, 4), torch.empty(0, dtype=torch.float64)).dtype == torch.float64
    big = ws.take("x", (MAX_KEPT + 1,), like)
    assert ws.take("x", (MAX_KEPT + 1,), like).data_ptr() != big.data_ptr() or big.numel() == 0


def test_threads_and_copies_get_their_own_buffers():
    ws = Workspace()
    like = torch.empty(0)
    mine = ws.take("x", (100,), like).data_ptr()
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(ws.take("x", (100,), like).data_ptr()))
    thread.start()
    thread.join()
    assert theirs[0] != mine
    for other in (copy.deepcopy(ws), copy.copy(ws), pickle.loads(pickle.dumps(ws))):
        assert other.take("x", (100,), like).data_ptr() != mine


def test_features_are_the_same_with_kept_buffers_and_in_parallel_threads():
    """Each call writes every element it reads, whatever the last call of another shape
    left in the buffers; threads calling one module at once get their own buffers."""
    gen = torch.Generator().manual_seed(3)
    batches = [(torch.randn(len(lengths), max(lengths), generator=gen) * 0.3, torch.tensor(lengths))
               for lengths in ([48000, 30000], [160000], [16000, 800, 400, 9999], [48000, 30000])]
    for backend in ("torchaudio", "kaldi"):
        module = LogMelDeltas(FeatureConfig(backend=backend))
        fresh = [LogMelDeltas(FeatureConfig(backend=backend))(*batch)[0] for batch in batches]
        kept = [module(*batch)[0] for batch in batches]  # one module: buffers kept across shapes
        assert all(torch.equal(a, b) for a, b in zip(fresh, kept, strict=True))
        results: dict[int, list[torch.Tensor]] = {}

        def work(i: int, module=module, results=results) -> None:
            results[i] = [module(*batch)[0] for batch in batches * 3]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for outs in results.values():
            assert all(torch.equal(a, b) for a, b in zip(outs, fresh * 3, strict=True))
        clone = pickle.loads(pickle.dumps(module))
        assert torch.equal(clone(*batches[0])[0], fresh[0])


@pytest.mark.parametrize("backend", ["kaldi", "torchaudio"])
def test_buffers_made_in_inference_mode_do_not_break_a_later_normal_call(backend):
    """Buffers made under inference_mode are inference tensors, which torch does not let
    a normal call write to: the module must replace them, not fail."""
    module = LogMelDeltas(FeatureConfig(backend=backend))
    wave = torch.randn(16000) * 0.1
    with torch.inference_mode():
        inside, _ = module(wave)
    outside, _ = module(wave)
    with torch.no_grad():
        again, _ = module(wave)
    assert torch.equal(inside, outside) and torch.equal(outside, again)
