"""Tracker client: a Watch stream kept alive forever, feeding an apply sink (the agent's mirror, or an index).

Modules: :mod:`.sink` (the apply-sink interface and record changes), :mod:`.stream` (one stream's
protocol state machine), :mod:`.client` (connect, resume, fail over, back off), :mod:`.resolver`
(tracker addresses), :mod:`.mirror` and :mod:`.events` (the agent's local mirror and its change
notifications), :mod:`.index_sink` (feed an ``IndexWriter`` instead), :mod:`.metrics`.

Typical agent use::

    mirror = Mirror()
    mirror.subscribe(on_events)          # batches of events.PodUpserted, PodDeleted, ..., Ready
    client = TrackerClient("kube-ip-tracker.kube-system.svc.cluster.local:50051", mirror,
                           ClientOptions(watcher_name=node_name))
    client.start()
    async with asyncio.timeout(60):
        await client.wait_ready()
    found = mirror.pod_by_ip("10.0.0.5")  # (PodRecord, NamespaceRecord | None, NodeRecord | None) | None
"""
