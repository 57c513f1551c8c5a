"""NetworkPolicy v1 evaluation across clusters: validation, world indexes and decisions."""

from .compiled import CompiledPolicy, IPBlock, Peer, PortSpec, Rule
from .errors import PolicyError
from .evaluator import Endpoint, PolicyEngine, Reason, Verdict
from .parse import parse_network_policy
from .selectors import LabelSelector, Operator, Requirement, parse_selector

__all__ = [
    "CompiledPolicy",
    "Endpoint",
    "IPBlock",
    "LabelSelector",
    "Operator",
    "Peer",
    "PolicyEngine",
    "PolicyError",
    "PortSpec",
    "Reason",
    "Requirement",
    "Rule",
    "Verdict",
    "parse_network_policy",
    "parse_selector",
]
