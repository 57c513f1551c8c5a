"""Sources: feed the index from Kubernetes API servers.

- :mod:`.convert` turns API objects (JSON dicts) into :mod:`kube_ip_tracker.model` records.
- :mod:`.kube` runs one informer set (Pods, Namespaces, Nodes) per cluster: paginated list, watch
  with bookmarks, relist and reconcile on 410 Gone, backoff with jitter.
- :mod:`.status` folds the informers' health into the cluster's status; :mod:`.errors` names errors.
- :mod:`.kubeconfig` loads the static cluster set (kubeconfig files, in-cluster config) and builds
  API clients from :class:`~kube_ip_tracker.model.ClusterSpec`.
- :mod:`.kubeconfig_dir` follows a directory of kubeconfig files (one file per cluster).
- :mod:`.supervisor` starts, restarts and stops the per-cluster sources.
"""
