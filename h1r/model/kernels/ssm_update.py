"""Fused, in-place, slot-indexed Mamba-2 decode step: reads each sequence's SSM state once, writes it
once. Reference: h1r.model.ssd.ssd_step (+ softplus/clamp of Mamba2Mixer.discretize and the D skip).

    state[slot] <- state[slot] * exp(dt A) + dt x ⊗ B ;  y = state[slot] · C + D x
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from h1r.model.kernels import pdl
from h1r.model.kernels.launch import pdl_enter

# the launch: BLOCK_P rows of one (sequence, head) state per program. H200, 7B shape, bf16 state, from a CUDA
# graph: 8 rows beat the former 16 at batch 64 (54.8 against 57.0 us, 88.7% of copy bandwidth) and at batch 1
# (1.91 against 2.03 us); 32 or 64 rows were slower (bench/results/decode_kernels_gpu_2026-12-05.json)
BLOCK_P, NUM_WARPS = 8, 4


@triton.jit
def _ssm_update_kernel(
    state_ptr, slot_ptr, x_ptr, dt_ptr, dt_bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr,
    dt_min, dt_max,
    s_slot, s_head, s_p,  # state strides (N is contiguous)
    x_s, dt_s, b_s, c_s, y_s,  # row strides of x [S, H*P], dt [S, H], B/C [S, G*N], y [S, H*P]
    HEADS_PER_GROUP: tl.constexpr, P: tl.constexpr, N: tl.constexpr, BLOCK_P: tl.constexpr,
    CLAMP: tl.constexpr, PDL: tl.constexpr,
):
    pdl_enter(PDL)
    s = tl.program_id(0)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    slot = tl.load(slot_ptr + s).to(tl.int64)
    g = h // HEADS_PER_GROUP
    p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.arange(0, N)

    dt = tl.load(dt_ptr + s * dt_s + h).to(tl.float32) + tl.load(dt_bias_ptr + h).to(tl.float32)
    dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(dt)))  # softplus
    if CLAMP:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    dA = tl.exp(dt * tl.load(A_ptr + h).to(tl.float32))

    x = tl.load(x_ptr + s * x_s + h * P + p).to(tl.float32)  # [BLOCK_P]
    Bv = tl.load(B_ptr + s * b_s + g * N + n).to(tl.float32)  # [N]
    Cv = tl.load(C_ptr + s * c_s + g * N + n).to(tl.float32)

    ptrs = state_ptr + slot * s_slot + h * s_head + p[:, None] * s_p + n[None, :]
    st = tl.load(ptrs).to(tl.float32)  # [BLOCK_P, N]
    st = st * dA + (dt * x)[:, None] * Bv[None, :]
    tl.store(ptrs, st.to(state_ptr.dtype.element_ty))
    y = tl.sum(st * Cv[None, :], axis=1) + tl.load(D_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + s * y_s + h * P + p, y)


def ssm_state_update(state: torch.Tensor, slots: torch.Tensor, x: torch.Tensor, dt: torch.Tensor,
                     dt_bias: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
                     dt_limit=(0.0, float("inf")), block_p: int | None = None,
                     num_warps: int | None = None) -> torch.Tensor:
    """state [slots, H, P, N] (fp32 or bf16, updated in place), slots [S] long, x [S, H*P], dt [S, H]
    (raw, before softplus), dt_bias/A/D [H], B/C [S, G*N] -> y [S, H*P] fp32. block_p / num_warps: the
    launch (BLOCK_P rows of one head's state per program), defaults below; bench/decode_kernels_gpu.py sweeps
    them."""
    _, H, P, N = state.shape
    S = slots.shape[0]
    G = B.shape[-1] // N
    assert state.stride(-1) == 1 and x.stride(-1) == 1 and B.stride(-1) == 1 and C.stride(-1) == 1
    y = torch.empty(S, H * P, device=x.device, dtype=torch.float32)
    block_p = min(P, block_p or BLOCK_P)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    clamp = lo > 0.0 or hi != float("inf")
    grid = (S, H, P // block_p)
    _ssm_update_kernel[grid](
        state, slots, x, dt, dt_bias, A, B, C, D, y, lo, hi if clamp else 0.0,
        state.stride(0), state.stride(1), state.stride(2),
        x.stride(0), dt.stride(0), B.stride(0), C.stride(0), y.stride(0),
        HEADS_PER_GROUP=H // G, P=P, N=N, BLOCK_P=block_p, CLAMP=clamp, num_warps=num_warps or NUM_WARPS, **pdl(x),
    )
    return y
