"""Training metrics as a CSV file and TensorBoard scalars, in the run folder.

The CSV (``metrics.csv``) has one row per logged event with fixed columns (empty
cells where a metric does not apply: validation rows have no learning rate).  It is
rewritten whole through :func:`speechconv.atomic.atomic_write_text` at every flush,
so it is never torn; runs are a few thousand rows at most.  TensorBoard event files
are written by ``SummaryWriter`` itself (append-only records, each one checksummed,
which TensorBoard reads even when the last one is cut off).  A resumed run passes
``purge_step``: TensorBoard then hides the events a killed run wrote past its last
checkpoint, which the resumed run writes again.

A failed write raises :class:`speechconv.training.outputs.OutputError` naming the file.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from speechconv.atomic import atomic_write_text
from speechconv.training.outputs import writing

COLUMNS = ("step", "split", "epoch", "loss", "lr", "wer", "cer", "data_ms", "compute_ms", "elapsed_s", "skipped")


class MetricsLogger:
    """Append metric rows; ``flush`` writes the CSV, ``close`` closes TensorBoard.

    Args:
        folder: the run folder; writes ``metrics.csv`` and ``tensorboard/``.
        tensorboard: also write TensorBoard scalars.
        rows: earlier rows (on resume) to keep.
        purge_step: on resume, the first step to be written again (TensorBoard hides
            earlier files' events from this step on).
    """

    def __init__(self, folder: str | os.PathLike, tensorboard: bool = True, rows: list[dict] | None = None,
                 purge_step: int | None = None) -> None:
        self.folder = Path(folder)
        self.csv_path = self.folder / "metrics.csv"
        self.rows: list[dict] = list(rows or [])
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            with writing(self.folder / "tensorboard"):
                self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"), purge_step=purge_step)

    def log(self, step: int, split: str, **values: float) -> None:
        """One row: ``values`` keyed by :data:`COLUMNS`; also TensorBoard ``split/name`` scalars."""
        unknown = set(values) - set(COLUMNS)
        assert not unknown, f"metrics {sorted(unknown)} are not CSV columns {COLUMNS}"
        self.rows.append({"step": step, "split": split, **values})
        if self.writer is not None:
            for name, value in values.items():
                if name != "epoch":
                    self.writer.add_scalar(f"{split}/{name}", value, step)

    def flush(self) -> None:
        buf = io.StringIO()
        out = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        out.writeheader()
        for row in self.rows:
            out.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        with writing(self.csv_path):
            atomic_write_text(self.csv_path, buf.getvalue())
        if self.writer is not None:
            with writing(self.folder / "tensorboard"):
                self.writer.flush()

    def close(self, flush: bool = True) -> None:
        """Write the CSV (unless ``flush`` is False: a run that failed keeps its last
        written one) and close TensorBoard."""
        try:
            if flush:
                self.flush()
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
