"""Label selectors (``matchLabels`` + ``matchExpressions``): parsing, validation and matching."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kube_ip_tracker.kube.names import label_value_problem, qualified_name_problem

from .errors import PolicyError, join


class Operator(enum.Enum):
    """Operators of a label selector requirement."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


@dataclass(frozen=True, slots=True)
class Requirement:
    """One ``matchExpressions`` entry."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement."""
        value = labels.get(self.key)
        op = self.operator
        if op is Operator.IN:
            return value is not None and value in self.values
        if op is Operator.NOT_IN:
            return value is None or value not in self.values
        if op is Operator.EXISTS:
            return value is not None
        return value is None


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A compiled label selector; the empty selector matches every label set."""

    match_labels: tuple[tuple[str, str], ...] = ()
    requirements: tuple[Requirement, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True for ``{}``, which selects everything."""
        return not self.match_labels and not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy every matchLabels entry and every expression."""
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for requirement in self.requirements:
            if not requirement.matches(labels):
                return False
        return True


EVERYTHING = LabelSelector()

SELECTOR_FIELDS = frozenset({"matchLabels", "matchExpressions"})
REQUIREMENT_FIELDS = frozenset({"key", "operator", "values"})


def expect_object(value: Any, path: str) -> dict[str, Any]:
    """``value`` as a JSON object, else a PolicyError."""
    if not isinstance(value, dict):
        raise PolicyError(path, f"must be an object, got {_json_type(value)}")
    return value


def expect_list(value: Any, path: str) -> list[Any]:
    """``value`` as a JSON array (null counts as empty), else a PolicyError."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(path, f"must be an array, got {_json_type(value)}")
    return value


def expect_string(value: Any, path: str) -> str:
    """``value`` as a JSON string, else a PolicyError."""
    if not isinstance(value, str):
        raise PolicyError(path, f"must be a string, got {_json_type(value)}")
    return value


def reject_unknown(obj: Mapping[str, Any], known: frozenset[str], path: str) -> None:
    """Raise for the first field of ``obj`` not in ``known`` (strict decoding, as the API server does)."""
    for field in obj:
        if field not in known:
            raise PolicyError(join(path, str(field)), f'unknown field "{field}"')


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def parse_labels(value: Any, path: str) -> dict[str, str]:
    """A ``labels``/``matchLabels`` map: valid label keys to valid label values."""
    if value is None:
        return {}
    obj = expect_object(value, path)
    labels: dict[str, str] = {}
    for key, item in obj.items():
        key_path = join(path, key)
        problem = qualified_name_problem(key)
        if problem is not None:
            raise PolicyError(key_path, f"invalid label key {key!r}: {problem}")
        text = expect_string(item, key_path)
        problem = label_value_problem(text)
        if problem is not None:
            raise PolicyError(key_path, f"invalid label value {text!r}: {problem}")
        labels[key] = text
    return labels


def parse_selector(value: Any, path: str) -> LabelSelector:
    """Validate a LabelSelector object and compile it (null is the empty selector)."""
    if value is None:
        return EVERYTHING
    obj = expect_object(value, path)
    reject_unknown(obj, SELECTOR_FIELDS, path)
    match_labels = parse_labels(obj.get("matchLabels"), join(path, "matchLabels"))
    requirements = []
    expressions_path = join(path, "matchExpressions")
    for index, item in enumerate(expect_list(obj.get("matchExpressions"), expressions_path)):
        requirements.append(_parse_requirement(item, f"{expressions_path}[{index}]"))
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(requirements))


def _parse_requirement(value: Any, path: str) -> Requirement:
    obj = expect_object(value, path)
    reject_unknown(obj, REQUIREMENT_FIELDS, path)
    if "key" not in obj:
        raise PolicyError(join(path, "key"), "required value")
    key = expect_string(obj["key"], join(path, "key"))
    problem = qualified_name_problem(key)
    if problem is not None:
        raise PolicyError(join(path, "key"), f"invalid label key {key!r}: {problem}")
    if "operator" not in obj:
        raise PolicyError(join(path, "operator"), "required value")
    op_text = expect_string(obj["operator"], join(path, "operator"))
    try:
        operator = Operator(op_text)
    except ValueError:
        raise PolicyError(
            join(path, "operator"),
            f'not a valid selector operator "{op_text}" (In, NotIn, Exists, DoesNotExist)',
        ) from None
    values_path = join(path, "values")
    raw_values = expect_list(obj.get("values"), values_path)
    values = []
    for index, item in enumerate(raw_values):
        text = expect_string(item, f"{values_path}[{index}]")
        problem = label_value_problem(text)
        if problem is not None:
            raise PolicyError(f"{values_path}[{index}]", f"invalid label value {text!r}: {problem}")
        values.append(text)
    if operator in (Operator.IN, Operator.NOT_IN) and not values:
        raise PolicyError(values_path, f"must be specified when `operator` is '{operator.value}'")
    if operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST) and values:
        raise PolicyError(values_path, f"may not be specified when `operator` is '{operator.value}'")
    return Requirement(key, operator, frozenset(values))
