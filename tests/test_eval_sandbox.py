"""Code sandbox: real LiveCodeBench problems pass with correct code; hostile programs score 0, stay
within their limits and leave the host and this test process unharmed."""

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from h1r.eval import sandbox
from h1r.eval.benchmarks import load_benchmark
from h1r.eval.sandbox import SandboxLimits, functional_matches, run_tests, stdout_matches
from h1r.rewards.code import extract_code, run_samples
from h1r.rewards.registry import get_reward

LIMITS = SandboxLimits(cpu_s=0.5, wall_s=1.0, memory_mb=512)
ONE = [{"input": "\n", "output": "1\n"}]  # every hostile program prints 1 only if its attack worked


@pytest.fixture(scope="module")
def lcb():
    return {p.meta["id"]: p for p in load_benchmark("livecodebench")}


SOLUTIONS = {
    0: "n = int(input())\na = list(map(int, input().split()))\nprint(a.index(sorted(a)[-2]) + 1)\n",
    1: "import sys\ny = int(sys.stdin.buffer.read())\nprint(366 if (y % 4 == 0 and y % 100) or y % 400 == 0 else 365)\n",
    23: "x = open(0).read().strip()\nif '.' in x:\n    x = x.rstrip('0').rstrip('.')\nprint(x)\n",
    27: "def main():\n    n, k = map(int, input().split())\n    a = input().split()\n    print(*(a[n - k:] + a[:n - k]))\n\n"
        "if __name__ == '__main__':\n    main()\n",
    7: "class Solution:\n    def finalPositionOfSnake(self, n: int, commands: List[str]) -> int:\n"
       "        d = {'UP': -n, 'DOWN': n, 'LEFT': -1, 'RIGHT': 1}\n        return sum(d[c] for c in commands)\n",
    9: "class Solution:\n    def winningPlayerCount(self, n: int, pick: List[List[int]]) -> int:\n"
       "        c = Counter(map(tuple, pick))\n        return sum(any(c[(i, y)] > i for y in range(11)) for i in range(n))\n",
    10: "class Solution:\n    def minFlips(self, grid):\n        rows = sum(r[j] != r[-1 - j] for r in grid for j in range(len(r) // 2))\n"
        "        cols = list(zip(*grid))\n        return min(rows, sum(c[j] != c[-1 - j] for c in cols for j in range(len(c) // 2)))\n",
}


def test_correct_solutions_pass_real_problems(lcb):
    kinds = {lcb[i].meta["testtype"] for i in SOLUTIONS}
    assert kinds == {"stdin", "functional"}
    responses = [f"<think>plan</think>\n```python\n{code}```" for code in SOLUTIONS.values()]
    samples = [lcb[i].to_sample() for i in SOLUTIONS]
    results = run_samples(responses, samples)
    assert [r.error for r in results] == [""] * len(SOLUTIONS)
    assert all(len(r.tests) >= 2 and all(t.status == "pass" for t in r.tests) for r in results)
    wrong = SOLUTIONS[1].replace("366 if", "365 if")
    assert get_reward("code")([f"```python\n{wrong}```"], [lcb[1].to_sample()]) == [0.0]


def test_a_sample_passes_only_if_all_tests_pass(lcb):
    code = "y = int(input())\nprint(365 if y == 2023 else 366)\n"  # right on 3 of the 4 tests
    r = run_tests(code, lcb[1].meta["tests"], "stdin", stop_on_failure=False)
    assert [t.status for t in r.tests] == ["pass", "pass", "wrong", "pass"]
    assert not r.passed and r.pass_fraction == 0.75
    r = run_tests(code, lcb[1].meta["tests"], "stdin")
    assert [t.status for t in r.tests] == ["pass", "pass", "wrong", "not_run"]


def _hostile_cases(victim: Path, port: int) -> dict[str, str]:
    return {
        "infinite loop": "while True:\n    pass\nprint(1)",
        "sleep, swallowing timeouts": "import time\nwhile True:\n    try:\n        time.sleep(100)\n    except BaseException:\n        pass",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "bounded fork": "import os\npid = os.fork()\nprint(1 if pid == 0 else 1, end='')",
        "subprocess": "import subprocess\nsubprocess.run(['true'])\nprint(1)",
        "os.system": "import os\nos.system('true')\nprint(1)",
        "multiprocessing": "import multiprocessing\nprint(1)",
        "memory bomb": "x = bytearray(16 * 1024 ** 3)\nprint(1)",
        "growing memory": "a = []\nwhile True:\n    a.append(bytearray(10 ** 7))",
        "write outside": f"open({str(victim / 'pwned')!r}, 'w').write('x')\nprint(1)",
        "os.open outside": f"import os\nos.close(os.open({str(victim / 'pwned2')!r}, os.O_WRONLY | os.O_CREAT))\nprint(1)",
        "delete a file": f"import os\nos.remove({str(victim / 'keep.txt')!r})\nprint(1)",
        "symlink out": f"import os\nos.symlink({str(victim)!r}, 'link')\nopen('link/pwned3', 'w').write('x')\nprint(1)",
        "network socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint(1)",
        "raw _socket": f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint(1)",
        "read environment": "import os\nprint(1 if any('hunter2' in v for v in os.environ.values()) else 0)",
        "read parent /proc environ": "import os\nfound = 0\nfor d in os.listdir('/proc'):\n    if d.isdigit():\n"
                                     "        try:\n            found |= b'hunter2' in open(f'/proc/{d}/environ', 'rb').read()\n"
                                     "        except OSError:\n            pass\nprint(int(found))",
        "kill parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint(1)",
        "kill parent group": "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\nprint(1)",
        "ctypes": "import ctypes\nprint(1)",
        "raise limits": "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\nprint(1)",
        "flood stdout": "while True:\n    print('x' * 10000)",
    }


def _ppid(pid: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return 0


def _ours(pid: str) -> bool:
    """Started by this test process (a descendant), or orphaned (re-parented to init): runners of other
    test processes running on the same machine at the same time are not ours to count."""
    me, p = os.getpid(), _ppid(pid)
    while p > 1:
        if p == me:
            return True
        p = _ppid(str(p))
    return p == 1


def _runner_processes(settle_s: float = 3.0) -> list[str]:
    """Sandbox runners of ours still alive after up to `settle_s`. A runner SIGKILLed a moment ago can
    outlive the wait on its `unshare` parent by a few ms while the kernel tears down its memory (a
    512 MB memory bomb takes longest); that is dying, not left running."""
    deadline = time.monotonic() + settle_s
    while True:
        found = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if b"_sandbox_runner.py" in Path(f"/proc/{d}/cmdline").read_bytes() and _ours(d):
                        found.append(d)
                except OSError:
                    pass
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


@pytest.fixture()
def victim(tmp_path, monkeypatch):
    monkeypatch.setenv("H1R_TEST_SECRET", "hunter2")
    (tmp_path / "keep.txt").write_text("precious")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.05)
    yield tmp_path, server
    server.close()


def _assert_all_hostile_fail(victim_dir: Path, server: socket.socket, limits: SandboxLimits, names=None):
    cases = {n: c for n, c in _hostile_cases(victim_dir, server.getsockname()[1]).items() if not names or n in names}

    def run(code):
        start = time.monotonic()
        result = run_tests(code, ONE, "stdin", limits=limits)
        return result, time.monotonic() - start

    with ThreadPoolExecutor(4) as ex:  # as the evaluator runs them: several sandboxes at once
        outcomes = dict(zip(cases, ex.map(run, cases.values())))
    for name, (r, elapsed) in outcomes.items():
        assert not r.passed, name
        assert elapsed < limits.wall_s + 3.0, (name, elapsed)
        assert "hunter2" not in repr(r), name
    with pytest.raises(socket.timeout):
        server.accept()  # no connection ever arrived
    assert not (victim_dir / "pwned").exists() and not (victim_dir / "pwned2").exists()
    assert not (victim_dir / "pwned3").exists()
    assert (victim_dir / "keep.txt").read_text() == "precious"
    assert _runner_processes() == []  # nothing left running
    return {name: r for name, (r, _) in outcomes.items()}


def test_hostile_programs_score_zero_and_harm_nothing(victim):
    results = _assert_all_hostile_fail(*victim, LIMITS)
    # failing for the intended reason, not because the sandbox itself broke
    assert results["infinite loop"].tests[0].status == "timeout"
    assert results["sleep, swallowing timeouts"].tests[0].status == "timeout"
    assert "MemoryError" in results["memory bomb"].error
    # touching 512 MB costs page-fault CPU time: on a loaded machine the 0.5 s CPU limit may come first
    grow = results["growing memory"]
    assert "MemoryError" in grow.error or grow.tests[0].status == "timeout", grow.error
    assert results["flood stdout"].tests[0].status == "output_limit"
    assert "not allowed" in results["fork bomb"].error and "not allowed" in results["kill parent"].error


def test_hostile_programs_without_namespaces(victim, monkeypatch):
    """Where `unshare` is unavailable the other layers still hold."""
    monkeypatch.setenv("H1R_SANDBOX_UNSHARE", "0")
    sandbox.isolation_prefix.cache_clear()
    try:
        assert sandbox.isolation_prefix() == ()
        _assert_all_hostile_fail(*victim, LIMITS, names={"network socket", "kill parent", "kill parent group",
                                                         "read parent /proc environ", "fork bomb", "write outside"})
    finally:
        monkeypatch.delenv("H1R_SANDBOX_UNSHARE")
        sandbox.isolation_prefix.cache_clear()


@pytest.mark.skipif(not sandbox.isolation_prefix(), reason="no usable unshare here")
def test_namespaces_hold_without_the_audit_hook(victim):
    """The namespace and rlimit layers alone: no network, no other process's /proc, bounded memory."""
    limits = SandboxLimits(cpu_s=0.5, wall_s=1.0, memory_mb=512, audit_hook=False)
    _assert_all_hostile_fail(*victim, limits, names={"network socket", "raw _socket", "read parent /proc environ",
                                                     "read environment", "memory bomb", "infinite loop"})
    # In its own PID namespace the parent is invisible (getppid() == 0): whatever the program kills,
    # it cannot be this process.
    for name in ("kill parent", "kill parent group"):
        run_tests(_hostile_cases(victim[0], 0)[name], ONE, limits=limits)
    assert _runner_processes() == []


def _unprivileged_python():
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and sandbox.drop_uid(candidate) == sandbox.NOBODY:
            return candidate
    return None


@pytest.mark.skipif(_unprivileged_python() is None, reason="needs root and a world-readable python3")
def test_root_drops_to_nobody(victim, lcb):
    """As root with a world-readable interpreter, programs run as uid 65534: file permissions alone
    then stop writes outside the sandbox and signals to this process, even without the audit hook."""
    python = _unprivileged_python()
    ok = run_tests(SOLUTIONS[0], lcb[0].meta["tests"], limits=SandboxLimits(python=python))
    assert ok.passed
    uid = run_tests("import os\nprint(os.getuid(), os.getgid())", [{"input": "", "output": "65534 65534"}],
                    limits=SandboxLimits(python=python))
    assert uid.passed
    limits = SandboxLimits(cpu_s=0.5, wall_s=1.0, memory_mb=512, audit_hook=False, python=python)
    _assert_all_hostile_fail(*victim, limits, names={"write outside", "os.open outside", "delete a file", "symlink out",
                                                     "read parent /proc environ", "network socket", "read environment"})
    for name in ("kill parent", "kill parent group"):  # whatever these reach, it is not this process
        run_tests(_hostile_cases(victim[0], 0)[name], ONE, limits=limits)


def test_output_comparison_like_livecodebench():
    assert stdout_matches("3 4 5\r\n1 2  \n\n", "3 4 5\n1 2\n")
    assert stdout_matches("1.0\n", "1\n")
    assert stdout_matches("0.33333334", "0.333333333")
    assert not stdout_matches("1000001", "1000000")
    assert not stdout_matches("Yes", "yes")
    assert not stdout_matches("1\n2", "1")
    assert functional_matches("[1, 2]", "[1,2]") and not functional_matches("[1, 2]", "[2, 1]")
    assert not functional_matches("not json", "1")


def test_functional_details():
    tests = [{"input": "[3, 1, 2]\n2", "output": "[1, 2]"}]
    tuple_code = "class Solution:\n    def f(self, a, k):\n        return tuple(sorted(a)[:k])\n"
    assert run_tests(tuple_code, tests, "functional", "f").passed  # tuples compare as lists
    assert run_tests("def f(a, k):\n    return sorted(a)[:k]\n", tests, "functional", "f").passed
    r = run_tests("class Solution:\n    def g(self, a, k):\n        return 1\n", tests, "functional", "f")
    assert not r.passed and "no Solution.f" in r.error
    r = run_tests("class Solution:\n    def f(self, a, k):\n        return {1, 2}\n", tests, "functional", "f")
    assert not r.passed and "not JSON serializable" in r.error


def test_program_errors_are_failures_not_crashes():
    assert "compile error" in run_tests("def (:", ONE).error
    assert "ZeroDivisionError" in run_tests("print(1 // 0)", ONE).error
    assert run_tests("print(1)\nexit()", ONE).passed  # exit() works although -S skips site.py
    assert "SystemExit(3)" in run_tests("import sys\nprint(1)\nsys.exit(3)", ONE).error


def test_bad_arguments():
    with pytest.raises(ValueError, match="no tests"):
        run_tests("print(1)", [])
    with pytest.raises(ValueError, match="fn_name"):
        run_tests("x", ONE, "functional")
    with pytest.raises(ValueError, match="testtype"):
        run_tests("x", ONE, "interactive")


def test_extract_code():
    assert extract_code("<think>```python\nold\n```</think>\n```python\nnew\n```") == "new\n"
    assert extract_code("```\nplain\n```") == "plain\n"
    assert extract_code("```python\na\n```\n```text\nsample output\n```") == "a\n"
    assert extract_code("no code") is None
    assert get_reward("code")(["no code"], [{"tests": ONE}]) == [0.0]
