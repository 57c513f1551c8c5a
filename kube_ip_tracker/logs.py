"""Logging like a Kubernetes component: klog-style lines on stderr and the ``--log-level`` flag."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _log_level(text: str) -> int:
    try:
        return LOG_LEVELS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r}: choose from {', '.join(LOG_LEVELS)}") from None


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """Log verbosity."""
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=logging.INFO,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default info)",
    )


class KlogFormatter(logging.Formatter):
    """``I1124 00:52:39.123456   12345 kube.py:42] sources.kube: message`` (UTC), like Kubernetes components."""

    LETTERS = {"DEBUG": "D", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "F"}

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        logger = record.name.removeprefix("kube_ip_tracker.")
        line = (
            f"{self.LETTERS.get(record.levelname, record.levelname[:1])}{when:%m%d %H:%M:%S.%f} "
            f"{record.process:7d} {record.filename}:{record.lineno}] {logger}: {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: int) -> None:
    """klog-style lines on stderr; client-library chatter stays at INFO or above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kubernetes_asyncio", "aiohttp", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))
