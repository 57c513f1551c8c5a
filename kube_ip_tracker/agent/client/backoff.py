"""Reconnect backoff for the tracker client: the project's one exponential backoff with jitter.

The implementation lives in :mod:`kube_ip_tracker.sources.backoff` (delays doubling from ``base``
to ``cap``, each uniform in ``[d/2, d]``); this name is kept for the agent-side users.
"""

from __future__ import annotations

from kube_ip_tracker.sources.backoff import Backoff

__all__ = ["Backoff"]
