"""Child-process entry point: serve one GGUF over llama.cpp's OpenAI-compatible HTTP API.

Started by :class:`sale_ray.agents.local.LocalModelServer` as
``python -m sale_ray.agents.local_server --model FILE --ready-file FILE --parent-pid PID ...``,
with stdout and stderr already pointing at a log file (llama.cpp logs verbosely to fd 2).

Why a child process rather than ``xllamacpp.Server`` in the caller: a model that crashes, leaks
or hangs takes only this process down, ``stop()`` is a plain signal, and the verbose C++ logging
never reaches the caller's terminal.

Protocol with the parent: once the model is loaded and the socket listens, a JSON object
``{"address": "http://127.0.0.1:PORT", "pid": PID}`` is written atomically to the ready file.
The process then waits until SIGTERM/SIGINT, or until its parent is gone (polling the parent pid:
``PR_SET_PDEATHSIG`` would be simpler but fires when the parent *thread* that spawned us exits,
and agents start servers from short-lived worker threads).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

_PARENT_POLL_S = 0.5  # how fast an orphan notices; cheap (one syscall)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sale_ray.agents.local_server")
    ap.add_argument("--model", required=True, help="GGUF file to serve.")
    ap.add_argument("--ready-file", required=True, help="Where to write the address when up.")
    ap.add_argument("--parent-pid", type=int, required=True, help="Exit when this pid is gone.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: let the OS pick a free port.")
    ap.add_argument("--n-ctx", type=int, default=4096, help="Context per request (per slot).")
    ap.add_argument("--n-parallel", type=int, default=2, help="Requests decoded at once.")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--alias", default=None, help="Model id shown by /v1/models.")
    ap.add_argument("--cache-ram-mib", type=int, default=512, help="Prompt cache in host RAM.")
    return ap.parse_args(argv)


def _parent_alive(pid: int) -> bool:
    # Re-parenting (to init or a subreaper) is the reliable sign; kill(pid, 0) could be fooled
    # by pid reuse.
    return os.getppid() == pid


def main(argv: list[str] | None = None) -> int:
    """Serve until signalled or orphaned; exit code 3 if the server cannot start."""
    args = _parse(argv)
    if not _parent_alive(args.parent_pid):
        print("sale-ray: parent already gone; not starting", file=sys.stderr, flush=True)
        return 4

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    import xllamacpp  # imported late: the parent's argument errors should not pay for it

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    # llama.cpp splits n_ctx across slots; callers mean "context per request", so multiply.
    p.n_ctx = args.n_ctx * args.n_parallel
    p.n_parallel = args.n_parallel
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.hostnames = [args.host]
    p.port = args.port
    # Default is 8 GiB per server; several servers share one box, so keep it modest.
    p.cache_ram_mib = args.cache_ram_mib
    if args.alias:
        p.model_alias = {args.alias}
    print(f"sale-ray: starting llama.cpp server for {args.model}", file=sys.stderr, flush=True)
    try:
        server = xllamacpp.Server(p)  # blocks until the model is loaded and the socket listens
    except Exception as e:  # xllamacpp raises RuntimeError; its log above says why
        print(f"sale-ray: server failed to start: {e}", file=sys.stderr, flush=True)
        return 3

    ready = Path(args.ready_file)
    tmp = ready.with_name(ready.name + ".tmp")
    tmp.write_text(json.dumps({"address": server.listening_address, "pid": os.getpid()}))
    os.replace(tmp, ready)  # the parent never reads half a file
    print(f"sale-ray: listening on {server.listening_address}", file=sys.stderr, flush=True)

    while not stop.wait(_PARENT_POLL_S):
        if not _parent_alive(args.parent_pid):
            print("sale-ray: parent exited; shutting down", file=sys.stderr, flush=True)
            break
    print("sale-ray: stopping", file=sys.stderr, flush=True)
    sys.stderr.flush()
    # Skip the Server destructor: it waits for in-flight generations, and the kernel frees
    # the model, the socket and the threads at once.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
