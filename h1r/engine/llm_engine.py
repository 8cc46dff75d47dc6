"""LLMEngine: requests in, tokens out, one `step()` at a time."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from h1r.engine.cache import CacheSpec, EngineCache
from h1r.engine.context import PrefillSegment, StepBatch
from h1r.engine.detokenizer import IncrementalDetokenizer
from h1r.engine.outputs import CompletionOutput, RequestOutput
from h1r.engine.sampler import SamplingBatch, sample, topk_logprobs, _mix64
from h1r.engine.sampling_params import SamplingError, SamplingParams, TokenEvent
from h1r.engine.runner import FastRunner, ReferenceRunner
from h1r.engine.scheduler import Scheduler
from h1r.engine.sequence import PrefillGroup, Request, Sequence, Status


@dataclass
class EngineConfig:
    max_num_seqs: int = 64  # sequences generating at once (each holds one Mamba state slot)
    max_num_batched_tokens: int = 2048  # token budget per step (decodes + prefill chunks)
    max_model_len: int | None = None  # default: min(config max_position_embeddings, 32768)
    page_size: int = 16  # tokens per K/V page
    cache_memory: int | None = None  # bytes for K/V pages + state slots; None: sized automatically
    gpu_memory_utilization: float = 0.9  # on CUDA, when cache_memory is None
    ssm_state_dtype: str = "float32"  # "float32" or "bfloat16"
    max_snapshots: int = 8  # prompts prefilled and waiting for their samples to fork
    seed: int = 0  # seeds for requests that give none
    cuda_graphs: bool = True  # capture decode steps in CUDA graphs (fast path on CUDA only)
    async_decode: bool | None = None  # launch decode step t+1 before the host processes step t (default: CUDA)

    def validate(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1 or self.page_size < 1 or self.max_snapshots < 1:
            raise SamplingError("max_num_seqs, max_num_batched_tokens, page_size and max_snapshots must be >= 1")
        if self.ssm_state_dtype not in ("float32", "bfloat16"):
            raise SamplingError(f"ssm_state_dtype must be float32 or bfloat16, got {self.ssm_state_dtype!r}")


def _seq_topk(p: SamplingParams) -> int:
    """How many top logprobs a sample keeps per token (its own request's need, not the batch's)."""
    return max(p.logprobs or 0, p.hook_topk if p.stop_hook_factory else 0)


@dataclass
class _Inflight:
    """A decode step launched on the device whose sampled tokens have not been processed yet."""

    seqs: list[Sequence]
    tokens: torch.Tensor  # [S] sampled ids on the device (the next step's input)
    host: torch.Tensor  # [S] the same, copied to the host
    logprobs: tuple | None  # (chosen [S], top [S,k], top ids [S,k]) host copies, or None
    event: object | None  # CUDA event marking the copies done


@dataclass
class EngineStats:
    steps: int = 0
    prefill_tokens: int = 0  # prompt/recompute tokens run through the model
    decode_tokens: int = 0
    generated_tokens: int = 0
    finished: dict = field(default_factory=dict)  # finish reason -> count


@dataclass
class SeqUpdate:
    """A sequence gained tokens (and maybe finished) during a step."""

    request_id: str
    index: int
    new_token_ids: list[int]
    new_text: str
    finished: bool


class LLMEngine:
    def __init__(self, model, tokenizer, config: EngineConfig | None = None, fast=None):
        """`fast`: a FastFalconH1 built from `model` to run instead of the reference path (GPU)."""
        self.model, self.tokenizer = model, tokenizer
        self.config = config = config or EngineConfig()
        config.validate()
        mcfg = model.config
        self.device = fast.device if fast is not None else model.device
        self.dtype = fast.dtype if fast is not None else model.dtype
        self.max_model_len = config.max_model_len or min(mcfg.max_position_embeddings, 32768)
        ssm_dtype = getattr(torch, config.ssm_state_dtype)
        num_slots = config.max_num_seqs + config.max_snapshots + (1 if fast is not None else 0)
        pages_per_seq = -(-self.max_model_len // config.page_size)
        extra_pages = 1 if fast is not None else 0  # the scratch page of graph padding rows
        budget = config.cache_memory or self._default_budget(mcfg, num_slots, pages_per_seq + extra_pages, ssm_dtype)
        spec = CacheSpec.from_budget(mcfg, budget, config.page_size, num_slots, self.dtype, ssm_dtype,
                                     min_pages=pages_per_seq + (1 if fast is not None else 0))
        self.cache = EngineCache(mcfg, spec, self.device)
        self.scheduler = Scheduler(self.cache, config.max_num_seqs, config.max_snapshots,
                                   config.max_num_batched_tokens)
        self._reserved_pages = self._reserved_slots = 0
        if fast is not None:  # graph padding rows write into a scratch slot and page no sequence owns
            scratch_slot, scratch_page = self.scheduler.slots.allocate(), self.scheduler.pages.allocate()
            self._reserved_pages = self._reserved_slots = 1
            self.runner = FastRunner(fast, self.cache, config.max_num_seqs, self.max_model_len, scratch_slot,
                                     scratch_page, use_graphs=config.cuda_graphs)
        else:
            self.runner = ReferenceRunner(model, self.cache)
        self.requests: dict[str, Request] = {}
        self.stats = EngineStats()
        self._rng = np.random.default_rng(config.seed)
        self._stage_ring: list[torch.Tensor | None] = [None, None, None]
        self._stage, self._stage_off, self._stage_i = None, 0, 0
        self._inflight: _Inflight | None = None
        self._pinned: dict = {}
        self.async_decode = (self.device.type == "cuda") if config.async_decode is None else config.async_decode
        self._arrivals = itertools.count()
        self._stop_ids = set(getattr(tokenizer, "stop_token_ids", []) or []) | set(mcfg.eos_token_ids)
        self.vocab_size = mcfg.vocab_size

    def _default_budget(self, mcfg, num_slots, pages_per_seq, ssm_dtype) -> int:
        c = self.config
        want = num_slots * CacheSpec.bytes_per_slot(mcfg, self.dtype, ssm_dtype) + \
            (c.max_num_seqs * (pages_per_seq - 1) + 1) * CacheSpec.bytes_per_page(mcfg, c.page_size, self.dtype) + \
            c.max_num_seqs * CacheSpec.bytes_per_page(mcfg, c.page_size, self.dtype)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            reserve = 2 << 30  # activations, logits, graphs
            return int(min(want, max(0, free * c.gpu_memory_utilization - reserve)))
        return int(min(want, 1 << 30))

    # ---- requests ---------------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> Request:
        if request_id in self.requests:
            raise SamplingError(f"duplicate request id {request_id!r}")
        params.validate()
        if isinstance(prompt, str):
            text, ids = prompt, self.tokenizer.encode(prompt)
        else:
            text, ids = None, [int(t) for t in prompt]
        if not ids:
            raise SamplingError("the prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise SamplingError(f"prompt token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        if params.stop_token_ids and max(params.stop_token_ids) >= self.vocab_size:
            raise SamplingError(f"stop token id {max(params.stop_token_ids)} is outside the vocabulary "
                                f"(size {self.vocab_size})")
        room = self.max_model_len - len(ids)
        if room < 1:
            raise SamplingError(f"the prompt has {len(ids)} tokens; the context is {self.max_model_len}")
        if params.max_tokens is not None and params.max_tokens > room:
            raise SamplingError(f"max_tokens={params.max_tokens} plus the {len(ids)}-token prompt exceeds the "
                                f"context length {self.max_model_len}")
        if params.seed is not None:
            base = int(_mix64(torch.tensor([params.seed], dtype=torch.int64))[0])
            seeds = [int(_mix64(torch.tensor([base + i], dtype=torch.int64))[0]) for i in range(params.n)]
        else:
            seeds = [int(s) for s in self._rng.integers(0, 2**62, size=params.n)]
        req = Request(request_id, text, ids, params, seeds, next(self._arrivals), samples=[None] * params.n,
                      stop_ids=frozenset(self._stop_ids_for(params)))
        self.requests[request_id] = req
        self._group(ids).pending.extend((req, i) for i in range(params.n))
        return req

    def _group(self, ids: list[int]) -> PrefillGroup:
        key = tuple(ids)
        group = self.scheduler.groups.get(key)
        if group is None:
            snap = Sequence(None, -1, list(ids), len(ids), seed=0, is_snapshot=True)
            group = PrefillGroup(key, snap)
            snap.group = group
            self.scheduler.groups[key] = group
            self.scheduler.waiting.append(snap)
        return group

    def pin_prompt(self, prompt_ids: list[int]) -> tuple[int, ...]:
        """Keep this prompt's prefill alive between requests (e.g. DeepConf's warm-up and final batches of
        one problem): it is computed once, and every later request with this prompt forks from it.
        Holds one snapshot slot until unpin_prompt(key)."""
        ids = [int(t) for t in prompt_ids]
        if not ids or any(not 0 <= t < self.vocab_size for t in ids) or len(ids) >= self.max_model_len:
            raise SamplingError("pin_prompt: the prompt must be non-empty, in the vocabulary and fit the context")
        group = self._group(ids)
        group.pins += 1
        return group.key

    def unpin_prompt(self, key: tuple[int, ...]) -> None:
        group = self.scheduler.groups.get(tuple(key))
        if group is None or group.pins == 0:
            return
        group.pins -= 1
        if not group.pins and not group.pending:
            self.scheduler.free(group.snapshot)
            self.scheduler.groups.pop(group.key, None)

    def abort_request(self, request_id: str) -> bool:
        req = self.requests.get(request_id)
        if req is None or req.finished:
            return False
        req.aborted = True
        for seq in req.samples:
            if seq is not None and not seq.finished:
                self._finish(seq, "abort")
        for i, seq in enumerate(req.samples):  # samples never forked count as aborted too
            if seq is None:
                req.samples[i] = self._make_child(req, i, started=False)
                self._finish(req.samples[i], "abort")
        self._drop_dead_groups()
        return True

    def _drop_dead_groups(self):
        for g in list(self.scheduler.groups.values()):
            while g.pending and g.pending[0][0].aborted:
                g.pending.popleft()
            g.pending = type(g.pending)(x for x in g.pending if not x[0].aborted)
            if not g.pending and not g.pins:
                self.scheduler.free(g.snapshot)
                self.scheduler.groups.pop(g.key, None)

    def has_unfinished(self) -> bool:
        return self._inflight is not None or any(not r.finished for r in self.requests.values())

    # ---- one step ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[SeqUpdate]:
        updates: list[SeqUpdate] = []
        self._next_staging()
        if self._inflight is not None:  # launch the next decode step, then process the one in flight
            prev, nxt = self._inflight, self._try_launch_next(self._inflight)
            self._complete(prev, updates)
            self._inflight = nxt
            if nxt is not None:
                return updates
        self._fork_ready(updates)
        sched = self.scheduler.schedule()
        if sched.empty:
            if self.scheduler.has_work() and not self.scheduler.running and not self.scheduler.prefilling:
                raise RuntimeError("the engine cannot make progress: the cache is too small for the waiting "
                                   "sequences (raise cache_memory or lower max_model_len)")
            return updates
        if not sched.prefills and self._decode_only_ok(sched.decodes):
            inflight = self._launch_decode(sched.decodes)
            if self.async_decode:
                self._inflight = inflight  # its tokens are processed by the next step()
            else:
                self._complete(inflight, updates)
            return updates
        batch, rows, row_seqs = self._build_batch(sched)
        logits = self.runner.run(batch, rows)  # [len(rows), V] fp32
        self.stats.steps += 1
        self.stats.decode_tokens += len(sched.decodes)
        self.stats.prefill_tokens += sum(n for _, n in sched.prefills)
        for seq in sched.decodes:
            seq.num_computed += 1
        for seq, n in sched.prefills:
            seq.num_computed += n
            if seq.num_computed == seq.num_tokens:
                self.scheduler.finish_prefill(seq)
        sample_seqs, sample_rows = [], []
        for r, seq in enumerate(row_seqs):
            if seq.is_snapshot:
                group = self.scheduler.groups[tuple(seq.token_ids)]
                group.last_logits = logits[r].clone()
            else:
                sample_seqs.append(seq)
                sample_rows.append(r)
        if sample_seqs:
            self._sample_and_append(sample_seqs, logits[sample_rows], updates)
        self._fork_ready(updates)
        return updates

    def _next_staging(self) -> None:
        """Each step stages its host->device copies in the next of three pinned buffers: with at most two
        steps in flight, a buffer is never rewritten while its copy may still be pending."""
        self._stage_i = (self._stage_i + 1) % 3
        self._stage = self._stage_ring[self._stage_i]
        self._stage_off = 0

    def _to_device(self, arr: np.ndarray) -> torch.Tensor:
        """Host array -> device tensor. On CUDA through persistent pinned staging buffers (allocating pinned
        memory per call costs more than the copy)."""
        if self.device.type != "cuda":
            return torch.from_numpy(arr)
        n = arr.size
        if self._stage is None or self._stage_off + n > self._stage.numel():
            self._stage = torch.empty(max(1 << 20, 4 * n), dtype=torch.int64).pin_memory()
            self._stage_ring[self._stage_i] = self._stage
            self._stage_off = 0
        buf = self._stage[self._stage_off:self._stage_off + n]
        self._stage_off += n
        if arr.dtype == np.float32:  # floats ride in float64 slots of the same buffer
            host = buf.view(torch.float64)
            host.copy_(torch.from_numpy(arr.astype(np.float64).reshape(-1)))
            return host.to(self.device, non_blocking=True).view(arr.shape).float()
        buf.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64).reshape(-1)))
        return buf.to(self.device, non_blocking=True).view(arr.shape)

    def _build_batch(self, sched):
        ps = self.cache.spec.page_size
        dev = self.device
        S = len(sched.decodes)
        dec = np.empty((4, S), dtype=np.int64)  # token, position, kv index, slot
        max_pages = max((len(s.pages) for s in sched.decodes), default=1)
        table = np.zeros((S, max_pages), dtype=np.int64)
        for i, seq in enumerate(sched.decodes):
            p = seq.num_computed
            dec[0, i], dec[1, i] = seq.token_ids[p], p
            dec[2, i] = seq.pages[p // ps] * ps + p % ps
            dec[3, i] = seq.slot
            table[i, :len(seq.pages)] = seq.pages
        ids, pos, kv = dec[0].tolist(), dec[1].tolist(), dec[2].tolist()
        prefills, rows, row_seqs = [], list(range(S)), list(sched.decodes)
        offset = S
        for seq, n in sched.prefills:
            p0 = seq.num_computed
            ids.extend(seq.token_ids[p0:p0 + n])
            pos.extend(range(p0, p0 + n))
            kv.extend(seq.pages[p // ps] * ps + p % ps for p in range(p0, p0 + n))
            npages = -(-(p0 + n) // ps)
            prefills.append(PrefillSegment(offset, n, seq.slot, torch.tensor(seq.pages[:npages], device=dev), p0))
            if p0 + n == seq.num_tokens:
                rows.append(offset + n - 1)
                row_seqs.append(seq)
            offset += n
        flat = self._to_device(np.array([ids, pos, kv], dtype=np.int64))
        d = self._to_device(np.concatenate([dec[3:4], dec[1:2] + 1]))  # slots, context
        batch = StepBatch(input_ids=flat[0], positions=flat[1], kv_index=flat[2], decode_slots=d[0],
                          decode_pages=self._to_device(table), decode_context=d[1], prefills=prefills)
        return batch, self._to_device(np.asarray(rows, dtype=np.int64)), row_seqs

    # ---- sampling and post-processing --------------------------------------------------------------
    def _sampling_batch(self, seqs: list[Sequence], ahead: list[int] | None = None) -> SamplingBatch:
        """`ahead[i]`: tokens of seqs[i] sampled on the device but not yet appended on the host."""
        dev, V = self.device, self.vocab_size
        ps = [s.request.params for s in seqs]
        ahead = ahead or [0] * len(seqs)
        f = lambda vals, dt=torch.float32: torch.tensor(vals, dtype=dt, device=dev)
        fl = self._to_device(np.array([[p.temperature, p.top_p, p.min_p] for p in ps], dtype=np.float32).T.copy())
        it = self._to_device(np.array([[p.effective_top_k, s.seed, s.num_output + a] for s, p, a in zip(seqs, ps, ahead)],
                                      dtype=np.int64).T.copy())
        sb = SamplingBatch(
            temperature=fl[0], top_p=fl[1], top_k=it[0], min_p=fl[2], seeds=it[1], positions=it[2],
            all_greedy=all(p.greedy for p in ps), needs_top_p=any(p.top_p < 1 for p in ps),
            needs_top_k=any(p.effective_top_k > 0 for p in ps), needs_min_p=any(p.min_p > 0 for p in ps))
        if any(p.repetition_penalty != 1.0 for p in ps):
            seen = torch.zeros(len(seqs), V, dtype=torch.bool, device=dev)
            for i, s in enumerate(seqs):
                seen[i, torch.tensor(s.token_ids, device=dev)] = True
            sb.seen_mask, sb.repetition_penalty = seen, f([p.repetition_penalty for p in ps])
        if any(p.presence_penalty or p.frequency_penalty for p in ps):
            counts = torch.zeros(len(seqs), V, device=dev)
            for i, s in enumerate(seqs):
                if s.output_counts:
                    counts[i, torch.tensor(list(s.output_counts), device=dev)] = f(list(s.output_counts.values()))
            sb.output_counts = counts
            sb.presence_penalty, sb.frequency_penalty = f([p.presence_penalty for p in ps]), f([p.frequency_penalty for p in ps])
        if any(s.num_output + a < p.min_tokens for s, p, a in zip(seqs, ps, ahead)):
            banned = torch.zeros(len(seqs), V, dtype=torch.bool, device=dev)
            for i, (s, p, a) in enumerate(zip(seqs, ps, ahead)):
                if s.num_output + a < p.min_tokens:
                    banned[i, list(s.request.stop_ids)] = True
            sb.banned = banned
        return sb

    def _stop_ids_for(self, p: SamplingParams) -> set[int]:
        return set(p.stop_token_ids) | (set() if p.ignore_eos else self._stop_ids)

    def _sample_and_append(self, seqs: list[Sequence], logits: torch.Tensor, updates: list[SeqUpdate]):
        sb = self._sampling_batch(seqs)
        tokens, proc = sample(logits, sb)
        ps = [s.request.params for s in seqs]
        k = max([p.logprobs or 0 for p in ps] + [p.hook_topk for p in ps if p.stop_hook_factory])
        want_lp = any(p.logprobs is not None or p.stop_hook_factory for p in ps)
        if want_lp:
            raw_rows = [i for i, p in enumerate(ps) if p.logprobs_mode == "raw"]
            src = logits if len(raw_rows) == len(ps) else torch.where(
                torch.tensor([p.logprobs_mode == "raw" for p in ps], device=logits.device)[:, None], logits, proc)
            chosen, top, top_ids = (t.cpu().numpy() for t in topk_logprobs(src, tokens, k))
        tokens = tokens.tolist()
        for i, (seq, tok) in enumerate(zip(seqs, tokens)):
            p = ps[i]
            if want_lp and (p.logprobs is not None or p.stop_hook_factory):
                kk = _seq_topk(p)
                seq.append(tok, float(chosen[i]), top[i, :kk] if kk else None, top_ids[i, :kk] if kk else None)
            else:
                seq.append(tok, None, None, None)
            self._postprocess(seq, tok, (float(chosen[i]), top[i][: p.hook_topk]) if want_lp else None, updates)

    def _postprocess(self, seq: Sequence, tok: int, lp, updates: list[SeqUpdate]):
        p = seq.request.params
        self.stats.generated_tokens += 1
        new_text = ""
        if seq.detok is not None:
            new_text = seq.detok.add(tok)
        reason, stop_reason = None, None
        if tok in seq.request.stop_ids and seq.num_output > p.min_tokens - 1:
            reason, stop_reason = "stop", tok
        elif p.stop and seq.detok is not None and new_text:
            text = seq.detok.text
            for s in p.stop:
                j = text.find(s, max(0, len(text) - len(new_text) - len(s) + 1))
                if j >= 0:
                    cut = j + (len(s) if p.include_stop_str_in_output else 0)
                    new_text = new_text[: max(0, len(new_text) - (len(text) - cut))]
                    seq.detok.text = text[:cut]
                    reason, stop_reason = "stop", s
                    break
        if reason is None and seq.hook is not None and lp is not None:
            if seq.hook(TokenEvent(tok, lp[0], lp[1], seq.num_output - 1)):
                reason = "hook"
        if reason is None and (p.max_tokens is not None and seq.num_output >= p.max_tokens):
            reason = "length"
        if reason is None and seq.num_tokens >= self.max_model_len:
            reason = "length"
        if reason is not None and seq.detok is not None and not isinstance(stop_reason, str):
            new_text += seq.detok.flush()  # a trailing partial character, as decode() would show it
        updates.append(SeqUpdate(seq.request.request_id, seq.index, [tok], new_text, reason is not None))
        if reason is not None:
            seq.stop_reason = stop_reason
            self._finish(seq, reason)

    def _finish(self, seq: Sequence, reason: str):
        seq.finish_reason = reason
        if seq.status != Status.FINISHED:
            if seq.pending:  # a launched step still uses its cache: free it when that step lands
                self.scheduler.retire(seq)
                seq.deferred_free = True
            else:
                self.scheduler.free(seq)
            seq.status = Status.FINISHED
            seq.request.num_finished += 1
            self.stats.finished[reason] = self.stats.finished.get(reason, 0) + 1

    # ---- decode steps, synchronous or one ahead --------------------------------------------------------
    def _decode_only_ok(self, seqs: list[Sequence]) -> bool:
        """Decode-only steps go through _launch_decode (penalties need the previous token on the host)."""
        for s in seqs:
            p = s.request.params
            if p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty:
                return False
        return bool(seqs)

    def _done_by_count(self, s: Sequence) -> bool:
        p = s.request.params
        n = s.num_output + s.pending
        return (p.max_tokens is not None and n >= p.max_tokens) or s.num_tokens + s.pending >= self.max_model_len

    def _try_launch_next(self, prev: _Inflight) -> _Inflight | None:
        """Launch the next decode step of prev's sequences before prev's tokens reach the host, when nothing
        else needs scheduling; None means: process prev, then schedule normally."""
        sch = self.scheduler
        if sch.waiting or sch.prefilling or any(g.ready and g.pending for g in sch.groups.values()):
            return None
        live = [s for s in prev.seqs if s.status == Status.RUNNING]
        if len(live) != len(sch.running) or not self._decode_only_ok(live):
            return None
        live = [s for s in live if not self._done_by_count(s)]
        if not live:
            return None
        ps = self.cache.spec.page_size
        need = sum(1 for s in live if s.num_computed // ps >= len(s.pages))
        if need > sch.pages.num_free:
            return None  # the synchronous scheduler will preempt
        for s in live:
            sch._ensure_pages(s, s.num_computed + 1)
        row = {id(s): i for i, s in enumerate(prev.seqs)}
        src = self._to_device(np.array([row[id(s)] for s in live], dtype=np.int64))
        return self._launch_decode(live, prev.tokens[src])

    def _launch_decode(self, seqs: list[Sequence], ids_dev: torch.Tensor | None = None) -> _Inflight:
        """Run one decode step for `seqs` and sample on the device; the tokens come back asynchronously.
        `ids_dev`: input ids already on the device (the previous step's samples), else taken from the host."""
        ps = self.cache.spec.page_size
        S = len(seqs)
        meta = np.empty((4, S), dtype=np.int64)  # token, position, kv index, slot
        width = max(len(s.pages) for s in seqs)
        table = np.zeros((S, width), dtype=np.int64)
        for i, s in enumerate(seqs):
            p = s.num_computed
            meta[0, i] = s.token_ids[p] if ids_dev is None else 0
            meta[1, i], meta[2, i], meta[3, i] = p, s.pages[p // ps] * ps + p % ps, s.slot
            table[i, :len(s.pages)] = s.pages
        m = self._to_device(meta)
        batch = StepBatch(input_ids=m[0] if ids_dev is None else ids_dev, positions=m[1], kv_index=m[2],
                          decode_slots=m[3], decode_pages=self._to_device(table), decode_context=m[1] + 1,
                          prefills=[])
        logits = self.runner.run(batch, torch.arange(S, device=self.device))
        ahead = [s.pending for s in seqs]
        for s in seqs:
            s.num_computed += 1
            s.pending += 1
        self.stats.steps += 1
        self.stats.decode_tokens += S
        sb = self._sampling_batch(seqs, ahead)
        tokens, proc = sample(logits, sb)
        ps_ = [s.request.params for s in seqs]
        k = max([p.logprobs or 0 for p in ps_] + [p.hook_topk for p in ps_ if p.stop_hook_factory])
        lp = None
        if any(p.logprobs is not None or p.stop_hook_factory for p in ps_):
            raw = torch.tensor([p.logprobs_mode == "raw" for p in ps_], device=logits.device)[:, None]
            lp = topk_logprobs(torch.where(raw, logits, proc) if not bool(raw.all()) else logits, tokens, k)
        if self.device.type != "cuda":
            return _Inflight(list(seqs), tokens, tokens, lp, None)
        host = self._pinned_like(tokens, 0)  # a pageable destination would make the copy synchronous
        host.copy_(tokens, non_blocking=True)
        lp_host = None
        if lp is not None:
            lp_host = tuple(self._pinned_like(t, j + 1) for j, t in enumerate(lp))
            for h, t in zip(lp_host, lp):
                h.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return _Inflight(list(seqs), tokens, host, lp_host, event)

    def _pinned_like(self, t: torch.Tensor, kind: int) -> torch.Tensor:
        """A pinned host tensor shaped like `t`, from a ring of three per kind (at most two steps in flight)."""
        key = (self._stage_i, kind)
        buf = self._pinned.get(key)
        if buf is None or buf.numel() < t.numel() or buf.dtype != t.dtype:
            buf = torch.empty(max(t.numel(), 1024), dtype=t.dtype).pin_memory()
            self._pinned[key] = buf
        return buf[:t.numel()].view(t.shape)

    def _complete(self, inf: _Inflight, updates: list[SeqUpdate]) -> None:
        """Bring a launched step's tokens to the host: append, check stops, run hooks, free what finished."""
        if inf.event is not None:
            inf.event.synchronize()
        toks = inf.host.tolist()
        if inf.logprobs is not None:
            chosen, top, top_ids = (t.numpy() for t in inf.logprobs)
        for i, (seq, tok) in enumerate(zip(inf.seqs, toks)):
            seq.pending -= 1
            if seq.status == Status.FINISHED:  # finished while this token was in flight: drop it
                if seq.pending == 0 and seq.deferred_free:
                    seq.deferred_free = False
                    self.scheduler.free(seq)
                continue
            p = seq.request.params
            if inf.logprobs is not None and (p.logprobs is not None or p.stop_hook_factory):
                kk = _seq_topk(p)
                seq.append(tok, float(chosen[i]), top[i, :kk] if kk else None, top_ids[i, :kk] if kk else None)
                self._postprocess(seq, tok, (float(chosen[i]), top[i][: p.hook_topk]), updates)
            else:
                seq.append(tok, None, None, None)
                self._postprocess(seq, tok, None, updates)

    # ---- forks --------------------------------------------------------------------------------------
    def _make_child(self, req: Request, index: int, started: bool = True) -> Sequence:
        seq = Sequence(req, index, list(req.prompt_token_ids), len(req.prompt_token_ids), req.seeds[index])
        req.samples[index] = seq
        if started:
            p = req.params
            if p.stop_hook_factory is not None:
                seq.hook = p.stop_hook_factory()
            if p.stop:
                seq.detok = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids, p.skip_special_tokens)
        return seq

    def _fork_ready(self, updates: list[SeqUpdate]):
        for group in list(self.scheduler.groups.values()):
            if not group.ready:
                continue
            children = self.scheduler.fork(group, self._make_child)
            if children:
                logits = group.last_logits[None].expand(len(children), -1)
                self._sample_and_append(children, logits, updates)

    # ---- outputs ------------------------------------------------------------------------------------
    def get_output(self, request_id: str) -> RequestOutput:
        req = self.requests[request_id]
        p = req.params
        outs = []
        for i, seq in enumerate(req.samples):
            if seq is None:
                outs.append(CompletionOutput(i, "", [], None))
                continue
            text = seq.detok.text if seq.detok is not None else \
                self.tokenizer.decode(seq.output_ids, skip_special_tokens=p.skip_special_tokens)
            lp = seq.logprob_arrays(p.logprobs) if p.logprobs is not None else None
            outs.append(CompletionOutput(i, text, list(seq.output_ids), seq.finish_reason, seq.stop_reason, lp,
                                         seq.cumulative_logprob if p.logprobs is not None else None))
        return RequestOutput(req.request_id, req.prompt, req.prompt_token_ids, outs, req.finished)

    def release(self, request_id: str) -> None:
        """Forget a finished request (its outputs were collected)."""
        req = self.requests.get(request_id)
        if req is not None and req.finished:
            del self.requests[request_id]

    # ---- introspection ------------------------------------------------------------------------------
    def cache_usage(self) -> dict:
        s = self.scheduler
        return {"pages_total": s.pages.num_pages - self._reserved_pages, "pages_free": s.pages.num_free,
                "slots_total": s.slots.num_slots - self._reserved_slots, "slots_free": s.slots.num_free,
                "running": len(s.running), "prefilling": len(s.prefilling), "waiting": len(s.waiting),
                "snapshots": len(s.snapshots), "preemptions": s.num_preemptions}
