"""What both programs need from Kubernetes API servers.

- :mod:`.kubeconfig` reads kubeconfig files and in-cluster config and builds API clients from
  :class:`~kube_ip_tracker.model.ClusterSpec`.
- :mod:`.reflector` is the list/watch loop of any resource into any store (relist on 410, backoff),
  the connect loop and the liveness probe.
- :mod:`.convert` turns API objects into records (the tracker's index, the agent's local pod watch).
- :mod:`.errors` names API errors; :mod:`.metrics` counts the reflector loops.
"""
