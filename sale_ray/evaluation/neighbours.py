"""Similar tasks by their text: the replay's view of outcome memory.

The live auction asks the service's memory for the ``answer_memory_k`` most similar past
auctions (:mod:`sale_ray.memory`); a replay on an evaluation matrix asks :class:`Neighbours`
for the most similar training tasks instead, embedded the same way (MiniLM by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..memory.embed import Embedder
from .matrix import TaskRow


def _embedder(name: str) -> tuple[Embedder, str]:
    """``name``'s embedder, or the lexical ``hashing`` one when its model files are missing (a
    replay still runs, and says so in its name)."""
    from ..memory.embed import make_embedder

    try:
        emb = make_embedder(name)
        emb.encode(["probe"])  # a lazy embedder loads its model files here
        return emb, name
    except Exception:  # noqa: BLE001 - model files missing: the lexical fallback still works
        return make_embedder("hashing"), "hashing (fallback)"


class Neighbours:
    """Rows ordered by cosine similarity of their prompts, the row itself left out; a row is
    embedded the first time it is seen."""

    def __init__(self, rows: Sequence[TaskRow] = (), embedder: str = "minilm") -> None:
        self._embedder, self.embedder = _embedder(embedder)
        self._vec: dict[str, np.ndarray] = {}
        self.add(rows)

    def add(self, rows: Sequence[TaskRow]) -> None:
        """Embed the rows not seen yet (one batch)."""
        new = [r for r in rows if r.task_id not in self._vec]
        if new:
            vecs = self._embedder.encode([r.prompt for r in new])
            self._vec.update({r.task_id: v for r, v in zip(new, vecs, strict=True)})

    def of(self, row: TaskRow, pool: Sequence[TaskRow]) -> list[TaskRow]:
        """``pool`` most similar to ``row`` first (ties: pool order), without ``row``."""
        self.add([row, *pool])
        q = self._vec[row.task_id]
        others = [p for p in pool if p.task_id != row.task_id]
        sims = np.array([float(self._vec[p.task_id] @ q) for p in others])
        return [others[i] for i in np.argsort(-sims, kind="stable")]


__all__ = ["Neighbours"]
