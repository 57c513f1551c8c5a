"""The error raised for invalid NetworkPolicy objects and world files."""

from __future__ import annotations


class PolicyError(ValueError):
    """Invalid input: ``path`` names the offending field (``spec.ingress[0].ports[1].port``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message

    def under(self, prefix: str) -> PolicyError:
        """The same error with ``prefix`` put in front of its path."""
        if not prefix:
            return self
        return PolicyError(f"{prefix}.{self.path}" if self.path else prefix, self.message)


def join(path: str, field: str) -> str:
    """``path`` extended by one field name."""
    return f"{path}.{field}" if path else field
