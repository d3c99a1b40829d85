"""Outbound notices: the dramatiq broker, the outbox dispatcher and the notice actor.

    outbox row (pending) ─dispatcher─> queued ─broker─> notify actor ─> sent | pending (retry) | failed | coalesced

Modules, in the order a notice travels: `dispatcher` (claim due rows), `broker` (build the broker, bind the
actor), `coalesce` and `channels` (whether and where to send), `notify` (render, send, record),
`senders` (which providers), `service` (all of it in one process), `cli` (the commands).
"""
