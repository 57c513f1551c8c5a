"""The ``kube-ip-tracker.io/staged`` annotation: a policy evaluated beside the enforced ones, never enforced.

A NetworkPolicy or cluster-scoped policy annotated ``kube-ip-tracker.io/staged: "true"`` is compiled
like any other but only decides the "with staged policies applied" verdict (would-deny / would-allow);
``"false"`` or no annotation enforces it. Any other value is a problem reported for that policy, and
the policy is enforced (treated as not staged): a typo never silently stops enforcing a policy.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import PolicyError

STAGED_ANNOTATION = "kube-ip-tracker.io/staged"


def staged_annotation(meta: dict[str, Any]) -> tuple[bool, str]:
    """``(staged, problem)`` from an object's ``metadata``; ``problem`` is "" unless the value is invalid.

    Raises :class:`PolicyError` when ``metadata.annotations`` is not an object of strings.
    """
    annotations = meta.get("annotations")
    if annotations is None:
        return False, ""
    if not isinstance(annotations, dict):
        raise PolicyError("metadata.annotations", f"must be an object, got {type(annotations).__name__}")
    value = annotations.get(STAGED_ANNOTATION)
    if value is None or value == "false":
        return False, ""
    if value == "true":
        return True, ""
    return False, (
        f'annotation {STAGED_ANNOTATION}: invalid value {value!r} (expected "true" or "false"); '
        "the policy is enforced, not staged"
    )


class HasStaged(Protocol):
    staged: bool
    staged_problem: str


def new_staged_problem(previous: HasStaged | None, policy: HasStaged) -> str:
    """The annotation problem of ``policy`` to report: "" when it has none or ``previous`` had the same."""
    if not policy.staged_problem or (previous is not None and previous.staged_problem == policy.staged_problem):
        return ""
    return policy.staged_problem


def enforcement(policy: HasStaged | None) -> str:
    """How a policy held by an informer is applied, for its log lines."""
    if policy is None:
        return "not enforced"
    return "staged, not enforced" if policy.staged else "enforced"
