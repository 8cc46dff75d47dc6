"""Run untrusted Python against LiveCodeBench-style tests, one separate process per sample.

What confines a sample (layers, each best effort where the host does not allow it):
- its own process: `python -I -S _sandbox_runner.py` (isolated mode, no site-packages, no PYTHON*
  variables), started with `start_new_session=True`; on timeout the whole process group is killed;
- a fresh temporary directory as cwd, deleted afterwards; an empty environment (no parent variables);
- rlimits set by the runner before the program runs: address space (memory), file size, open files,
  processes, no core dumps, and a CPU budget for the whole job; per test a CPU timer (ITIMER_PROF),
  a wall timer (ITIMER_REAL) and, in this process, a wall deadline that kills the group;
- Linux namespaces via `unshare` when the host allows it (root, or unprivileged user namespaces):
  no network (an empty network namespace), its own PID namespace (the parent is invisible; when the
  runner dies every process it made dies) with its own /proc, IPC and UTS;
- as root, with a world-readable interpreter, the runner drops to uid/gid 65534 (nobody);
- an audit hook installed before the program runs (see _sandbox_runner.py) that denies writes outside
  its directory, deleting files, subprocess/fork/exec, signals, sockets, ctypes and other processes'
  /proc. That hook is defence in depth, not a security boundary: CPython code can be subverted.
The program never sees the expected outputs; they are compared here.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

from h1r.utils.env import flag

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
NOBODY = 65534


@dataclass
class SandboxLimits:
    cpu_s: float = 6.0  # per test; LiveCodeBench's default timeout is 6 s
    wall_s: float = 10.0  # per test
    startup_s: float = 20.0  # interpreter start, imports and limits, before the first test starts
    memory_mb: int = 2048  # RLIMIT_AS
    max_output_bytes: int = 4 << 20  # per test
    fsize_mb: int = 32  # largest file the program may write
    nofile: int = 64
    nproc: int = 512  # RLIMIT_NPROC counts every process of the (real) uid; root ignores it
    audit_hook: bool = True  # False only to test the other layers on their own
    python: str | None = None  # interpreter for the programs (default: this one); stdlib only (-S)


@dataclass
class TestResult:
    status: str  # pass | wrong | timeout | error | output_limit | crashed | not_run
    detail: str = ""
    time_s: float = 0.0
    output: str = ""  # what the program printed or returned (first 1000 characters), for debugging


@dataclass
class SampleResult:
    passed: bool  # every test passed
    tests: list[TestResult] = field(default_factory=list)
    error: str = ""  # why it failed (the first failing test), "" when it passed

    @property
    def pass_fraction(self) -> float:
        return sum(t.status == "pass" for t in self.tests) / max(1, len(self.tests))


# ------------------------------------------------------------------------------------------ comparison


def _numeric_token_equal(a: str, b: str, float_tol: float) -> bool:
    try:
        x, y = Decimal(a), Decimal(b)
    except (InvalidOperation, ValueError):
        return False
    if not (x.is_finite() and y.is_finite()):
        return False
    if x == y:
        return True
    integral = all(c.isdigit() or c in "+-" for c in a + b)
    return not integral and abs(x - y) <= Decimal(repr(float_tol)) * max(Decimal(1), abs(y))


def stdout_matches(got: str, expected: str, float_tol: float = 1e-6) -> bool:
    """LiveCodeBench comparison: lines after strip; a differing line may still match token by token as
    numbers (exact for integers, `float_tol` relative/absolute when a decimal point is involved)."""
    g = [line.strip() for line in got.strip().split("\n")]
    e = [line.strip() for line in expected.strip().split("\n")]
    if len(g) != len(e):
        return False
    for a, b in zip(g, e):
        if a == b:
            continue
        ta, tb = a.split(), b.split()
        if len(ta) != len(tb) or not all(x == y or _numeric_token_equal(x, y, float_tol) for x, y in zip(ta, tb)):
            return False
    return True


def functional_matches(got_json: str, expected_json: str) -> bool:
    """LiveCodeBench functional comparison: parsed JSON equal (tuples were already lists)."""
    try:
        return json.loads(got_json) == json.loads(expected_json)
    except (ValueError, TypeError):
        return False


# ------------------------------------------------------------------------------------------ isolation


def _world_readable(path: str) -> bool:
    """Could uid `nobody` reach `path` (every parent directory searchable, the path itself readable)?"""
    p = Path(path).resolve()
    try:
        for parent in reversed(p.parents):
            if not os.stat(parent).st_mode & stat.S_IXOTH:
                return False
        return bool(os.stat(p).st_mode & stat.S_IROTH)
    except OSError:
        return False


@lru_cache(maxsize=8)
def drop_uid(python: str | None = None) -> int | None:
    """65534 when running as root and `python` and its stdlib are readable by nobody, else None."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    if python is None or python == sys.executable:
        python, stdlib = sys.executable, sysconfig.get_paths()["stdlib"]
    else:
        try:
            stdlib = subprocess.run([python, "-I", "-S", "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
                                    capture_output=True, text=True, timeout=30, env=_clean_env()).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    if stdlib and _world_readable(python) and _world_readable(stdlib):
        return NOBODY
    return None


@lru_cache(maxsize=1)
def isolation_prefix() -> tuple[str, ...]:
    """The `unshare` command line that works here (no network, own PID namespace), or () if none does.

    Set H1R_SANDBOX_UNSHARE=0 to skip namespaces (they are probed once per process).
    """
    if not flag("H1R_SANDBOX_UNSHARE", True) or not sys.platform.startswith("linux"):
        return ()
    exe = shutil.which("unshare")
    if not exe:
        return ()
    common = ["--net", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts"]
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    prefix = (exe, *user, *common, "--")
    try:
        probe = subprocess.run([*prefix, sys.executable, "-I", "-S", "-c", "import os; assert os.getpid() == 1"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=30, env=_clean_env())
    except (OSError, subprocess.SubprocessError):
        return ()
    return prefix if probe.returncode == 0 else ()


def _clean_env() -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/nonexistent"}


# ------------------------------------------------------------------------------------------ running


class _Lines:
    """Read newline-terminated records from a pipe with deadlines (select + os.read)."""

    def __init__(self, fd: int):
        self.fd, self.buf = fd, b""

    def read(self, deadline: float) -> bytes | None:
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except OSError:
        pass
    proc.wait()


def run_tests(
    code: str,
    tests: list[dict],
    testtype: str = "stdin",
    fn_name: str | None = None,
    limits: SandboxLimits | None = None,
    stop_on_failure: bool = True,
    float_tol: float = 1e-6,
) -> SampleResult:
    """Run `code` on `tests` ([{input, output}]) in one sandboxed process; passed iff all tests pass.

    testtype "stdin": the input is fed on stdin and stdout compared; "functional": `fn_name` of
    `class Solution` is called with one JSON value per input line and its JSON result compared.
    With `stop_on_failure` the process is killed at the first failing test (the rest: not_run).
    """
    limits = limits or SandboxLimits()
    if testtype not in ("stdin", "functional"):
        raise ValueError(f"testtype must be 'stdin' or 'functional', got {testtype!r}")
    if testtype == "functional" and not fn_name:
        raise ValueError("functional tests need fn_name")
    if not tests:
        raise ValueError("no tests")
    job = {
        "code": code, "mode": testtype, "fn_name": fn_name, "inputs": [str(t["input"]) for t in tests],
        "cpu_s": limits.cpu_s, "wall_s": limits.wall_s, "memory_bytes": limits.memory_mb << 20,
        "fsize_bytes": limits.fsize_mb << 20, "nofile": limits.nofile, "nproc": limits.nproc,
        "max_output_bytes": limits.max_output_bytes, "drop_uid": drop_uid(limits.python), "audit": limits.audit_hook,
    }
    results = [TestResult("not_run") for _ in tests]
    workdir = tempfile.mkdtemp(prefix="h1r-sandbox-")
    proc = None
    try:
        Path(workdir, "job.json").write_text(json.dumps(job), encoding="utf-8")
        if job["drop_uid"] is not None:
            os.chown(workdir, NOBODY, NOBODY)
        proc = subprocess.Popen(
            [*isolation_prefix(), limits.python or sys.executable, "-I", "-S", str(RUNNER)],
            cwd=workdir, env=_clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
        )
        lines = _Lines(proc.stdout.fileno())
        if lines.read(time.monotonic() + limits.startup_s) is None:
            results[0] = TestResult("crashed", "the sandbox did not start")
            tests = []
        deadline = time.monotonic() + limits.wall_s + 1.0
        for i, test in enumerate(tests):
            raw = lines.read(deadline)
            if raw is None:
                timed_out = time.monotonic() >= deadline
                results[i] = TestResult("timeout" if timed_out else "crashed",
                                        "wall-clock limit" if timed_out else "the program's process died")
                break
            results[i] = _judge(raw, str(test["output"]), testtype, float_tol)
            if results[i].status != "pass" and (stop_on_failure or results[i].detail.startswith("compile error")):
                break
            deadline = time.monotonic() + limits.wall_s + 1.0
    finally:
        if proc is not None:
            _kill_group(proc)
            proc.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)
    failed = next((t for t in results if t.status != "pass"), None)
    return SampleResult(failed is None, results, "" if failed is None else f"{failed.status}: {failed.detail}".strip())


def _judge(raw: bytes, expected: str, testtype: str, float_tol: float) -> TestResult:
    try:
        rec = json.loads(raw)
        status, out, err, t = rec["status"], rec["out"], rec.get("err", ""), float(rec.get("time", 0.0))
    except (ValueError, KeyError, TypeError):
        return TestResult("crashed", "unreadable result from the runner")
    if status != "ok":
        return TestResult(status, str(err), t)
    ok = functional_matches(out, expected) if testtype == "functional" else stdout_matches(out, expected, float_tol)
    return TestResult("pass" if ok else "wrong", "" if ok else "wrong answer", t, str(out)[:1000])
