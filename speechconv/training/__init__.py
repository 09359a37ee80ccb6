"""The jobs of ``train.py`` (shapes, train, eval, transcribe, stream, export) as plain functions.

``train.py`` composes the config with Hydra and calls :func:`main`; tests call
:func:`run` with a composed config and a folder.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

from speechconv.checks import ConfigError
from speechconv.config import Config, validate
from speechconv.training.runlog import run_log, say


def run(cfg: Any, out_dir: str | Path) -> int:
    """Validate ``cfg`` (an OmegaConf config or a :class:`Config`) and run its ``mode``;
    returns the exit code: 0, or ``128 + signal`` for a training run stopped by Ctrl-C
    (130) or SIGTERM (143) after saving its checkpoint.  User errors raise
    :class:`ConfigError` (or the library's ``ValueError`` subclasses) before any data
    is read where possible."""
    config = cfg if isinstance(cfg, Config) else validate(cfg)
    if config.mode == "shapes":
        from speechconv.training.shapes_job import run_shapes

        return run_shapes(config)
    if config.mode == "train":
        from speechconv.training.loop import train

        result = train(config, out_dir)
        return 128 + result.interrupted if result.interrupted else 0
    if config.mode == "eval":
        from speechconv.training.evaluate import run_eval

        return run_eval(config, out_dir)
    if config.mode == "stream":
        from speechconv.training.stream import run_stream

        return run_stream(config)
    if config.mode == "export":
        from speechconv.training.export_job import run_export

        return run_export(config, out_dir)
    from speechconv.training.transcribe import run_transcribe

    return run_transcribe(config)


def main(cfg: Any, out_dir: str | Path) -> int:
    """:func:`run`, printing expected failures as one clean line on stderr instead of a
    traceback: user errors (config, checkpoint, manifest, a model export cannot represent,
    missing file, unwritable run folder or full disk) exit with code 2, a training run stopped by a non-finite loss
    or gradient with code 1.  Everything it prints, and the traceback of an unexpected
    crash, is also kept in ``out_dir/train.log``."""
    from speechconv.data import ManifestError
    from speechconv.export import ExportError
    from speechconv.training.checkpoint import CheckpointError
    from speechconv.training.nonfinite import NonFiniteError
    from speechconv.training.outputs import OutputError, RunFolderError

    with run_log(out_dir):
        try:
            return run(cfg, out_dir)
        except RunFolderError as exc:
            say(f"error: {exc}", err=True, log=False)  # nothing goes into an unwritable folder
            return 2
        except (ConfigError, CheckpointError, ManifestError, ExportError, FileNotFoundError, OutputError) as exc:
            say(f"error: {exc}", err=True)
            return 2
        except NonFiniteError as exc:
            say(f"error: {exc}", err=True)
            return 1
        except Exception:
            say(traceback.format_exc().rstrip(), err=True, echo=False)  # Python prints it on the way out
            raise


__all__ = ["main", "run"]
