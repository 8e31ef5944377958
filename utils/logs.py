"""Logging for the entry points: one format, and only rank 0 speaks below WARNING."""
from __future__ import annotations

import logging
import sys

LOG_FORMAT = "[%(name)s] %(message)s"


class RankFilter(logging.Filter):
    """Drops INFO and DEBUG records on ranks other than 0, and prefixes the rest with
    their rank, so a k-rank run prints each message once."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank == 0:
            return True
        record.msg = f"(rank {self.rank}) {record.msg}"
        return record.levelno >= logging.WARNING


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Send the project's log records to stderr (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RankFilter(rank))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
