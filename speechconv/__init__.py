"""speechconv: an exact, fast speech front-end for PyTorch.

16 kHz audio -> (T, 80, 3) log-mel + delta + delta-delta features -> strided 2-D conv
encoder -> (T/4, 20, 32), with exact lengths and a shape inspector that explains every
layer.  Names are imported lazily so that ``import speechconv`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AudioError": "speechconv.audio",
    "load_audio": "speechconv.audio",
    "FeatureConfig": "speechconv.feature_config",
    "LogMelDeltas": "speechconv.features",
    "compute_global_stats": "speechconv.features",
    "plot_features": "speechconv.plot",
    "LayerConfig": "speechconv.encoder_config",
    "EncoderConfig": "speechconv.encoder_config",
    "ConvEncoder": "speechconv.encoder",
    "Weiss2017Encoder": "speechconv.weiss2017",
    "Weiss2017Config": "speechconv.weiss2017",
    "BlockLinear": "speechconv.layers",
    "LearnedMix": "speechconv.layers",
    "GatedMix": "speechconv.layers",
    "describe": "speechconv.inspector",
    "check_against_forward": "speechconv.inspector",
    "export_recogniser": "speechconv.export",
    "export_frontend": "speechconv.export",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'speechconv' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return __all__
