"""Training metrics as a CSV file and TensorBoard scalars, in the run folder.

The CSV (``metrics.csv``) has one row per logged event with fixed columns (empty
cells where a metric does not apply: validation rows have no learning rate).  It is
rewritten whole through :func:`speechconv.atomic.atomic_write_text` at every flush,
so it is never torn; runs are a few thousand rows at most.  TensorBoard event files
are written by ``SummaryWriter`` itself (append-only records, each one checksummed,
which TensorBoard reads even when the last one is cut off).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from speechconv.atomic import atomic_write_text

COLUMNS = ("step", "split", "epoch", "loss", "lr", "wer", "cer", "data_ms", "compute_ms", "elapsed_s")


class MetricsLogger:
    """Append metric rows; ``flush`` writes the CSV, ``close`` closes TensorBoard.

    Args:
        folder: the run folder; writes ``metrics.csv`` and ``tensorboard/``.
        tensorboard: also write TensorBoard scalars.
        rows: earlier rows (on resume) to keep.
    """

    def __init__(self, folder: str | os.PathLike, tensorboard: bool = True, rows: list[dict] | None = None) -> None:
        self.folder = Path(folder)
        self.csv_path = self.folder / "metrics.csv"
        self.rows: list[dict] = list(rows or [])
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder / "tensorboard"))

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
        atomic_write_text(self.csv_path, buf.getvalue())
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
