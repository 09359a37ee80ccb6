"""Checkpoints: one ``torch.save``d dict of plain values, written atomically, loaded safely.

Contents (every value a tensor, dict, list, str, int, float, bool or None, so that
``torch.load(weights_only=True)`` reads it without running any pickled code):

``model``       the model's ``state_dict``.
``config``      the resolved :class:`speechconv.config.Config` as a plain dict.
``vocab``       :meth:`CharVocabulary.to_dict`.
``optimizer``, ``scheduler``  their ``state_dict``s.
``rng``         torch (CPU, and CUDA when used), numpy and python random states.
``rank_rng``    under DDP: every rank's ``rng``, in rank order (dropout differs per rank).
``sampler``     the batch sampler's ``state_dict`` (epoch, batches consumed).
``step``        optimiser steps taken.
``metrics``     the history of validation metrics and the last training metrics.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speechconv.atomic import atomic_path
from speechconv.config import Config, config_from_dict
from speechconv.text import CharVocabulary

CHECKPOINT_KEYS = ("model", "config", "vocab", "step")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or lacks what is needed; the message names the file."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (a crash leaves the previous file, never a torn one).

    The state is serialised in memory and written with one plain ``write``, so a full
    disk raises ``OSError(ENOSPC)`` (``torch.save`` straight into a file reports it as
    an opaque ``RuntimeError``); the temporary file is removed and ``path`` is untouched.
    """
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    assert not missing, f"checkpoint state lacks {missing}"
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buf.getbuffer())
    return Path(path)


WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
"""How ``torch.load(weights_only=True)`` starts its error, for a refused global and for
bytes it cannot parse alike; a refused global is named on a line with ``GLOBAL``."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refused_global(exc: BaseException) -> str | None:
    """The line of torch's weights-only refusal that names a global it would not import
    (``Unsupported global: GLOBAL numpy.random...``), or None for any other failure."""
    if not str(exc).startswith(WEIGHTS_ONLY_REFUSAL):
        return None
    return next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated or corrupt, not a speechconv
            checkpoint, or lacks one of :data:`CHECKPOINT_KEYS`; or it holds pickled
            objects beyond tensors and plain values (refused unread: unpickling them
            would run code).  The message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist; pass the last.pt of a finished run")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as exc:
        refused = _refused_global(exc)
        if refused:
            raise CheckpointError(
                f"checkpoint {p} was refused: it holds pickled objects that only running code could rebuild "
                f"({refused}), where speechconv checkpoints hold tensors and plain values only. It was "
                f"not written by speechconv's train.py, or it was altered; nothing in it was run. Do not load it "
                f"with weights_only=False unless you trust where it came from"
            ) from exc
        raise CheckpointError(
            f"checkpoint {p} is corrupt or half-written ({_first_line(exc)}); use another checkpoint or retrain"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(state).__name__}, not a speechconv checkpoint dict")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {p} lacks {missing}; it was not written by speechconv's train.py")
    return state


def restore_model(path: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, Config, CharVocabulary]:
    """The trained model of a checkpoint (eval mode, on ``device``), its run's config and vocabulary."""
    from speechconv.models import build_model

    state = load_checkpoint(path, map_location=device)
    try:
        cfg = config_from_dict(state["config"])
        vocab = CharVocabulary.from_dict(state["vocab"])
        model = build_model(cfg.model, cfg.encoder, cfg.features, vocab)
        model.load_state_dict(state["model"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not describe a model this version can build: {exc}") from exc
    return model.to(device).eval(), cfg, vocab


def rng_state() -> dict[str, Any]:
    """Every random state the training loop draws from, as plain values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": np_kind, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
