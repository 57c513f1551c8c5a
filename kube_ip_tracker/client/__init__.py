"""Tracker client, shared by the agent and a tracker's upstream source: a Watch stream kept alive
forever, feeding an apply sink.

Modules: :mod:`.sink` (the apply-sink interface and record changes), :mod:`.stream` (one stream's
protocol state machine), :mod:`.client` (connect, resume, fail over, back off), :mod:`.resolver`
(tracker addresses), :mod:`.keepalive`, :mod:`.tls_reload` and :mod:`.tls_flags` (client TLS),
:mod:`.index_sink` (feed an ``IndexWriter``), :mod:`.metrics`.

Typical use::

    client = TrackerClient("kube-ip-tracker.kube-system.svc.cluster.local:50051", sink,
                           ClientOptions(watcher_name=node_name))
    client.start()
    async with asyncio.timeout(60):
        await client.wait_ready()
"""
