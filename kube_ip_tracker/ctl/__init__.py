"""Operator commands of ``kube-ip-tracker``: ``status`` and ``get``, clients of a running tracker's gRPC API."""
