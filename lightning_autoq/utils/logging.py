"""Logging tables to whatever logger the trainer has."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger


def log_table(
    loggers: list[Logger], key: str, columns: list[str], rows: list[list[object]]
) -> list[Path]:
    """Log a table: a W&B table, TensorBoard text, or a CSV file in the logger's folder.

    Returns:
        The CSV files written (for loggers without a table type).
    """
    written: list[Path] = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key=key, columns=columns, data=rows)
        elif isinstance(logger, TensorBoardLogger):
            header = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            body = "\n".join("| " + " | ".join(map(str, r)) + " |" for r in rows)
            logger.experiment.add_text(key, header + body)
        elif logger.log_dir is not None:
            path = Path(logger.log_dir) / f"{key.replace('/', '_')}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", newline="") as f:
                csv.writer(f).writerows([columns, *rows])
            written.append(path)
    return written
