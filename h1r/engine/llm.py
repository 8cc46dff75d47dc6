"""`LLM`: offline batched generation in the shape vLLM users know.

    llm = LLM("path/to/model", device="cpu")
    outs = llm.generate(["2+2="], SamplingParams(n=4, temperature=0.6, max_tokens=64, logprobs=5))
    outs[0].outputs[0].text
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence as Seq

import torch

from h1r.engine.llm_engine import EngineConfig, LLMEngine
from h1r.engine.outputs import RequestOutput
from h1r.engine.sampling_params import SamplingError, SamplingParams


class LLM:
    def __init__(self, model, tokenizer=None, device: str | torch.device = "cpu", dtype=None,
                 ssm_state_dtype: str = "float32", max_num_seqs: int = 64, max_num_batched_tokens: int = 2048,
                 max_model_len: int | None = None, cache_memory: int | None = None,
                 gpu_memory_utilization: float = 0.9, page_size: int = 16, seed: int = 0, fast: bool | None = None,
                 keep_reference_model: bool | None = None, **engine_kwargs):
        """`model`: a checkpoint directory, or an already loaded FalconH1ForCausalLM (then pass `tokenizer`).
        `fast`: run FastFalconH1 (folded weights, Triton kernels, CUDA graphs); default: on CUDA only.
        `fast=False` keeps the plain PyTorch reference path (for debugging).
        `keep_reference_model`: with the fast path, keep the unfused module's weights (needed for
        update_weights); default: keep them only when the caller passed a module."""
        from h1r.checkpoint import load_model
        from h1r.tokenizer import load_tokenizer

        owned = isinstance(model, (str, bytes)) or hasattr(model, "__fspath__")
        if owned:
            path = model
            model = load_model(path, device=device, dtype=dtype)
            tokenizer = tokenizer or load_tokenizer(path)
        if tokenizer is None:
            raise SamplingError("LLM(model=<module>) needs a tokenizer")
        self.model, self.tokenizer = model.eval(), tokenizer
        cfg = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                           max_model_len=max_model_len, page_size=page_size, cache_memory=cache_memory,
                           gpu_memory_utilization=gpu_memory_utilization, ssm_state_dtype=ssm_state_dtype, seed=seed,
                           **engine_kwargs)
        fast_model = None
        if fast is None:
            fast = self.model.device.type == "cuda"
        if fast:
            from h1r.model.fast import FastFalconH1

            fast_model = FastFalconH1(self.model)
            keep = (not owned) if keep_reference_model is None else keep_reference_model
            if not keep:  # the engine runs the folded copy only: free the unfused weights
                self.model.to("meta")
        self.fast_model = fast_model
        self.engine = LLMEngine(self.model, tokenizer, cfg, fast=fast_model)
        self._ids = itertools.count()

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """prompts: a string, a list of strings, or a list of token-id lists."""
        if isinstance(prompts, str) or (isinstance(prompts, Seq) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        params = params or SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise SamplingError(f"got {len(plist)} SamplingParams for {len(prompts)} prompts")
        ids = []
        try:
            for prompt, p in zip(prompts, plist):
                rid = f"gen-{next(self._ids)}"
                self.engine.add_request(rid, prompt, p)
                ids.append(rid)
        except Exception:
            for rid in ids:
                self.engine.abort_request(rid)
                self.engine.release(rid)
            raise
        bar = None
        if use_tqdm:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc="generate", unit="req", dynamic_ncols=True)
        done = set()
        while any(not self.engine.requests[r].finished for r in ids):
            updates = self.engine.step()
            if bar is not None:
                newly = {u.request_id for u in updates if self.engine.requests[u.request_id].finished} - done
                done |= newly
                bar.update(len(newly))
                bar.set_postfix(tok=self.engine.stats.generated_tokens, refresh=False)
        if bar is not None:
            bar.close()
        outs = [self.engine.get_output(r) for r in ids]
        for r in ids:
            self.engine.release(r)
        return outs

    def stream(self, prompt, params: SamplingParams | None = None):
        """Generate for one prompt (text or token ids), yielding (sample index, new text) as tokens arrive;
        the pieces of each sample join into the `text` generate() returns. Closing the generator early (a
        break, Ctrl-C) aborts the request and frees its cache."""
        from h1r.engine.detokenizer import IncrementalDetokenizer

        params = params or SamplingParams()
        rid = f"stream-{next(self._ids)}"
        req = self.engine.add_request(rid, prompt, params)
        # the engine detokenizes only to find stop strings; otherwise text is made here, from the output
        # alone (no prompt context), exactly as generate() decodes it
        detoks = None if params.stop else [IncrementalDetokenizer(self.tokenizer, [], params.skip_special_tokens)
                                           for _ in range(params.n)]
        try:
            while not req.finished:
                for u in self.engine.step():
                    if u.request_id != rid:
                        continue
                    text = u.new_text
                    if detoks is not None:
                        d = detoks[u.index]
                        text = "".join(d.add(t) for t in u.new_token_ids) + (d.flush() if u.finished else "")
                    if text:
                        yield u.index, text
        finally:
            if not req.finished:
                self.engine.abort_request(rid)
                while self.engine.has_unfinished():  # land the step in flight so the abort frees its cache
                    self.engine.step()
            self.engine.release(rid)

    def chat(self, messages, params: SamplingParams | None = None, use_tqdm: bool = False,
             add_generation_prompt: bool = True, **template_kwargs) -> list[RequestOutput]:
        """messages: one conversation (list of {role, content}) or a list of conversations."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=add_generation_prompt, tokenize=True,
                                                      **template_kwargs) for c in convs]
        return self.generate(prompts, params, use_tqdm=use_tqdm)

    def pin_prompt(self, prompt_ids: list[int]):
        """Prefill this prompt once for every later request with it, until unpin_prompt (see LLMEngine)."""
        return self.engine.pin_prompt(prompt_ids)

    def unpin_prompt(self, key) -> None:
        self.engine.unpin_prompt(key)

    @torch.no_grad()
    def update_weights(self, state_dict) -> None:
        """Copy new weights (e.g. from a trainer, same names as the checkpoint) into the engine's model in
        memory, then drop everything cached. Tensors may live on any device / dtype."""
        params = dict(self.model.named_parameters())
        if any(p.is_meta for p in params.values()):
            raise RuntimeError("update_weights needs LLM(..., keep_reference_model=True) on the fast path")
        unknown = [n for n in state_dict if n not in params]
        if unknown:
            raise KeyError(f"update_weights: unknown parameter {unknown[0]!r}")
        for name, t in state_dict.items():
            params[name].copy_(t)
        if self.fast_model is not None:  # re-fold into the fast copy, keeping its tensors (graphs point at them)
            from h1r.model.fast import FastFalconH1

            fresh = FastFalconH1(self.model, use_kernels=self.fast_model.use_kernels)
            self.fast_model.copy_from(fresh)
        self.reset_cache()

    def reset_cache(self) -> None:
        """Called after the model's weights change (e.g. a GRPO step): nothing cached survives."""
        if self.engine.has_unfinished():
            raise RuntimeError("cannot reset the cache while requests are running")
        if any(g.pins for g in self.engine.scheduler.groups.values()):
            raise RuntimeError("cannot reset the cache while prompts are pinned (unpin_prompt first)")
        self.engine.cache.k.zero_()
        self.engine.cache.v.zero_()
        self.engine.cache.conv.zero_()
        self.engine.cache.ssm.zero_()
