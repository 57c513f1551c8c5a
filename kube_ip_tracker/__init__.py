"""kube-ip-tracker: a multi-cluster pod metadata cache for NetworkPolicy enforcement."""

__version__ = "0.1.0"
