"""Errors of the dataplane."""


class DataplaneError(RuntimeError):
    """The dataplane could not start or change its rules."""
