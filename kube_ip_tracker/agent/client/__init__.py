"""Tracker client: a Watch stream kept alive forever, feeding an apply sink (the agent's mirror, or an index).

Modules: :mod:`.sink` (the apply-sink interface and record changes), :mod:`.stream` (one stream's
protocol state machine), :mod:`.client` (connect, resume, fail over, back off), :mod:`.resolver`
(tracker addresses), :mod:`.mirror` and :mod:`.events` (the agent's local mirror and its change
notifications), :mod:`.metrics`.
"""
