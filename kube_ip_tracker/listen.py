"""Listen addresses (``HOST:PORT``, ``:PORT``, ``[IPv6]:PORT``) as both programs' flags take them."""

from __future__ import annotations

import argparse

DISABLED = ("", "0", "off")


def parse_listen_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` to (host, port), an empty host meaning all interfaces (``0.0.0.0``).

    Raises ``ValueError`` naming the bad address.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid address {text!r}: expected HOST:PORT, e.g. 0.0.0.0:9090")
    return host.strip("[]") or "0.0.0.0", int(port)


def listen_address(text: str) -> str:
    """argparse type: a valid ``HOST:PORT``, kept as written."""
    try:
        parse_listen_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def optional_listen_address(text: str) -> str:
    """argparse type: a ``HOST:PORT``, or one of ``""``, ``0``, ``off`` to serve nothing."""
    return text if text in DISABLED else listen_address(text)
