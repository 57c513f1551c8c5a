"""Whether an agent informer's API server answers: the flag, its gauge, and a log line on each change."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


class InformerConnection:
    """``connected`` and ``last_error`` of one informer, kept in step with its gauge (1/0).

    ``failed(message)`` (a list, watch, connection or probe failed) logs ``<name> disconnected (message);
    <meanwhile()>`` at error level when it was connected; ``answered()`` (a list or watch opened, a probe
    passed) logs ``<name> connected again`` after a failure. Lines go to ``log``, prefixed with the cluster.
    """

    def __init__(self, cluster: str, name: str, gauge: Any, log: logging.Logger, meanwhile: Callable[[], str]) -> None:
        self.cluster = cluster
        self.name = name
        self.gauge = gauge
        self.log = log
        self.meanwhile = meanwhile
        self.connected = False
        self.last_error = ""
        gauge.set(0)

    def failed(self, message: str) -> None:
        self.last_error = message
        if self.connected:
            self.log.error("Cluster %s: %s disconnected (%s); %s", self.cluster, self.name, message, self.meanwhile())
        self.connected = False
        self.gauge.set(0)

    def answered(self) -> None:
        if not self.connected and self.last_error:
            self.log.info("Cluster %s: %s connected again", self.cluster, self.name)
        self.connected = True
        self.gauge.set(1)

    def closed(self) -> None:
        """The informer stopped (shutdown): not connected, without a log line."""
        self.connected = False
        self.gauge.set(0)


class ReportsConnection:
    """``connected`` and ``last_error`` of an informer that keeps an :class:`InformerConnection` as ``connection``."""

    connection: InformerConnection

    @property
    def connected(self) -> bool:
        """The API server answers (lists and watches open, the liveness probe passing)."""
        return self.connection.connected

    @property
    def last_error(self) -> str:
        return self.connection.last_error
