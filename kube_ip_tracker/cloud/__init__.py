"""Clusters found by name through a cloud provider's API (GKE, EKS): the shared discovery records,
cluster-id resolution and reconcile loop. Each provider package (``gke``, ``eks``) supplies its
name parsing, its API calls and its tokens."""
