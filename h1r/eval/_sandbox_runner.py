"""Runs one untrusted program against its test inputs. Started by h1r/eval/sandbox.py as
`python -I -S _sandbox_runner.py` in a fresh temporary directory; standard library only.

It reads `job.json` from the directory (then deletes it), applies resource limits, optionally drops
to an unprivileged uid, installs an audit hook, and runs each test: stdin programs get the test input
on file descriptor 0 and their fd 1 is captured; functional tests call `Solution().<fn_name>(*args)`
with one JSON value per input line. On the original stdout it writes `{"ready": true}` after setup,
then one line per test: {"status": "ok"|"error"|"timeout"|"output_limit", "out", "err", "time"}.
The runner never sees expected outputs: the parent compares, so a program that writes on the result
channel can only claim outputs it would have had to compute anyway.

The audit hook (deny writes outside the directory, deleting/renaming files, process creation,
signals, sockets, ctypes, /proc of other processes, rlimit changes) is defence in depth for a
process that rlimits and namespaces already confine; it is not a security boundary by itself.
"""

import io
import json
import os
import resource
import signal
import sys
import time

PRELUDE = """\
import sys, math, heapq, bisect, itertools, functools, collections, string, re, random, statistics
import operator, copy, json, io, time, datetime, decimal, fractions, array, typing
from typing import *
from collections import *
from itertools import *
from heapq import *
from bisect import *
from functools import *
from math import *
from builtins import *
"""

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_DENIED_PREFIXES = ("os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill",
                    "os.killpg", "signal.pthread_kill", "subprocess.", "socket.", "ctypes.", "resource.setrlimit",
                    "resource.prlimit", "os.remove", "os.unlink", "os.rmdir", "os.rename", "os.replace",
                    "os.link", "os.symlink", "os.chmod", "os.chown", "os.chflags", "shutil.rmtree", "os.setxattr",
                    "os.removexattr", "pty.", "winreg.", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.",
                    "telnetlib.", "nntplib.", "poplib.", "imaplib.")
_DENIED_MODULES = {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing"}
MAX_WRITE_OPENS = 64


class _Timeout(BaseException):
    """Raised by the per-test wall (SIGALRM) or CPU (SIGPROF, SIGXCPU) limit; a BaseException so that
    a plain `except Exception` in the program does not swallow it."""


def _install_audit_hook(root: str) -> None:
    pid = str(os.getpid())
    writes = [0]

    def resolve(path) -> str:
        try:
            return os.path.realpath(os.fsdecode(path))
        except Exception:
            return "/"

    def inside(path) -> bool:
        p = resolve(path)
        return p == root or p.startswith(root + os.sep)

    def hook(event, args):
        if event == "open":
            path, _, flags = args
            if isinstance(path, int):
                return
            parts = resolve(path).split("/")  # /proc/self resolves to /proc/<our pid>
            if len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != pid:
                raise PermissionError("sandbox: other processes' /proc entries are not readable")
            if flags is not None and flags & _WRITE_FLAGS:
                if not inside(path):
                    raise PermissionError(f"sandbox: writing outside the sandbox directory ({resolve(path)})")
                writes[0] += 1
                if writes[0] > MAX_WRITE_OPENS:
                    raise PermissionError("sandbox: too many files opened for writing")
        elif event == "import":
            if args[0].split(".")[0] in _DENIED_MODULES:
                raise ImportError(f"sandbox: module {args[0]} is not available")
        elif event == "os.mkdir":
            if not inside(args[0]):
                raise PermissionError("sandbox: mkdir outside the sandbox directory")
        elif event.startswith(_DENIED_PREFIXES):
            raise PermissionError(f"sandbox: {event} is not allowed")

    sys.addaudithook(hook)


def _anon_file():
    """An unnamed read/write file descriptor (memfd on Linux)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("h1r-io")
    import tempfile

    return os.dup(tempfile.TemporaryFile().fileno())


def _redirect(inp: str, devnull: int) -> int:
    """Put the test input on fd 0 and a fresh capture file on fd 1; returns our own handle on the
    capture file. The standard fds are re-occupied first: a program may have closed them (`open(0)`
    closes fd 0 when its file object dies), and the new files must not land on 0-2 by accident."""
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    in_fd, out_fd = _anon_file(), _anon_file()
    data = inp.encode("utf-8")
    while data:
        data = data[os.write(in_fd, data):]
    os.lseek(in_fd, 0, os.SEEK_SET)
    os.dup2(in_fd, 0)
    os.close(in_fd)
    os.dup2(out_fd, 1)
    return out_fd


def _read_all(fd: int, size: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks, left = [], size
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _set_limits(job: dict) -> None:
    def lim(kind, value):
        try:
            resource.setrlimit(kind, (value, value))
        except (ValueError, OSError):
            pass  # a hard limit already lower than ours: keep it

    lim(resource.RLIMIT_AS, job["memory_bytes"])
    lim(resource.RLIMIT_FSIZE, job["fsize_bytes"])
    lim(resource.RLIMIT_NOFILE, job["nofile"])
    lim(resource.RLIMIT_NPROC, job["nproc"])
    lim(resource.RLIMIT_CORE, 0)
    # the whole job's CPU budget as a backstop; each test has its own CPU timer (ITIMER_PROF)
    total = int(_cpu_used() + (job["cpu_s"] + 1) * len(job["inputs"]) + 2)
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (total, total + 1))
    except (ValueError, OSError):
        pass


def _cpu_used() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def _run_one(code, job: dict, g: dict, inp: str, first: bool) -> tuple[str, str]:
    """Run one test; returns (status, output-or-error)."""
    if job["mode"] == "stdin":
        g.clear()
        g.update({"__name__": "__main__", "__builtins__": __builtins__})
        exec(PRELUDE, g)
        try:
            exec(code, g)
        except SystemExit as e:
            if e.code not in (None, 0):
                return "error", f"SystemExit({e.code!r})"
        return "ok", ""
    if first:
        g.update({"__name__": "__main__", "__builtins__": __builtins__})
        exec(PRELUDE, g)
        exec(code, g)
    args = [json.loads(line) for line in inp.split("\n") if line.strip()]
    target = g.get("Solution")
    fn = getattr(target(), job["fn_name"], None) if isinstance(target, type) else g.get(job["fn_name"])
    if not callable(fn):
        return "error", f"no Solution.{job['fn_name']} defined"
    return "ok", json.dumps(fn(*args))


def main() -> None:
    root = os.path.realpath(os.getcwd())
    with open("job.json", encoding="utf-8") as f:
        job = json.load(f)
    os.unlink("job.json")
    results = os.fdopen(os.dup(1), "w", encoding="utf-8")  # private channel; fd 1 becomes the program's
    devnull = os.open(os.devnull, os.O_RDWR)
    sys.dont_write_bytecode = True
    sys.setrecursionlimit(50000)
    import builtins

    builtins.exit = builtins.quit = sys.exit  # -S skips site.py, which normally defines them

    def on_limit(signum, frame):
        raise _Timeout()

    signal.signal(signal.SIGALRM, on_limit)
    signal.signal(signal.SIGPROF, on_limit)
    signal.signal(signal.SIGXCPU, on_limit)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over-long writes fail with EFBIG instead of killing us
    exec(PRELUDE, {})  # import the prelude modules before the hook and the uid drop
    _set_limits(job)
    if job.get("drop_uid") is not None:
        _drop_privileges(job["drop_uid"])
    if job.get("audit", True):
        _install_audit_hook(root)
    results.write('{"ready": true}\n')
    results.flush()

    try:
        code = compile(job["code"], "<solution>", "exec")
    except (SyntaxError, ValueError) as e:
        results.write(json.dumps({"status": "error", "out": "", "err": f"compile error: {e}", "time": 0.0}) + "\n")
        results.flush()
        os._exit(0)

    g: dict = {}
    for i, inp in enumerate(job["inputs"]):
        out_fd = _redirect(inp, devnull)
        sys.stdin = sys.__stdin__ = io.open(0, "r", encoding="utf-8", closefd=False)
        sys.stdout = sys.__stdout__ = io.open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = sys.__stderr__ = io.open(2, "w", encoding="utf-8", closefd=False)
        start = time.monotonic()
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, job["wall_s"])
                signal.setitimer(signal.ITIMER_PROF, job["cpu_s"])
                status, detail = _run_one(code, job, g, inp, first=i == 0)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.setitimer(signal.ITIMER_PROF, 0)
        except _Timeout:  # also when the timer fires between the program's end and the disarm
            status, detail = "timeout", "time limit exceeded"
        except BaseException as e:  # the program's own failure, whatever it is
            status, detail = "error", f"{type(e).__name__}: {e}"[:500]
        elapsed = time.monotonic() - start
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        out = detail if job["mode"] == "functional" and status == "ok" else ""
        if job["mode"] == "stdin":
            size = os.lseek(out_fd, 0, os.SEEK_END)
            if size > job["max_output_bytes"]:
                status, detail = "output_limit", f"output larger than {job['max_output_bytes']} bytes"
            elif status == "ok":
                out = _read_all(out_fd, size).decode("utf-8", "replace")
        if status != "ok":
            out = ""
        elif len(out) > job["max_output_bytes"]:
            status, out, detail = "output_limit", "", "return value too large"
        os.close(out_fd)
        results.write(json.dumps({"status": status, "out": out, "err": detail if status != "ok" else "",
                                  "time": round(elapsed, 4)}) + "\n")
        results.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
