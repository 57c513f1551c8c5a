"""Policy evaluation across clusters: NetworkPolicy v1 and the Admin/Baseline tiers (ClusterNetworkPolicy,
AdminNetworkPolicy, BaselineAdminNetworkPolicy): validation, world indexes and decisions."""

from .cluster_compiled import Action, ClusterPolicy, RuleRef, Tier
from .cluster_parse import (
    parse_admin_network_policy,
    parse_baseline_admin_network_policy,
    parse_cluster_network_policy,
)
from .compiled import CompiledPolicy, IPBlock, Peer, PortSpec, Rule
from .errors import PolicyError
from .evaluator import Endpoint, PolicyEngine, Reason, Verdict
from .parse import parse_network_policy
from .selectors import LabelSelector, Operator, Requirement, parse_selector

__all__ = [
    "Action",
    "ClusterPolicy",
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
    "RuleRef",
    "Tier",
    "Verdict",
    "parse_admin_network_policy",
    "parse_baseline_admin_network_policy",
    "parse_cluster_network_policy",
    "parse_network_policy",
    "parse_selector",
]
