"""Logging like a Kubernetes component: klog-style text or JSON lines on stderr, ``--log-level`` and
``--logging-format``.

Structured fields go in ``extra={"fields": {...}}``: the text format prints them after the quoted
message as ``key="value"`` (as klog's structured logging does), the JSON format as members of the
line's object::

    log.info("Connection denied", extra={"fields": {"verdict": "deny", "port": 80}})
    # I1202 06:50:00.123456   4242 verdict_log.py:90] agent.verdicts: "Connection denied" verdict="deny" port=80
    # {"ts":1796194200.123456,"caller":"verdict_log.py:90","logger":"agent.verdicts","level":"info",
    #  "msg":"Connection denied","verdict":"deny","port":80}
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LOGGING_FORMATS = ("text", "json")


def _log_level(text: str) -> int:
    try:
        return LOG_LEVELS[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"invalid log level {text!r}: choose from {', '.join(LOG_LEVELS)}") from None


def _logging_format(text: str) -> str:
    if text not in LOGGING_FORMATS:
        raise argparse.ArgumentTypeError(f"invalid logging format {text!r}: choose from {', '.join(LOGGING_FORMATS)}")
    return text


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """Log verbosity and format."""
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=logging.INFO,
        metavar="LEVEL",
        help=f"one of {', '.join(LOG_LEVELS)} (default info)",
    )
    parser.add_argument(
        "--logging-format",
        type=_logging_format,
        default="text",
        metavar="FORMAT",
        help="text (klog lines) or json (one JSON object per line), as Kubernetes components spell it (default text)",
    )


def record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    """The structured fields of a record (``extra={"fields": ...}``); empty when none."""
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _text_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


class KlogFormatter(logging.Formatter):
    """``I1124 00:52:39.123456   12345 kube.py:42] sources.kube: message`` (UTC), like Kubernetes components.

    With structured fields the message is quoted and the fields follow as ``key="value"``.
    """

    LETTERS = {"DEBUG": "D", "INFO": "I", "WARNING": "W", "ERROR": "E", "CRITICAL": "F"}

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        logger = record.name.removeprefix("kube_ip_tracker.")
        message = record.getMessage()
        fields = record_fields(record)
        if fields:
            message = json.dumps(message) + "".join(f" {key}={_text_value(value)}" for key, value in fields.items())
        line = (
            f"{self.LETTERS.get(record.levelname, record.levelname[:1])}{when:%m%d %H:%M:%S.%f} "
            f"{record.process:7d} {record.filename}:{record.lineno}] {logger}: {message}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, as Kubernetes components log with ``--logging-format=json``.

    ``ts`` (Unix seconds), ``caller``, ``logger``, ``level``, ``msg``, the structured fields, and ``err``
    with the traceback when an exception is logged.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "caller": f"{record.filename}:{record.lineno}",
            "logger": record.name.removeprefix("kube_ip_tracker."),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        for key, value in record_fields(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["err"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_logging(level: int, logging_format: str = "text") -> None:
    """Lines on stderr (klog text or JSON); client-library chatter stays at INFO or above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if logging_format == "json" else KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("kubernetes_asyncio", "aiohttp", "asyncio", "grpc"):
        logging.getLogger(noisy).setLevel(max(level, logging.INFO))
