"""DeepConf on the H1R engine: `solve` one problem, `solve_many` problems concurrently.

Both run the engine-independent loop `run_deepconf` (h1r.deepconf.run) with a `generate` that turns
each call into ONE engine request of `n` samples of the problem's prompt: the engine prefills the
prompt once per request and forks the samples from it. Per-token confidences come from the
returned raw top-k logprobs; in the online phase the engine's per-token hook runs the same
`ConfidenceStopHook` arithmetic, so early stopping matches `replay_online` bit for bit.

Seeds: a problem's base seed gives call c of its `generate` (warm-up is c = 0, then each final
batch) the request seed `request_seed(base, c)`. The engine's sampling noise depends only on a
sample's seed and position, so a problem's traces do not depend on what else is in the batch:
`solve_many([...], seeds)` gives the same results as `solve` on each problem with its seed.

`solve_many` runs each problem's loop in a worker thread whose `generate` hands its request to
the caller's thread and waits; the caller adds every waiting request, steps the engine, and wakes
the workers whose requests finished. It steps only once every worker is waiting (or done), so all
problems' warm-ups enter the first batch together, each problem's final batches follow as soon
as its own consensus test asks for them, and the batch composition is reproducible.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import threading
from collections.abc import Callable, Sequence

from h1r.deepconf.confidence import token_confidences
from h1r.deepconf.online import ConfidenceStop
from h1r.deepconf.result import DeepConfResult, TraceRecord, make_trace
from h1r.deepconf.run import DeepConfConfig, GenerateFn, run_deepconf
from h1r.engine.outputs import CompletionOutput, RequestOutput
from h1r.engine.sampling_params import MAX_LOGPROBS, SamplingParams
from h1r.errors import ConfigError

# the decoding the DeepConf paper and the Falcon-H1R report use for reasoning models
DEFAULT_SAMPLING = SamplingParams(temperature=0.6, top_p=0.95, max_tokens=None)
# engine finish reason -> TraceRecord finish reason
_FINISH = {"hook": "confidence", "stop": "stop", "length": "length", "abort": "abort"}
_MASK63 = (1 << 63) - 1

Prompt = str | Sequence[dict] | Sequence[int]
SubmitFn = Callable[[list[int], SamplingParams], RequestOutput]


def request_seed(base: int, call: int) -> int:
    """The engine seed of a problem's `call`-th request (splitmix64 of base and call, non-negative int64)."""
    x = (int(base) + (call + 1) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (x ^ (x >> 31)) & _MASK63


def prompt_token_ids(llm, prompt: Prompt) -> list[int]:
    """str: raw text (no chat template, like `LLM.generate`); a list of {role, content} messages:
    the chat template with the generation prompt; a list of ints: token ids as they are."""
    tok = llm.tokenizer
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError("the problem text is empty")
        ids = tok.encode(prompt)
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(m, dict) for m in prompt):
        for i, m in enumerate(prompt):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ConfigError(f"message {i} needs string 'role' and 'content' fields, got {sorted(m)}")
        ids = tok.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                         for t in prompt):
        ids = [int(t) for t in prompt]
    else:
        raise ConfigError("a prompt must be a non-empty string, a list of chat messages or a list of token ids, "
                          f"got {type(prompt).__name__} {str(prompt)[:60]!r}")
    engine = llm.engine
    bad = [t for t in ids if not 0 <= t < engine.vocab_size]
    if bad:
        raise ConfigError(f"prompt token id {bad[0]} is outside the vocabulary (size {engine.vocab_size})")
    if not ids:
        raise ConfigError("the prompt encodes to no tokens")
    if len(ids) >= engine.max_model_len:
        raise ConfigError(f"the prompt has {len(ids)} tokens; the context is {engine.max_model_len}")
    return list(ids)


def _check(llm, cfg: DeepConfConfig, sampling: SamplingParams) -> None:
    if not 1 <= cfg.topk <= MAX_LOGPROBS:
        raise ConfigError(f"DeepConf topk must be in [1, {MAX_LOGPROBS}] (the engine's logprobs limit), got {cfg.topk}")
    if cfg.topk > llm.engine.vocab_size:
        raise ConfigError(f"DeepConf topk ({cfg.topk}) exceeds the vocabulary size ({llm.engine.vocab_size})")
    if not isinstance(sampling, SamplingParams):
        raise ConfigError(f"sampling must be a SamplingParams, got {type(sampling).__name__}")


def _hook_factory(stop: ConfidenceStop):
    """One `ConfidenceStopHook` per sequence, adapted to the engine's TokenEvent hook signature."""
    def factory():
        hook = stop.make_hook()
        return lambda ev: hook(ev.token_id, ev.topk_logprobs)
    return factory


def trace_of(c: CompletionOutput, cfg: DeepConfConfig, keep_text: bool = True,
             keep_confidences: bool = False) -> TraceRecord:
    """A TraceRecord from one engine completion; its token confidences come from the raw top-k
    logprobs and cover every generated token (for a stopped trace: through the stop token)."""
    if c.logprobs is None or c.logprobs.top.shape[0] != len(c.token_ids):
        raise RuntimeError("DeepConf needs the top-k logprobs of every generated token")
    confs = token_confidences(c.logprobs.top, cfg.topk)
    return make_trace(c.text, confs, _FINISH.get(c.finish_reason, str(c.finish_reason)), cfg.window, cfg.tail,
                      keep_text=keep_text, keep_confidences=keep_confidences)


def engine_generator(submit: SubmitFn, ids: list[int], cfg: DeepConfConfig, sampling: SamplingParams, seed: int,
                     keep_text: bool = True, keep_confidences: bool = False) -> GenerateFn:
    """The `generate(n, stop)` of `run_deepconf` for one prompt: each call is one request of n
    samples (`submit(ids, params) -> RequestOutput`), seeded `request_seed(seed, call)`."""
    calls = itertools.count()

    def generate(n: int, stop: ConfidenceStop | None) -> list[TraceRecord]:
        params = dataclasses.replace(
            sampling, n=n, seed=request_seed(seed, next(calls)), logprobs=cfg.topk, logprobs_mode="raw",
            stop_hook_factory=_hook_factory(stop) if stop is not None else None, hook_topk=cfg.topk)
        out = submit(ids, params)
        return [trace_of(c, cfg, keep_text, keep_confidences) for c in out.outputs]

    return generate


def _base_seed(seed: int | None, sampling: SamplingParams) -> int:
    if seed is None:
        seed = sampling.seed
    return int(seed) if seed is not None else random.SystemRandom().randrange(1 << 62)


def _annotate(result: DeepConfResult, seed: int, ids: list[int], sampling: SamplingParams) -> DeepConfResult:
    result.config["seed"] = seed
    result.config["prompt_tokens"] = len(ids)
    result.config["sampling"] = {k: getattr(sampling, k) for k in (
        "temperature", "top_p", "top_k", "min_p", "max_tokens", "repetition_penalty", "presence_penalty")}
    return result


def solve(llm, prompt: Prompt, cfg: DeepConfConfig | None = None, sampling: SamplingParams | None = None,
          seed: int | None = None, keep_text: bool = True, keep_confidences: bool = False) -> DeepConfResult:
    """Solve one problem with DeepConf on `llm` (an `h1r.engine.LLM`).

    `sampling` supplies the decoding (default T=0.6, top_p=0.95, no max_tokens); its n, seed,
    logprobs and hook fields are set per request. `seed` (default: sampling.seed, else random,
    recorded in result.config["seed"]) makes the run reproducible. `keep_confidences` stores
    every trace's token confidences (needed to replay the traces with `pool_generator`).
    """
    cfg = cfg or DeepConfConfig()
    sampling = sampling or DEFAULT_SAMPLING
    _check(llm, cfg, sampling)
    ids = prompt_token_ids(llm, prompt)
    base = _base_seed(seed, sampling)

    def submit(ids: list[int], params: SamplingParams) -> RequestOutput:
        return llm.generate([ids], params)[0]

    gen = engine_generator(submit, ids, cfg, sampling, base, keep_text, keep_confidences)
    pin = getattr(llm, "pin_prompt", None)
    key = pin(ids) if pin is not None else None  # one prefill for the warm-up and every final batch
    try:
        return _annotate(run_deepconf(gen, cfg), base, ids, sampling)
    finally:
        if key is not None:
            llm.unpin_prompt(key)


def solve_many(llm, prompts: Sequence[Prompt], cfg: DeepConfConfig | None = None,
               sampling: SamplingParams | None = None, seeds: Sequence[int] | None = None,
               keep_text: bool = True, keep_confidences: bool = False, progress: bool = False) -> list[DeepConfResult]:
    """Solve several problems concurrently through one engine; result i equals
    `solve(llm, prompts[i], cfg, sampling, seeds[i])`. `seeds` default: sampling.seed + i when
    sampling.seed is set, else random (each recorded in its result.config["seed"])."""
    cfg = cfg or DeepConfConfig()
    sampling = sampling or DEFAULT_SAMPLING
    _check(llm, cfg, sampling)
    if isinstance(prompts, str) or (prompts and isinstance(prompts[0], (int, dict))):
        raise ConfigError("solve_many takes a list of prompts; for one prompt use solve (or wrap it in a list)")
    prompts = list(prompts)
    all_ids = []
    for i, p in enumerate(prompts):
        try:
            all_ids.append(prompt_token_ids(llm, p))
        except ConfigError as e:
            raise ConfigError(f"problem {i}: {e}") from None
    if seeds is None:
        seeds = [sampling.seed + i if sampling.seed is not None else None for i in range(len(prompts))]
    elif len(seeds) != len(prompts):
        raise ConfigError(f"got {len(seeds)} seeds for {len(prompts)} problems")
    bases = [_base_seed(s, sampling) for s in seeds]
    if not prompts:
        return []
    batcher = _Batcher(llm)

    def worker(i: int) -> Callable[[], DeepConfResult]:
        def submit(ids: list[int], params: SamplingParams) -> RequestOutput:
            return batcher.submit(i, ids, params)

        gen = engine_generator(submit, all_ids[i], cfg, sampling, bases[i], keep_text, keep_confidences)
        return lambda: _annotate(run_deepconf(gen, cfg), bases[i], all_ids[i], sampling)

    return batcher.run([worker(i) for i in range(len(prompts))], progress)


@dataclasses.dataclass
class _Job:
    key: tuple[int, int]  # (problem, its request number): the order requests enter the engine
    ids: list[int]
    params: SamplingParams
    output: RequestOutput | None = None
    error: BaseException | None = None
    done: bool = False


class _Batcher:
    """Steps one engine on behalf of worker threads that each block on one request at a time."""

    def __init__(self, llm):
        self.engine = llm.engine
        self.cond = threading.Condition()
        self.queue: list[_Job] = []  # submitted by workers, not yet added to the engine
        self.busy = 0  # workers computing (neither waiting for a request nor finished)
        self.counts: dict[int, itertools.count] = {}
        self.closed = False  # the engine loop failed: new requests fail at once
        self._rids = (f"deepconf-{id(self):x}-{i}" for i in itertools.count())

    # ---- worker threads -----------------------------------------------------------------------------
    def submit(self, problem: int, ids: list[int], params: SamplingParams) -> RequestOutput:
        with self.cond:
            if self.closed:
                raise RuntimeError("the engine loop failed")
            n = next(self.counts.setdefault(problem, itertools.count()))
            job = _Job((problem, n), ids, params)
            self.queue.append(job)
            self.busy -= 1
            self.cond.notify_all()
            self.cond.wait_for(lambda: job.done)
        if job.error is not None:
            raise job.error
        return job.output

    def _wake(self, job: _Job, output=None, error=None) -> None:
        with self.cond:
            job.output, job.error, job.done = output, error, True
            self.busy += 1
            self.cond.notify_all()

    # ---- the caller's thread ------------------------------------------------------------------------
    def run(self, workers: list[Callable[[], DeepConfResult]], progress: bool = False) -> list[DeepConfResult]:
        results: list = [None] * len(workers)
        errors: list[BaseException | None] = [None] * len(workers)

        def body(i: int):
            try:
                results[i] = workers[i]()
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                errors[i] = e
            finally:
                with self.cond:
                    self.busy -= 1
                    self.cond.notify_all()

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(workers), desc="deepconf", unit="problem", dynamic_ncols=True)
        self.busy = len(workers)
        threads = [threading.Thread(target=body, args=(i,), name=f"deepconf-{i}", daemon=True)
                   for i in range(len(workers))]
        for t in threads:
            t.start()
        inflight: dict[str, _Job] = {}
        try:
            while True:
                with self.cond:
                    self.cond.wait_for(lambda: self.busy == 0)  # every worker waits on a request or is done
                    new, self.queue = sorted(self.queue, key=lambda j: j.key), []
                for job in new:
                    rid = next(self._rids)
                    try:
                        self.engine.add_request(rid, job.ids, job.params)
                    except Exception as e:  # bad parameters: that problem fails, the others go on
                        self._wake(job, error=e)
                        continue
                    inflight[rid] = job
                if not inflight:
                    with self.cond:
                        if self.busy == 0 and not self.queue:
                            break  # every worker has finished
                    continue
                self.engine.step()
                for rid in [r for r in inflight if self.engine.requests[r].finished]:
                    job = inflight.pop(rid)
                    out = self.engine.get_output(rid)
                    self.engine.release(rid)
                    self._wake(job, output=out)
                if bar is not None:
                    bar.n = sum(r is not None or e is not None for r, e in zip(results, errors))
                    bar.set_postfix(tok=self.engine.stats.generated_tokens, refresh=False)
                    bar.refresh()
        except BaseException as e:
            with self.cond:
                self.closed = True
            for rid, job in inflight.items():
                self.engine.abort_request(rid)
                self.engine.release(rid)
                self._wake(job, error=RuntimeError("the engine loop failed"))
            with self.cond:  # wake workers whose request never reached the engine
                for job in self.queue:
                    job.error, job.done = RuntimeError("the engine loop failed"), True
                    self.busy += 1
                self.queue = []
                self.cond.notify_all()
            for t in threads:
                t.join()
            raise e
        finally:
            if bar is not None:
                bar.close()
        for t in threads:
            t.join()
        for e in errors:
            if e is not None:
                raise e
        return results
