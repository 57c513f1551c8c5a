"""``kube-ip-agent explain``: a decision with its trace, from a running agent (Unix socket) or offline."""
