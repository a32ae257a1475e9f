"""Logging set-up: loguru for Pipecat and ours, stdlib logging (NeMo, engine) routed into it.

Here rather than in ``agent/`` because builders hand it to the child processes they start (the
ASR engine process), and ``pipelines/`` never imports the CLI layer.
"""

from __future__ import annotations

import logging
import sys

from loguru import logger


class _ToLoguru(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def setup_logging(level: str = "INFO") -> None:
    """One log stream at ``level``; NeMo's chatty loggers are held at WARNING."""
    logger.remove()
    logger.add(sys.stderr, level=level)
    # stdlib logging has no TRACE (loguru's level below DEBUG): its records pass at DEBUG.
    stdlib_level = "DEBUG" if level.upper() == "TRACE" else level
    logging.basicConfig(handlers=[_ToLoguru()], level=stdlib_level, force=True)
    for noisy in ("nemo_logger", "nemo", "lightning", "pytorch_lightning", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
