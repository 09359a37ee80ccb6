"""Work buffers that the feature stage keeps from one call to the next.

A call's large temporaries (the FFT input of its chunks, Kaldi's DC-removed frames, the
statics with their delta context) are a few MB.  Freed at the end of a call, they go
back to glibc, which, depending on what else the process allocated, may hand the pages
back to the kernel; the next call then page-faults them in again.  Measured in the
feature benchmark's interleaved rounds (10 s utterances, 2 threads, the other methods
run between): 900-6,000 minor faults per round of 10 minutes of audio with fresh
buffers, and 0-1,300 with the FFT input and the delta context buffer kept here (median
over six rounds: 13,700-13,800x real time fresh in two runs, 14,200-14,900x kept in
three).

Buffers are kept per thread, so a module may be called from several threads at once,
and only up to :data:`MAX_KEPT` elements each: an hour-long utterance's context buffer
is allocated for its call and freed after it, as before.
"""

from __future__ import annotations

import math
import threading

import torch

MAX_KEPT = 4 * 2**20
"""Largest buffer kept between calls, in elements (16 MB of float32)."""


class Workspace:
    """Named flat buffers reused from call to call, one set per thread.

    ``take(name, shape, like)`` returns a contiguous ``shape`` view of the buffer kept
    under ``name``, grown when too small and made anew on another device or dtype, or
    when it was made under ``torch.inference_mode`` and is taken outside it (torch
    forbids writing to an inference tensor there).  Its contents are whatever the last
    call left: callers write every element they read.
    A name is taken once per use; the next ``take`` of that name hands out the same
    memory.  Copies and pickles start empty (buffers are a cache, not state).
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def take(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        if numel > MAX_KEPT:
            return like.new_empty(shape)
        buffers = self._local.__dict__.setdefault("buffers", {})
        buffer = buffers.get(name)
        stale = buffer is None or buffer.dtype != like.dtype or buffer.device != like.device
        if stale or buffer.numel() < numel or (buffer.is_inference() and not torch.is_inference_mode_enabled()):
            buffer = buffers[name] = like.new_empty(numel)
        return buffer[:numel].view(shape)

    def __reduce__(self) -> tuple[type, tuple]:
        return Workspace, ()  # copy, deepcopy and pickle: a new, empty workspace
