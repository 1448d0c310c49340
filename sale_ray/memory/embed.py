"""Text embedders for memory retrieval, behind one small protocol and a registry.

* ``minilm`` — all-MiniLM-L6-v2 (what the paper used) in pure numpy (:mod:`.minilm`): the default.
* ``minilm-torch`` — the same model through sentence-transformers (extra ``embed``; needs torch).
* ``hashing`` — hashed word and character n-grams: dependency-free, deterministic across
  processes, instant to load. A lexical fallback for tests and for machines without the model.

Importing this module is cheap: models load on first use of :func:`make_embedder`'s result.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors: ``encode(texts) -> (n, dim) float32``, rows L2-normalised."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return (m / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    """Signed feature hashing of word unigrams, bigrams and char 3-grams (within words).

    crc32 rather than Python's ``hash``: the latter is salted per process, and a shard in another
    process must map the same text to the same vector. Counts are log-scaled so one repeated word
    does not dominate.
    """

    name = "hashing"

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim

    def _features(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        feats = [f"w:{w}" for w in words]
        feats += [f"b:{a} {b}" for a, b in zip(words, words[1:], strict=False)]
        for w in words:
            padded = f"<{w}>"
            feats += [f"c:{padded[i : i + 3]}" for i in range(max(1, len(padded) - 2))]
        return feats

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised; an empty text gives a zero row."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for f in self._features(text):
                h = zlib.crc32(f.encode("utf-8"))
                out[row, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        out = np.sign(out) * np.log1p(np.abs(out))
        return _normalise(out)


class TorchMiniLM:
    """all-MiniLM-L6-v2 through sentence-transformers (reference implementation; needs torch)."""

    name = "minilm-torch"
    dim = 384

    def __init__(self, batch_size: int = 32) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(
                "embedder 'minilm-torch' needs the 'embed' extra "
                "(pip install torch==2.13.0 sentence-transformers); 'minilm' needs no torch"
            ) from None
        from .minilm import model_dir

        self.batch_size = batch_size
        self._model = SentenceTransformer(str(model_dir()), device="cpu")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, L2-normalised."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        v = self._model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True)
        return np.asarray(v, dtype=np.float32)


class LazyEmbedder:
    """Defers building the real embedder to the first ``encode`` (cheap to create and pickle)."""

    def __init__(self, name: str, factory: Callable[[], Embedder], dim: int) -> None:
        self.name, self.dim = name, dim
        self._factory = factory
        self._inner: Embedder | None = None
        self._lock = threading.Lock()

    def load(self) -> Embedder:
        """Build the model now (e.g. at actor start rather than in the first request)."""
        with self._lock:
            if self._inner is None:
                self._inner = self._factory()
            return self._inner

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.load().encode(texts)

    def __getstate__(self) -> dict:
        # Ship the recipe, not the weights: the receiving process loads its own copy.
        return {"name": self.name, "dim": self.dim, "_factory": self._factory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["_factory"], state["dim"])  # type: ignore[misc]


# Which vector space an embedder's output lives in: backends of the same model share one, so a
# snapshot written with the torch backend restores under the numpy one without re-embedding.
VECTOR_SPACES = {
    "minilm": "all-MiniLM-L6-v2",
    "minilm-torch": "all-MiniLM-L6-v2",
    "hashing": "hashing-v1",
}


def vector_space(embedder: Embedder) -> str:
    """Identity of the embedder's vector space (recorded in snapshot manifests)."""
    base = VECTOR_SPACES.get(embedder.name, embedder.name)
    return f"{base}/{embedder.dim}"


def _numpy_minilm() -> Embedder:
    from .minilm import NumpyMiniLM

    return NumpyMiniLM()


EMBEDDERS: dict[str, tuple[Callable[[], Embedder], int]] = {
    "minilm": (_numpy_minilm, 384),
    "minilm-torch": (TorchMiniLM, 384),
    "hashing": (HashingEmbedder, 384),
}


def make_embedder(name: str) -> Embedder:
    """The embedder registered as ``name`` (loaded lazily on first use)."""
    try:
        factory, dim = EMBEDDERS[name]
    except KeyError:
        raise ConfigError(f"unknown embedder {name!r}; choose from {sorted(EMBEDDERS)}") from None
    if name == "hashing":
        return HashingEmbedder(dim)
    return LazyEmbedder(name, factory, dim)
