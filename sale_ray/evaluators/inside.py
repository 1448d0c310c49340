"""Code that runs *inside* the sandbox, before and around the untrusted code (stdlib only).

:mod:`~sale_ray.evaluators.sandbox` passes this file's text to ``python -I -S -B -c`` with a
mode as the first argument:

* ``run FILE``                — run FILE as ``__main__`` (the self-check and plain runs);
* ``serve FILE RPC_FD``       — the *solution* process: import FILE, then answer calls of its
  top-level functions on RPC_FD. It never sees the hidden tests;
* ``judge FILE RPC_FD OUT_FD`` — the *harness* process, in a second sandbox: run the tests in FILE
  with every solution function replaced by a proxy that calls the solution process, and write the
  verdict on OUT_FD. The solution cannot reach this process, its files or OUT_FD, so it cannot
  forge the verdict (printing markers or exiting 0 proves nothing any more).

Values cross the RPC channel as tagged JSON (plain data only: None, bool, int, float, str, bytes,
list, tuple, dict, set) and are rebuilt by a decoder that creates nothing else — so the solution
cannot hand the harness an object whose ``__eq__`` always says True.
"""

import json
import os
import sys

MAX_MESSAGE = 16 * 1024 * 1024
MAX_DEPTH = 200


class Unsupported(TypeError):
    """A value that is not plain data cannot cross the channel."""


def encode(v, depth=0):
    if depth > MAX_DEPTH:
        raise Unsupported("nested too deeply")
    t = type(v)
    if v is None or t in (bool, int, str):
        return v
    if t is float:
        return {"f": repr(v)}
    if t is bytes:
        return {"b": v.hex()}
    if t in (list, tuple, set, frozenset):
        tag = {list: "l", tuple: "t", set: "s", frozenset: "z"}[t]
        return {tag: [encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]}
    raise Unsupported(f"a {t.__name__} cannot cross the sandbox channel (plain data only)")


def decode(v, depth=0):
    if depth > MAX_DEPTH:
        raise Unsupported("nested too deeply")
    if v is None or type(v) in (bool, int, str):
        return v
    if type(v) is not dict or len(v) != 1:
        raise Unsupported("malformed value")
    ((tag, x),) = v.items()
    if tag == "f":
        return float(str(x))
    if tag == "b":
        return bytes.fromhex(str(x))
    if tag == "d":
        return {decode(k, depth + 1): decode(y, depth + 1) for k, y in x}
    items = [decode(y, depth + 1) for y in x]
    kinds = {"l": list, "t": tuple, "s": set, "z": frozenset}
    if tag not in kinds:
        raise Unsupported("malformed value")
    return kinds[tag](items)


def send(fd, msg):
    data = json.dumps(msg).encode()
    data = len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data) :]


def _read(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv(fd):
    """The next message, or None when the other side closed (or sent garbage)."""
    head = _read(fd, 4)
    if head is None or int.from_bytes(head, "big") > MAX_MESSAGE:
        return None
    body = _read(fd, int.from_bytes(head, "big"))
    try:
        return None if body is None else json.loads(body)
    except ValueError:
        return None


def no_network():
    def hook(event, args):
        if event.startswith("socket."):
            raise PermissionError("network access is disabled in the sale-ray sandbox")

    sys.addaudithook(hook)  # cannot be removed from Python; the network namespace is the wall


def fresh_main(path):
    """A real, empty ``__main__`` module (unittest.main(), pickle look it up in sys.modules)."""
    main = type(sys)("__main__")
    main.__file__, main.__builtins__ = path, __builtins__
    sys.modules["__main__"] = main
    return main.__dict__


def load(path):
    with open(path, encoding="utf-8") as f:
        return compile(f.read(), path, "exec")


def serve(path, fd):
    """The solution process: run the module, then answer calls until the harness hangs up."""
    ns = fresh_main(path)
    try:
        exec(load(path), ns)
    except BaseException as e:  # its top-level code failed (or exited): the harness says so
        send(fd, {"load_error": type(e).__name__})
        raise
    names, modules, values = [], {}, {}
    for n, v in list(ns.items()):
        if n.startswith("__"):
            continue
        if isinstance(v, type(sys)):  # tests may use what the prompt imported (math, re, ...)
            modules[n] = v.__name__
        elif callable(v):
            names.append(n)
        else:
            try:
                values[n] = encode(v)
            except Unsupported:
                pass
    send(fd, {"names": names, "modules": modules, "values": values})
    while (req := recv(fd)) is not None:
        try:
            fn = ns[req["name"]]
            out = fn(*decode(req["args"]), **dict(decode(req["kwargs"])))
            send(fd, {"ok": encode(out)})
        except Unsupported as e:
            send(fd, {"raise": "TypeError", "why": str(e)[:200]})
        except BaseException as e:
            send(fd, {"raise": type(e).__name__})


class SolutionExited(Exception):
    """The solution process ended (or broke the channel) while the tests still needed it."""


def _exception(name):
    import builtins

    cls = getattr(builtins, str(name), None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls  # so `except ValueError` / assertRaises in the tests work as written
    return RuntimeError


def proxy(fd, name):
    def call(*args, **kwargs):
        send(fd, {"name": name, "args": encode(list(args)), "kwargs": encode(kwargs)})
        reply = recv(fd)
        if not isinstance(reply, dict):
            raise SolutionExited("the solution process ended")
        if "ok" in reply:
            try:
                return decode(reply["ok"])
            except (Unsupported, ValueError, TypeError, RecursionError):
                raise SolutionExited("the solution sent a malformed value") from None
        raise _exception(reply.get("raise"))("raised by the solution")

    call.__name__ = call.__qualname__ = name
    return call


def where(tb, path):
    """'check, tests line 12': the innermost frame of the tests file (no message: it may carry
    data the solution chose)."""
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            found = f"{tb.tb_frame.f_code.co_name}, tests line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


def judge(path, fd, out):
    verdict = {"passed": False}
    hello = recv(fd)
    if not isinstance(hello, dict) or "names" not in hello:
        err = hello.get("load_error") if isinstance(hello, dict) else None
        name = "".join(c for c in str(err) if c.isalnum() or c in "_.")[:40] or "an exception"
        verdict["why"] = (
            f"the solution raised {name} on import"
            if err
            else "the solution ended before the tests ran"
        )
        send(out, verdict)
        return
    ns = fresh_main(path)
    import importlib

    for name, modname in dict(hello.get("modules") or {}).items():
        if str(name).isidentifier() and all(p.isidentifier() for p in str(modname).split(".")):
            try:
                ns[name] = importlib.import_module(modname)
            except Exception:
                pass  # a module of the solution's own making is not available to the tests
    for name, value in dict(hello.get("values") or {}).items():
        if str(name).isidentifier():
            try:
                ns[name] = decode(value)
            except (Unsupported, ValueError, TypeError, RecursionError):
                pass
    for name in hello["names"][:10000]:
        if type(name) is str and name.isidentifier():
            ns[name] = proxy(fd, name)
    code = load(path)
    no_network()
    try:
        exec(code, ns)
        verdict = {"passed": True}
    except SystemExit as e:  # unittest.main() ends the program with its verdict
        verdict = {
            "passed": e.code in (0, None),
            "error": "SystemExit",
            "why": f"exit {e.code!r}",
        }
    except BaseException as e:
        verdict = {
            "passed": False,
            "error": type(e).__name__,
            "where": where(e.__traceback__, path),
        }
    send(out, verdict)


def run(path):
    no_network()
    code = load(path)
    sys.argv = [path]
    exec(code, fresh_main(path))


if (
    __name__ == "__main__"
):  # `python -c`; importing this file (unit tests of the codec) runs nothing
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "run":
        run(args[0])
    elif mode == "serve":
        sys.argv = [args[0]]
        no_network()
        serve(args[0], int(args[1]))
    elif mode == "judge":
        sys.argv = [args[0]]
        judge(args[0], int(args[1]), int(args[2]))
