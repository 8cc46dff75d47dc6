"""The engine on the GPU (fast path: folded weights, Triton kernels, CUDA graphs) against the CPU reference."""

import pytest
import torch

from h1r import LLM, SamplingParams
from tests.engine_fixtures import make_model_dir

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"))


def _prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, 300, (n,), generator=g).tolist() for n in (5, 40, 17, 90, 3, 33, 64, 1)]


KW = dict(max_model_len=512, cache_memory=256 << 20, page_size=16, max_num_batched_tokens=64, max_num_seqs=16)


def test_gpu_greedy_tokens_equal_cpu_reference(model_dir):
    cpu = LLM(str(model_dir), device="cpu", dtype="float32", fast=False, **KW)
    gpu = LLM(str(model_dir), device="cuda", dtype="float32", **KW)
    assert gpu.fast_model is not None and gpu.engine.runner.graphs  # CUDA graphs captured
    sp = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=2)
    a, b = cpu.generate(_prompts(), sp), gpu.generate(_prompts(), sp)
    for x, y in zip(a, b):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert abs(x.outputs[0].logprobs.chosen - y.outputs[0].logprobs.chosen).max() < 1e-3
    u = gpu.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]


def test_gpu_bf16_fast_path_close_to_reference_path(model_dir):
    ref = LLM(str(model_dir), device="cuda", dtype="bfloat16", fast=False, **KW)
    fast = LLM(str(model_dir), device="cuda", dtype="bfloat16", **KW)
    sp = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=1)
    a, b = ref.generate(_prompts(), sp), fast.generate(_prompts(), sp)
    same = sum(x.outputs[0].token_ids[:4] == y.outputs[0].token_ids[:4] for x, y in zip(a, b))
    assert same >= len(a) - 1
    first = [(x.outputs[0].logprobs.chosen[0], y.outputs[0].logprobs.chosen[0]) for x, y in zip(a, b)]
    assert max(abs(p - q) for p, q in first) < 0.05
