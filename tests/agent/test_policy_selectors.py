"""Label selectors: matching semantics and validation."""

from __future__ import annotations

import pytest

from kube_ip_tracker.agent.policy import Operator, PolicyError, parse_selector


def test_empty_selector_matches_everything() -> None:
    selector = parse_selector({}, "s")
    assert selector.is_empty
    assert selector.matches({})
    assert selector.matches({"a": "b"})
    assert parse_selector(None, "s").matches({"x": "y"})


def test_match_labels_all_must_match() -> None:
    selector = parse_selector({"matchLabels": {"app": "web", "tier": "fe"}}, "s")
    assert selector.matches({"app": "web", "tier": "fe", "extra": "1"})
    assert not selector.matches({"app": "web"})
    assert not selector.matches({"app": "web", "tier": "be"})


@pytest.mark.parametrize(
    ("operator", "values", "labels", "expected"),
    [
        ("In", ["a", "b"], {"k": "a"}, True),
        ("In", ["a", "b"], {"k": "c"}, False),
        ("In", ["a"], {}, False),
        ("NotIn", ["a"], {"k": "a"}, False),
        ("NotIn", ["a"], {"k": "b"}, True),
        ("NotIn", ["a"], {}, True),
        ("Exists", [], {"k": ""}, True),
        ("Exists", None, {}, False),
        ("DoesNotExist", None, {}, True),
        ("DoesNotExist", [], {"k": "v"}, False),
    ],
)
def test_operators(operator: str, values: list[str] | None, labels: dict[str, str], expected: bool) -> None:
    expression: dict[str, object] = {"key": "k", "operator": operator}
    if values is not None:
        expression["values"] = values
    selector = parse_selector({"matchExpressions": [expression]}, "s")
    assert selector.requirements[0].operator is Operator(operator)
    assert selector.matches(labels) is expected


def test_match_labels_and_expressions_are_anded() -> None:
    selector = parse_selector(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}],
        },
        "s",
    )
    assert selector.matches({"app": "web", "env": "dev"})
    assert not selector.matches({"app": "web", "env": "prod"})
    assert not selector.matches({"app": "db", "env": "dev"})


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ({"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["1"]}]}, "operator", "Gt"),
        ({"matchExpressions": [{"key": "k", "operator": "In"}]}, "values", "must be specified"),
        ({"matchExpressions": [{"key": "k", "operator": "In", "values": []}]}, "values", "must be specified"),
        ({"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["x"]}]}, "values", "may not"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "key", "required"),
        ({"matchExpressions": [{"key": "k"}]}, "operator", "required"),
        ({"matchExpressions": [{"key": "k", "operator": "Exists", "bogus": 1}]}, "bogus", "unknown field"),
        ({"matchLabels": {"bad key!": "v"}}, "matchLabels.bad key!", "invalid label key"),
        ({"matchLabels": {"k": "-bad"}}, "matchLabels.k", "invalid label value"),
        ({"matchLabels": {"k": 1}}, "matchLabels.k", "must be a string"),
        ({"matchLabels": ["k"]}, "matchLabels", "must be an object"),
        ({"matchLabel": {"k": "v"}}, "matchLabel", "unknown field"),
        ({"matchExpressions": [{"key": "k", "operator": "In", "values": ["a b"]}]}, "values[0]", "invalid"),
        ("app=web", "", "must be an object"),
    ],
)
def test_invalid_selectors(raw: object, path: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_selector(raw, "sel")
    assert info.value.path.endswith(path)
    assert info.value.path.startswith("sel")
    assert fragment in info.value.message


def test_prefixed_label_keys_are_valid() -> None:
    selector = parse_selector({"matchLabels": {"kubernetes.io/metadata.name": "x"}}, "s")
    assert selector.matches({"kubernetes.io/metadata.name": "x"})
    with pytest.raises(PolicyError):
        parse_selector({"matchLabels": {"Bad_Prefix/name": "x"}}, "s")
