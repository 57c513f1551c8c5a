"""The local multi-cluster demo (``make demo``): two clusters, a tracker and an agent each, real packets.

- :mod:`.scenario`: namespaces, pods, addresses, policies and the steps,
- :mod:`.stack`: starts and tears down clusters, objects, pod namespaces, trackers and agents,
- :mod:`.web`: an HTTP server inside a pod and a GET from another pod,
- :mod:`.steps`: runs the steps and reports their results,
- :mod:`.main`: the command line.
"""
