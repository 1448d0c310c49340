"""The sandbox launcher: run as a script (``python -I -S -B launcher.py SPEC``), stdlib only.

It is started by :mod:`sale_ray.evaluators.sandbox` in a new session with an almost empty
environment, so it holds no secret of the caller: a fresh interpreter, not a fork of it. It

1. unshares namespaces — mount, PID and network; as a non-root caller inside a new user namespace
   whose uid/gid map sends the sandbox's uid 65534 to the caller's uid (so it has the
   capabilities to build mounts, and loses them at ``execve``);
2. forks the namespace's init, which builds a new root: a read-only tmpfs holding read-only binds
   of the system directories and the interpreter, a read-only ``/dev`` with a few devices,
   size-capped private ``/tmp`` and ``/dev/shm``, ``/proc`` of the new PID namespace and the
   scratch directory at ``/sandbox`` — then ``pivot_root`` and detaches the host's tree;
3. forks the user process: limits, (as root) a private uid, the required-layer check, ``execve``.

Before all that it moves itself into the run's cgroup when the caller made one (cgroup.py).

Protocol on the info pipe (one line each): "layer NAME", "init HOSTPID", "exec PATH" (about to exec
the program), "drop LAYER WHY" (an announced layer could not be completed), "refuse LAYER" (a required layer
is missing: nothing ran), "error MSG" (setup failed),
"status WAITSTATUS" (the program ended). Setup happens here rather than in ``preexec_fn``: the
caller may be a multi-threaded Ray worker, where running Python between fork and exec can deadlock.
"""

import ctypes
import json
import os
import platform
import resource
import signal
import sys

NEWNS, NEWNET, NEWPID, NEWUSER = 0x00020000, 0x40000000, 0x20000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
# statvfs flag -> the mount flag to keep on a read-only remount (a user namespace may not clear a
# flag the host set: the remount would fail with EPERM).
_KEEP = {2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: 1024, 2048: 2048, 4096: 1 << 21}
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "ppc64le": 203, "s390x": 217}
SANDBOX_UID = 65534  # what the code sees as its uid in a user namespace ("nobody")
INSIDE = "/sandbox"  # where the scratch directory appears in the new root
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf")
DEVICES = ("null", "zero", "full", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)
root = os.geteuid() == 0
spec: dict = {}  # set in the __main__ block: importing this module does nothing
info = -1


def say(msg):
    os.write(info, (msg.replace("\n", " ") + "\n").encode())


def check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(src, dst, fstype, flags, data=None):
    enc = [None if x is None else x.encode() for x in (src, dst, fstype, data)]
    check(libc.mount(enc[0], enc[1], enc[2], flags, enc[3]), f"mount {dst}")


def bind_ro(src, dst):
    """Bind ``src`` at ``dst`` read-only (a symlink is copied as a symlink)."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    keep = sum(v for k, v in _KEEP.items() if os.statvfs(dst).f_flag & k)
    mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def unshare():
    """The namespaces this kernel and caller allow, best set first; reports what it got."""
    extra = 0 if root else NEWUSER  # unprivileged users get namespaces via a user namespace
    flag = {"mountns": NEWNS, "pidns": NEWPID, "netns": NEWNET}
    for names in (("mountns", "pidns", "netns"), ("netns",)):
        # "skip" lets the tests play a machine without some namespace (never set in production).
        names = tuple(n for n in names if n not in spec["skip"])
        if names and libc.unshare(sum(flag[n] for n in names) | extra) == 0:
            break
    else:
        return set()
    if not root:
        # The code's uid 65534 is the caller's uid outside: only our own ids can be mapped.
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{SANDBOX_UID} {os.getuid()} 1"),
            ("gid_map", f"{SANDBOX_UID} {os.getgid()} 1"),
        ):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
        say("layer userns")
    for n in names:
        say("layer " + n)
    return set(names)


def new_root(have):
    """Build the sandbox's file system and move into it (we are the new PID namespace's init)."""
    base = spec["root_dir"]
    if "new-root" in spec["skip"]:  # the tests' stand-in for a kernel that refuses a mount
        raise OSError(1, "new root skipped")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount propagates to the host
    mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for d in SYSTEM_DIRS:
        if os.path.lexists("/" + d):
            bind_ro("/" + d, base + "/" + d)
    os.mkdir(base + "/etc", 0o755)
    for name in ETC_FILES:
        if os.path.exists("/etc/" + name):
            bind_ro("/etc/" + name, base + "/etc/" + name)
    for prefix in spec["prefixes"]:  # an interpreter outside /usr (pyenv, uv, a venv's base)
        if not os.path.exists(base + prefix):
            bind_ro(prefix, base + prefix)
    os.mkdir(base + "/dev", 0o755)
    mount("tmpfs", base + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for dev in DEVICES:
        open(base + "/dev/" + dev, "a").close()
        mount("/dev/" + dev, base + "/dev/" + dev, None, MS_BIND)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", base + "/dev/" + name)
    os.symlink("/proc/self/fd", base + "/dev/fd")
    for where, mb in (("/tmp", spec["tmp_mb"]), ("/dev/shm", spec["shm_mb"])):
        os.mkdir(base + where, 0o1777)
        opts = f"size={mb}m,nr_inodes=4096,mode=1777"
        mount("tmpfs", base + where, "tmpfs", MS_NOSUID | MS_NODEV, opts)
    os.mkdir(base + INSIDE, 0o700)
    mount(spec["scratch"], base + INSIDE, None, MS_BIND)
    os.mkdir(base + "/proc", 0o555)
    if "pidns" in have:
        try:
            mount("proc", base + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        except OSError:
            pass  # e.g. a container that masks parts of /proc: then the sandbox has no /proc
    os.chdir(base)
    number = _PIVOT_ROOT.get(platform.machine())
    if number is not None:
        check(libc.syscall(number, b".", b"."), "pivot_root")
        check(libc.umount2(b".", MNT_DETACH), "umount old root")  # the host's tree is gone
    else:
        check(libc.chroot(b"."), "chroot")
    os.chdir("/")


def seal_root():
    """The new root and /dev read-only (scratch, /tmp and /dev/shm stay writable)."""
    for d in ("/dev", "/"):
        mount(None, d, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def user_process(have):
    try:
        mb = 1024 * 1024
        limits = [
            (resource.RLIMIT_CPU, spec["cpu_s"], spec["cpu_s"] + 1),
            (resource.RLIMIT_AS, spec["memory_mb"] * mb, spec["memory_mb"] * mb),
            (resource.RLIMIT_NPROC, spec["max_processes"], spec["max_processes"]),
            (resource.RLIMIT_FSIZE, spec["max_file_mb"] * mb, spec["max_file_mb"] * mb),
            (resource.RLIMIT_NOFILE, spec["max_open_files"], spec["max_open_files"]),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        for which, soft, hard in limits:
            cur = resource.getrlimit(which)[1]
            if not root and cur != resource.RLIM_INFINITY:  # only root may raise a hard limit
                hard = min(hard, cur)
            resource.setrlimit(which, (min(soft, hard), hard))
        os.chdir(INSIDE if "mountns" in have else spec["scratch"])
        if root:
            uid = spec["uid"]
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                os.setuid(0)
            except PermissionError:
                pass
            else:
                raise RuntimeError("privilege drop did not stick")
            say(f"layer uid:{uid}")
            have.add("uid")
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with our init
        say("layer rlimits")
        missing = [layer for layer in spec["require"] if layer not in have]
        if missing:
            say("refuse " + ",".join(missing))
            os._exit(125)
        for exe in spec["pythons"]:
            if os.access(exe, os.X_OK):
                break
        else:
            raise RuntimeError(f"no Python interpreter the sandbox user may run: {spec['pythons']}")
        say("exec " + exe)
        os.set_inheritable(info, False)
        for fd in spec["keep_fds"]:
            os.set_inheritable(fd, True)
        # An empty environment: nothing of the caller's (keys, tokens, paths) reaches the code.
        os.execve(exe, [exe, "-I", "-S", "-B", "-c", spec["bootstrap"]] + spec["argv"], {})
    except BaseException as e:
        say(f"error {type(e).__name__}: {e}")
    os._exit(127)


def init(have):
    libc.prctl(1, signal.SIGKILL)  # if the launcher is killed, the namespace goes with us
    if "mountns" in have:
        try:
            new_root(have)
        except OSError as e:
            # Still on the host's tree (the namespace keeps our half-built mounts to itself):
            # go on without the layer, which `require` turns into a refusal.
            have.discard("mountns")
            say(f"drop mountns {e}")
        else:
            for layer in ("tmpfs", "proc"):  # either this pid ns's /proc, or none at all
                have.add(layer)
                say("layer " + layer)
            try:
                seal_root()
                have.add("mount-ro")
                say("layer mount-ro")
            except OSError as e:
                say(f"drop mount-ro {e}")
    child = os.fork()
    if child == 0:
        user_process(have)
    while True:  # reap orphans until the user process itself exits
        pid, status = os.wait()
        if pid == child:
            say(f"status {status}")
            os._exit(0)


def join_cgroups():
    """Move ourselves into the run's cgroup (made by the caller): all we fork is counted."""
    try:
        for procs in spec["cgroups"]:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
    except OSError:
        return False
    return bool(spec["cgroups"])


def main():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    grouped = join_cgroups()
    have = unshare()
    if grouped:
        have.add("cgroup")
        say("layer cgroup")
    # As root: a private uid per live run (our pid is unique while we live), so RLIMIT_NPROC
    # counts exactly this run's processes and concurrent runs cannot signal each other.
    spec["uid"] = spec["uid_base"] + os.getpid()
    if root:
        for p in [spec["scratch"]] + spec["owned"]:
            os.chown(p, spec["uid"], spec["uid"])
        os.chmod(spec["scratch"], 0o700)
    pid = os.fork()
    if pid == 0:
        try:
            init(have)
        finally:
            os._exit(126)
    say(f"init {pid}")
    os.waitpid(pid, 0)


if __name__ == "__main__":  # `python -c`
    spec = json.loads(sys.argv[1])
    info = spec["info_fd"]
    main()
