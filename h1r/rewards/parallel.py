"""Grade many math answers fast, and never hang or crash on a hostile one.

Tier 1 (exact / numeric match, bounded cost) runs in the calling process. Only the pairs it cannot
decide go to math-verify, which runs in a small pool of worker *processes*
(`h1r.rewards._verify_worker`): sympy can spin forever on `\\boxed{9^{9^{9^{9}}}}`, and neither
SIGALRM (main thread only) nor a thread can stop it, but a process can be killed. A worker that
overruns its answer's timeout is killed, that answer scores False, and a fresh worker replaces it.

Safe to call from any thread, concurrently (the evaluation server and GRPO reward threads do).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from h1r.rewards.math import answers_equal, extract_answer, fast_equal, math_verify_equal

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 2000  # longer "answers" are wrong by definition (see answers_equal)


def _worker_env() -> dict[str, str]:
    """This environment, with h1r importable in the child even when it is not installed."""
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class _Worker:
    """One math-verify process speaking JSON lines over pipes."""

    def __init__(self, startup_timeout: float):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "h1r.rewards._verify_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to the caller, not to the workers
            env=_worker_env(),
        )
        self._buf = b""
        if self._read_line(startup_timeout) is None:
            self.kill()
            raise RuntimeError("math-verify worker did not start")

    def _read_line(self, timeout: float) -> bytes | None:
        """The next line from the worker, or None on timeout or death."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def ask(self, pred: str, gold: str, timeout: float) -> bool | None:
        """True/False from math-verify; None if the worker overran `timeout` or died."""
        try:
            self.proc.stdin.write(json.dumps({"pred": pred, "gold": gold, "timeout": timeout}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        line = self._read_line(timeout)
        if line is None:
            return None
        try:
            return bool(json.loads(line)["ok"])
        except (ValueError, KeyError, TypeError):
            return None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class VerifyPool:
    """Up to `workers` math-verify processes, started on demand and reused across calls."""

    def __init__(self, workers: int | None = None, startup_timeout: float = 120.0):
        self.workers = workers or max(1, min(8, os.cpu_count() or 1))
        self.startup_timeout = startup_timeout
        self._idle: list[_Worker] = []
        self._live = 0
        self._cond = threading.Condition()
        self._closed = False
        self._pid = os.getpid()  # a forked child must not share this pool's pipes
        self.timeouts = 0  # answers that overran their limit (their worker was replaced)

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self._closed:
                    raise RuntimeError("VerifyPool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._live < self.workers:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            return _Worker(self.startup_timeout)
        except BaseException:
            with self._cond:
                self._live -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker, healthy: bool) -> None:
        with self._cond:
            if healthy and not self._closed:
                self._idle.append(worker)
                self._cond.notify()
                return
            self._live -= 1
            self._cond.notify()
        worker.kill()

    def equal(self, pred: str, gold: str, timeout: float = 5.0) -> bool:
        """math-verify equivalence of one pair, False if it takes longer than `timeout` seconds."""
        try:
            worker = self._acquire()
        except (OSError, RuntimeError) as e:  # cannot start processes here: grade in-process instead
            _warn_in_process(e)
            return math_verify_equal(pred, gold, timeout)
        verdict = worker.ask(pred, gold, timeout)
        if verdict is None:
            with self._cond:
                self.timeouts += 1
        self._release(worker, healthy=verdict is not None)
        return bool(verdict)

    def equal_many(self, pairs: Sequence[tuple[str, str]], timeout: float = 5.0) -> list[bool]:
        if len(pairs) <= 1:
            return [self.equal(p, g, timeout) for p, g in pairs]
        with ThreadPoolExecutor(min(self.workers, len(pairs)), thread_name_prefix="h1r-verify") as ex:
            return list(ex.map(lambda pg: self.equal(pg[0], pg[1], timeout), pairs))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
            self._cond.notify_all()
        for w in idle:
            w.kill()


_warned = False


def _warn_in_process(err: Exception) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("math-verify workers unavailable (%s); grading in-process without a hard timeout", err)


_default_pool: VerifyPool | None = None
_default_lock = threading.Lock()


def get_pool() -> VerifyPool:
    """The process-wide pool (created on first use, again after a fork, closed at exit)."""
    global _default_pool
    with _default_lock:
        if _default_pool is None or _default_pool._closed or _default_pool._pid != os.getpid():
            _default_pool = VerifyPool()
            atexit.register(_default_pool.close)
        return _default_pool


def grade_answers(
    preds: Sequence[str | None], golds: Sequence, timeout: float = 5.0, pool: VerifyPool | None = None
) -> list[bool]:
    """Is each extracted answer equivalent to its gold? Fast tier here, math-verify in workers.

    Identical (pred, gold) pairs are checked once. Each math-verify check gets `timeout` seconds.
    """
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} answers but {len(golds)} gold answers")
    results: list[bool | None] = [None] * len(preds)
    pending: dict[tuple[str, str], list[int]] = {}
    for i, (pred, gold) in enumerate(zip(preds, golds)):
        gold = str(gold).strip()
        pred = pred.strip() if pred is not None else ""
        if not pred or len(pred) > MAX_ANSWER_CHARS:
            results[i] = False
            continue
        fast = fast_equal(pred, gold)
        if fast is not None:
            results[i] = fast
        else:
            pending.setdefault((pred, gold), []).append(i)
    if pending:
        keys = list(pending)
        verdicts = (pool or get_pool()).equal_many(keys, timeout)
        for key, ok in zip(keys, verdicts):
            for i in pending[key]:
                results[i] = ok
    return [bool(r) for r in results]


def grade_responses(
    responses: Sequence[str], golds: Sequence, timeout: float = 5.0, pool: VerifyPool | None = None
) -> list[bool]:
    """Binary math correctness of full responses (the last \\boxed{} after </think>), in parallel."""
    return grade_answers([extract_answer(r or "") for r in responses], golds, timeout, pool)


__all__ = ["VerifyPool", "get_pool", "grade_answers", "grade_responses", "answers_equal"]
