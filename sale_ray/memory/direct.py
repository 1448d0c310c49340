"""The direct search line: queries to shard actors on the caller's node over a local socket.

A query asks every shard, and a Ray actor call costs milliseconds of task machinery on each
side: on a 2-core box four no-op actor calls took p50 6.0 / p99 13.9 ms, and a top-8 query
through four shards spent ~9 ms in the calls against ~0.5 ms searching
(benchmarks/results/memory_retrieval.md). So each shard actor also answers searches on a
socket of its own: a :class:`SearchServer` thread, bound to 127.0.0.1 on a free port, behind
an authenticated ``multiprocessing.connection`` listener (HMAC challenge with a 32-byte key
made per shard; the key travels only through Ray, never to a log). A caller on the same node
holds one connection per shard (:class:`DirectSearch`) and pays a socket round trip.

Alternatives measured and not taken: a compiled Ray graph (``ray.dag``) cut the fan-out to
~1.5 ms, but each idle actor in it busy-polls its channel at ~50 % of a core (four shards kept
both cores of this box busy doing nothing), and a second graph over the same actors hangs.

What the line does not change: writes, maintenance and recovery stay Ray calls. The server runs
searches on its own threads, beside the actor's event loop, so the shard actor holds a lock
around every change it makes to the shard (:mod:`.remote`) and the server takes it too.
Shards on another node, or any failure (a dead shard, a timeout), make the caller fall back to
actor calls, which recover dead shards as before; the line reconnects on the next search.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import (
    Client,
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
Search = Callable[[np.ndarray, int, bool], Any]


class SearchServer:
    """Serves ``search(q, k, exact)`` to authenticated local connections, one thread each."""

    def __init__(self, search: Search) -> None:
        self._search = search
        self._key = os.urandom(32)
        # no authkey on the listener: its accept() would run the handshake itself, and one
        # client that never answers would block every later connection; each connection's
        # thread runs it instead (the same HMAC challenge, both ways, as Listener does)
        self._listener = Listener(("127.0.0.1", 0))
        threading.Thread(target=self._accept, name="memory-search-accept", daemon=True).start()

    def endpoint(self) -> tuple[tuple[str, int], bytes]:
        """``((host, port), key)`` for :class:`DirectSearch` (the key is a secret: never log it)."""
        return self._listener.address, self._key

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:  # closed
                return
            threading.Thread(
                target=self._serve, args=(conn,), name="memory-search", daemon=True
            ).start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            try:
                deliver_challenge(conn, self._key)
                answer_challenge(conn, self._key)
            except Exception:  # noqa: BLE001 - a wrong key, or not our protocol at all
                log.warning("memory search line: refused a connection (handshake failed)")
                return
            while True:
                try:
                    q, k, exact = conn.recv()
                except (EOFError, OSError):
                    return
                try:
                    conn.send(("ok", self._search(q, k, exact)))
                except Exception as e:  # noqa: BLE001 - the caller re-asks by actor call
                    try:
                        conn.send(("error", f"{type(e).__name__}: {e}"))
                    except OSError:
                        return


class DirectSearch:
    """Every shard's search over the direct line, for the process that holds the handles.

    ``endpoint(i)`` returns shard ``i``'s ``(node_id, address, key)`` (an actor call);
    ``node_id`` is this process's node. Connections are per thread, so threads search in
    parallel; a restarted shard (:meth:`replace`) gets new connections on the next search."""

    def __init__(
        self,
        size: int,
        endpoint: Callable[[int], tuple[str, tuple[str, int], bytes]],
        node_id: str,
        timeout_s: float = 10.0,
    ) -> None:
        self.size, self.timeout_s = size, timeout_s
        self._endpoint, self._node = endpoint, node_id
        self._generation = [0] * size
        self._ends: list[tuple[str, tuple[str, int], bytes]] | None = None
        self._ends_lock = threading.Lock()
        self._local = threading.local()
        self.searches = self.fallbacks = 0

    def search(self, q: np.ndarray, k: int, exact: bool) -> list[Any] | None:
        """Each shard's ``search_rows(q, k, exact)`` in shard order, or None: some shard is
        not on this node or did not answer (its connections are dropped; ask by actor call)."""
        conns = self._connections()
        if conns is None:
            return None
        try:
            for c in conns:
                c.send((q, k, exact))
            out = []
            for c in conns:
                if not c.poll(self.timeout_s):
                    raise TimeoutError(f"no answer in {self.timeout_s} s")
                status, value = c.recv()
                if status != "ok":
                    raise RuntimeError(value)
                out.append(value)
        except Exception as e:  # noqa: BLE001 - any failure: actor calls know how to recover
            log.warning("memory search line failed (%s); using actor calls", type(e).__name__)
            self._drop()
            self.fallbacks += 1
            return None
        self.searches += 1
        return out

    def replace(self, i: int) -> None:
        """Shard ``i`` was restarted: every thread reconnects to it on its next search."""
        with self._ends_lock:
            self._generation[i] += 1
            self._ends = None

    def _endpoints(self) -> tuple[list[tuple[str, tuple[str, int], bytes]], list[int]]:
        """Every shard's endpoint (asked once per restart, shared by all threads)."""
        with self._ends_lock:
            if self._ends is None:
                self._ends = [self._endpoint(i) for i in range(self.size)]
            return self._ends, list(self._generation)

    def _connections(self) -> list[Connection] | None:
        have = getattr(self._local, "conns", None)
        if have is not None and self._local.generation == self._generation:
            return have
        self._drop()
        try:
            ends, generation = self._endpoints()
            if any(node != self._node for node, _, _ in ends):
                return None  # 127.0.0.1 only reaches this node: those shards take actor calls
            conns = [Client(address, authkey=key) for _, address, key in ends]
        except Exception as e:  # noqa: BLE001 - fall back; retried on the next search
            log.warning("memory search line: cannot connect (%s)", type(e).__name__)
            with self._ends_lock:
                self._ends = None  # a dead shard's endpoint: ask again after its recovery
            return None
        self._local.conns, self._local.generation = conns, generation
        return conns

    def _drop(self) -> None:
        conns: Sequence[Connection] = getattr(self._local, "conns", None) or []
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        self._local.conns = None
