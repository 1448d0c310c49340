"""The service: the long-lived Ray side of sale-ray that every door shares.

One service is a set of named actors in the ``sale-ray`` Ray namespace: one actor per agent
(restarted when it dies), the auctioneer (which holds every agent's limits, the budget ledger,
idempotency, the memory shards and the auction log). Doors (``sale-ray run``, ``ray job
submit``, Serve replicas, ``sale-ray eval``) attach to it by name through
:class:`~sale_ray.service.handle.Service`, or start a private one when none is up.

* :mod:`.config` — the ``service:`` section.
* :mod:`.names` — the namespace and actor names.
* :mod:`.ledger` — the durable budget ledger.
* :mod:`.handle` — :class:`Service` (the handle doors hold) and up / attach / status / down.
"""
