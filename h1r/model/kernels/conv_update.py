"""In-place, slot-indexed causal conv decode step (+ SiLU). Reference: h1r.model.ssd.conv_step.

    window = [conv_state[slot] (K-1 raw inputs) | x];  y = silu(bias + window · w);  conv_state[slot] <- window[1:]
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from h1r.model.kernels import pdl
from h1r.model.kernels.launch import pdl_enter

# the launch: BLOCK_C channels of one sequence per program
BLOCK_C, NUM_WARPS = 256, 4


@triton.jit
def _conv_update_kernel(
    state_ptr, slot_ptr, x_ptr, w_ptr, b_ptr, y_ptr,
    s_slot, s_c, x_s, y_s, C,
    K: tl.constexpr, BLOCK_C: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    s = tl.program_id(0)
    cb = tl.program_id(1)
    slot = tl.load(slot_ptr + s).to(tl.int64)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    m = c < C
    base = state_ptr + slot * s_slot + c * s_c
    x = tl.load(x_ptr + s * x_s + c, mask=m, other=0.0).to(tl.float32)
    acc = x * tl.load(w_ptr + c * K + (K - 1), mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=m, other=0.0).to(tl.float32)
    prev = tl.load(base, mask=m, other=0.0)
    for j in tl.static_range(K - 1):  # state column j holds input t-(K-1)+j
        acc += prev.to(tl.float32) * tl.load(w_ptr + c * K + j, mask=m, other=0.0).to(tl.float32)
        if j < K - 2:
            nxt = tl.load(base + (j + 1), mask=m, other=0.0)
            tl.store(base + j, nxt, mask=m)
            prev = nxt
    tl.store(base + (K - 2), x.to(state_ptr.dtype.element_ty), mask=m)
    y = acc / (1.0 + tl.exp(-acc))
    tl.store(y_ptr + s * y_s + c, y.to(y_ptr.dtype.element_ty), mask=m)


def conv_state_update(conv_state: torch.Tensor, slots: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None, out_dtype=None, block_c: int | None = None,
                      num_warps: int | None = None) -> torch.Tensor:
    """conv_state [slots, C, K-1] (updated in place; last dim contiguous), slots [S], x [S, C] (raw xBC),
    weight [C, K] contiguous, bias [C] -> silu(conv) [S, C]. block_c / num_warps: the launch (channels per
    program), defaults below; bench/decode_kernels_gpu.py sweeps them."""
    _, Cc, Km1 = conv_state.shape
    S = x.shape[0]
    assert conv_state.stride(-1) == 1 and x.stride(-1) == 1 and weight.is_contiguous()
    y = torch.empty(S, Cc, device=x.device, dtype=out_dtype or x.dtype)
    block_c = block_c or BLOCK_C
    grid = (S, triton.cdiv(Cc, block_c))
    _conv_update_kernel[grid](
        conv_state, slots, x, weight, bias if bias is not None else weight, y,
        conv_state.stride(0), conv_state.stride(1), x.stride(0), y.stride(0), Cc,
        K=Km1 + 1, BLOCK_C=block_c, HAS_BIAS=bias is not None, num_warps=num_warps or NUM_WARPS, **pdl(x),
    )
    return y
