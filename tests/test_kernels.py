"""Each Triton kernel against its PyTorch reference on random inputs: odd lengths, page and chunk
boundaries, padding, GQA groups, fp32 and bf16 storage.

Runs on CUDA; on a CPU machine run `TRITON_INTERPRET=1 pytest tests/test_kernels.py` (needs triton).
"""

import pytest
import torch
import torch.nn.functional as F

from h1r.model import ssd
from tests.helpers import kernel_device, rel

DEV = kernel_device()
pytestmark = pytest.mark.gpu if DEV == "cuda" else []


@pytest.mark.parametrize("S,H,P,N,G", [(1, 2, 16, 16, 1), (5, 4, 32, 16, 2), (3, 8, 64, 128, 2)])
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_p,num_warps", [(None, None), (64, 8)])  # the default launch and a wide one
def test_ssm_state_update(S, H, P, N, G, state_dtype, block_p, num_warps):
    from h1r.model.kernels.ssm_update import ssm_state_update

    g = torch.Generator().manual_seed(S * 100 + H)
    pool = torch.randn(S + 4, H, P, N, generator=g).to(DEV, state_dtype)
    ref_pool = pool.clone().float()
    slots = torch.randperm(S + 4, generator=g)[:S].to(DEV)
    x = torch.randn(S, H * P, generator=g).to(DEV)
    dt = torch.randn(S, H, generator=g).to(DEV)
    dtb, A, D = (torch.randn(H, generator=g).to(DEV), -torch.rand(H, generator=g).to(DEV) - 0.1,
                 torch.randn(H, generator=g).to(DEV))
    B, C = torch.randn(S, G * N, generator=g).to(DEV), torch.randn(S, G * N, generator=g).to(DEV)
    untouched = [i for i in range(S + 4) if i not in slots.tolist()]
    y = ssm_state_update(pool, slots, x, dt, dtb, A, B, C, D, dt_limit=(0.0, 0.8), block_p=block_p,
                         num_warps=num_warps)
    d = F.softplus(dt + dtb).clamp(0.0, 0.8)
    yr, sr = ssd.ssd_step(x.view(S, H, P), d, A, B.view(S, G, N), C.view(S, G, N), ref_pool[slots])
    yr = yr + D[:, None] * x.view(S, H, P)
    tol = 1e-5 if state_dtype == torch.float32 else 1e-2
    assert rel(y.view(S, H, P), yr) < 1e-4 + (0 if state_dtype == torch.float32 else 1e-2)
    assert rel(pool[slots], sr) < tol
    assert torch.equal(pool[untouched].float(), ref_pool[untouched])


@pytest.mark.parametrize("C,dtype", [(40, torch.float32), (3584, torch.bfloat16), (257, torch.bfloat16)])
@pytest.mark.parametrize("block_c,num_warps", [(None, None), (1024, 8), (64, 1)])
def test_conv_state_update(C, dtype, block_c, num_warps):
    from h1r.model.kernels.conv_update import conv_state_update

    g = torch.Generator().manual_seed(C)
    S, K = 3, 4
    pool = torch.randn(S + 2, C, K - 1, generator=g).to(DEV, dtype)
    ref = pool.clone()
    slots = torch.tensor([4, 0, 2], device=DEV)
    x = torch.randn(S, C, generator=g).to(DEV, dtype)
    w, b = torch.randn(C, K, generator=g).to(DEV, dtype), torch.randn(C, generator=g).to(DEV, dtype)
    y = conv_state_update(pool, slots, x, w, b, block_c=block_c, num_warps=num_warps)
    yr, sr = ssd.conv_step(x, ref[slots], w, b)
    assert rel(y, yr) < (1e-6 if dtype == torch.float32 else 1e-2)
    assert torch.equal(pool[slots], sr.to(dtype))
    assert torch.equal(pool[[1, 3]], ref[[1, 3]])


@pytest.mark.parametrize("hq,hkv,hd", [(6, 2, 32), (12, 2, 128), (4, 4, 24), (8, 1, 64)])
@pytest.mark.parametrize("page", [8, 16])
@pytest.mark.parametrize("splits", [1, 3])
def test_paged_decode_attention(hq, hkv, hd, page, splits):
    from h1r.engine.context import paged_decode_attention as reference
    from h1r.model.kernels.paged_attention import paged_decode_attention

    g = torch.Generator().manual_seed(hq * hd + page)
    P, S = 60, 4
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    kp = torch.randn(P, page, hkv, hd, generator=g).to(DEV, dtype)
    vp = torch.randn(P, page, hkv, hd, generator=g).to(DEV, dtype)
    ctx = torch.tensor([1, page, page * 3 + 5, 97], device=DEV)  # one token, a page boundary, odd lengths
    table = torch.stack([torch.randperm(P, generator=g)[:15] for _ in range(S)]).to(DEV)
    q = torch.randn(S, hq, hd, generator=g).to(DEV, dtype)
    out = paged_decode_attention(q, kp, vp, table, ctx, hd ** -0.5, splits)
    ref = reference(q.float(), kp.float(), vp.float(), table, ctx, hd ** -0.5)
    assert rel(out, ref) < (1e-5 if dtype == torch.float32 else 2e-2)
    # into a column slice of a wider buffer (the fused output projection's input), other columns untouched
    wide = torch.full((S, 7 + hq * hd), 3.0, device=DEV, dtype=dtype)
    got = paged_decode_attention(q, kp, vp, table, ctx, hd ** -0.5, splits, out=wide[:, 7:].view(S, hq, hd))
    assert got.data_ptr() == wide[:, 7:].data_ptr() and torch.equal(wide[:, 7:].view(S, hq, hd), out)
    assert torch.all(wide[:, :7] == 3.0)


@pytest.mark.parametrize("H,G,P,Ns", [(24, 1, 128, 256), (6, 2, 40, 24)])
def test_ssd_inputs_fused_equals_reference(H, G, P, Ns):
    from h1r.model.kernels.prefill import ssd_inputs_reference
    from h1r.model.kernels.ssd_inputs import ssd_inputs

    g = torch.Generator().manual_seed(H + P)
    N = 37
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    wide = torch.randn(N, H * P + 2 * G * Ns + 8, generator=g).to(DEV, dtype)  # x | B | C views of one buffer
    x = wide[:, :H * P].view(N, H, P)
    B = wide[:, H * P:H * P + G * Ns].view(N, G, Ns)
    C = wide[:, H * P + G * Ns:H * P + 2 * G * Ns].view(N, G, Ns)
    dt = F.softplus(torch.randn(N, H, generator=g)).to(DEV)
    A = -torch.rand(H, generator=g).to(DEV)
    got, ref = ssd_inputs(x, dt, A, B, C, dtype), ssd_inputs_reference(x, dt, A, B, C, dtype)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


def test_num_splits_fill_the_gpu():
    from h1r.model.kernels.paged_attention import PROGRAMS_PER_SM, num_splits_for

    assert num_splits_for(64, 2, 2112) * 64 * 2 >= PROGRAMS_PER_SM * 132  # batch 64 is split too
    assert num_splits_for(64, 2, 100) == 1  # too short a context to split
    assert num_splits_for(1, 2, 2112) == 2112 // 64  # one stream: a block of context per split
    assert num_splits_for(1, 2, 32768) == 64  # capped
    assert num_splits_for(512, 8, 32768) == 1


def test_fused_elementwise():
    from h1r.model.kernels.fused import add_rmsnorm, gated_rmsnorm, rope_and_store, silu_mul

    g = torch.Generator().manual_seed(0)
    R, D = 5, 96
    h, a, b = (torch.randn(R, D, generator=g).to(DEV) for _ in range(3))
    w = torch.randn(D, generator=g).to(DEV)
    h2, x = add_rmsnorm(h, w, 1e-5, a, b)
    hr = h + (a + b)
    xr = w * (hr * torch.rsqrt(hr.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert rel(h2, hr) < 1e-6 and rel(x, xr) < 1e-5
    # gated norm, both orders, groups
    y, z, nw = torch.randn(R, 64, generator=g).to(DEV), torch.randn(R, 64, generator=g).to(DEV), torch.randn(64, generator=g).to(DEV)
    for first in (False, True):
        out = gated_rmsnorm(y, z, nw, 2, 1e-5, first, torch.float32)
        v = y if first else y * F.silu(z)
        vg = v.view(R, 2, 32)
        r = (nw.view(2, 32) * vg * torch.rsqrt(vg.pow(2).mean(-1, keepdim=True) + 1e-5)).view(R, 64)
        r = r * F.silu(z) if first else r
        assert rel(out, r) < 1e-5
    assert rel(gated_rmsnorm(y, z, None, 1, 1e-5, False, torch.float32), y * F.silu(z)) < 1e-6
    wide = torch.zeros(R, 64 + 5, device=DEV)
    gated_rmsnorm(y, z, nw, 2, 1e-5, False, torch.float32, out=wide[:, :64])
    assert torch.equal(wide[:, :64], gated_rmsnorm(y, z, nw, 2, 1e-5, False, torch.float32))
    assert torch.all(wide[:, 64:] == 0)
    gu = torch.randn(R, 2 * 300, generator=g).to(DEV)
    assert rel(silu_mul(gu), F.silu(gu[:, :300]) * gu[:, 300:]) < 1e-6
    # rope + K/V store
    hq, hkv, hd, N = 3, 1, 24, 4
    proj = torch.randn(N, 10 + (hq + 2 * hkv) * hd, generator=g).to(DEV)
    pos = torch.tensor([0, 5, 17, 1000], device=DEV)
    inv = 1.0 / (1e4 ** (torch.arange(0, hd, 2, device=DEV).float() / hd))
    kc, vc = torch.zeros(20, hkv, hd, device=DEV), torch.zeros(20, hkv, hd, device=DEV)
    idx = torch.tensor([3, 7, 0, 19], device=DEV)
    q = rope_and_store(proj, 10, 10 + hq * hd, 10 + (hq + hkv) * hd, pos, inv, idx, kc, vc, hq, hkv, hd)
    ang = pos.float()[:, None] * inv
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

    def rope(t):
        t1, t2 = t.chunk(2, -1)
        return t * cos[:, None] + torch.cat([-t2, t1], -1) * sin[:, None]

    assert rel(q, rope(proj[:, 10:10 + hq * hd].view(N, hq, hd))) < 1e-5
    assert rel(kc[idx], rope(proj[:, 10 + hq * hd:10 + (hq + hkv) * hd].view(N, hkv, hd))) < 1e-5
    assert torch.equal(vc[idx], proj[:, 10 + (hq + hkv) * hd:].view(N, hkv, hd))


@pytest.mark.parametrize("M,N,K", [(1, 40, 96), (1, 37, 100), (2, 300, 512), (1, 24, 1536)])
@pytest.mark.parametrize("mode", ["plain", "norm", "silu_mul", "residual", "silu_mul+residual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_prologues_and_epilogue(M, N, K, mode, dtype):
    """The one-row projection against F.linear with the norm / activation / residual add done apart;
    odd widths (masked tails), a bias, two rows, and the in-place residual the model uses."""
    from h1r.model.kernels.gemv import gemv, gemv_reference

    if DEV == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 wrongly")
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEV, dtype)
    bias = torch.randn(N, generator=g).to(DEV, dtype)
    a = torch.randn(M, 2 * K if "silu" in mode else K, generator=g).to(DEV, dtype)
    kw = {}
    if mode == "norm":
        kw["norm_eps"] = 1e-5
    if "silu" in mode:
        kw["silu_mul"] = True
    res = torch.randn(M, N, generator=g).to(DEV, dtype) if "residual" in mode else None
    ref = gemv_reference(a, w, bias, residual=res, **kw)
    # what the model computed before this kernel: norm / activation as their own passes, then F.linear
    x = a.float() * torch.rsqrt(a.float().pow(2).mean(-1, keepdim=True) + 1e-5) if mode == "norm" else \
        (F.silu(a[:, :K].float()) * a[:, K:].float()) if "silu" in mode else a.float()
    lin = F.linear(x, w.float(), bias.float())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel(ref, lin.to(dtype) + (res if res is not None else 0)) < tol
    if res is not None:  # in place, as the residual stream is updated
        keep = res.clone()
        out = gemv(a, w, bias, residual=res, out=res, **kw)
        assert out.data_ptr() == res.data_ptr()
        assert rel(out, ref) < tol and rel(out - keep, lin) < (1e-5 if dtype == torch.float32 else 5e-2)
    else:
        assert rel(gemv(a, w, bias, **kw), ref) < tol
        assert rel(gemv(a, w, None, **kw), gemv_reference(a, w, None, **kw)) < tol
    with pytest.raises(AssertionError, match="does not fit"):
        gemv(a[:, :K - 1], w, bias, **kw)


@pytest.mark.parametrize("M,N,K,config", [
    (2, 70, 300, None),  # ragged N and K, default config (K splits, fp32 out)
    (17, 130, 1000, (32, 64, 4, 4, 2)),  # the last split is short; rows not a power of two
    (64, 200, 512, (64, 128, 1, 4, 2)),  # one split: stored in the input's dtype
    (64, 96, 1024, (64, 128, 2, 4, 3, True)),  # TMA descriptors
    (5, 64, 256, (32, 128, 2, 4, 2, True)),  # TMA with rows padded to the 16-row tile
    (3, 40, 200, (32, 128, 2, 4, 2, True)),  # TMA asked for, K not a whole number of blocks: pointer loads
])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_skinny_linear(M, N, K, config, bias, dtype):
    from h1r.model.kernels.skinny_gemm import default_config, skinny_linear, skinny_reference

    if dtype == torch.bfloat16 and DEV == "cpu":
        pytest.skip("the interpreter's bf16 dot is not a reference")
    g = torch.Generator().manual_seed(M * 7 + N)
    x = torch.randn(M, K, generator=g).to(DEV, dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(DEV, dtype)
    b = torch.randn(N, generator=g).to(DEV, dtype) if bias else None
    out = skinny_linear(x, w, b, config=config)
    split = (config or default_config(M, N, K))[2]
    assert out.shape == (M, N) and out.dtype == (torch.float32 if -(-K // 128) > 1 and split > 1 else dtype)
    assert rel(out, skinny_reference(x, w, b)) < (1e-5 if dtype == torch.float32 else 1e-2)
    # into a strided, zeroed fp32 buffer (a column slice), touching nothing else
    if split > 1:
        wide = torch.zeros(M, N + 3, device=DEV)
        skinny_linear(x, w, b, out=wide[:, :N], config=config)
        assert rel(wide[:, :N], out) < 1e-5 and torch.all(wide[:, N:] == 0)


def test_skinny_preferred_and_fp32_residual():
    from h1r.model.kernels.fused import add_rmsnorm
    from h1r.model.kernels.skinny_gemm import preferred

    assert not preferred("w_down", 1) and preferred("w_down", 16) and not preferred("w_down", 64)
    assert not preferred("w_in", 8) and preferred("lm_head", 8) and not preferred("lm_head", 65)
    # an fp32 split-K sum into the bf16 residual stream rounds like F.linear's bf16 output would
    low = torch.bfloat16 if DEV == "cuda" else torch.float16  # the interpreter's bf16 arithmetic is off
    g = torch.Generator().manual_seed(1)
    h = torch.randn(3, 64, generator=g).to(DEV, low)
    a = torch.randn(3, 64, generator=g).to(DEV)
    w = torch.ones(64, device=DEV, dtype=low)
    h2, _ = add_rmsnorm(h, w, 1e-5, a)
    assert torch.equal(h2, h + a.to(low)) and not torch.equal(h2, (h.float() + a).to(low))


@pytest.mark.parametrize("groups,norm,first", [(1, True, False), (2, True, False), (2, True, True), (1, False, False)])
@pytest.mark.parametrize("M", [1, 2])
def test_gated_gemv_equals_gated_norm_then_projection(groups, norm, first, M):
    """The output projection reading [gated_rmsnorm(y, z) | attention] against the two kernels it fuses
    and against plain PyTorch; z a strided view (as in the model), residual updated in place."""
    from h1r.model.kernels.fused import gated_rmsnorm
    from h1r.model.kernels.gemv import gated_gemv, gated_gemv_fits, gemv

    g = torch.Generator().manual_seed(groups * 10 + M)
    KS, KA, N = 512 * groups * 2, 512, 72
    assert gated_gemv_fits(KS, groups, KA, N) and gated_gemv_fits(64, 2, 96, N) and not gated_gemv_fits(KS, groups, 100, N)
    y = torch.randn(M, KS, generator=g).to(DEV)
    proj = torch.randn(M, KS + 40, generator=g).to(DEV)
    z = proj[:, 40:]  # a strided view into the fused projection
    nw = torch.randn(KS, generator=g).to(DEV) if norm else None
    a = torch.randn(M, KA, generator=g).to(DEV)
    w = (torch.randn(N, KS + KA, generator=g) / (KS + KA) ** 0.5).to(DEV)
    bias = torch.randn(N, generator=g).to(DEV)
    h = torch.randn(M, N, generator=g).to(DEV)
    mo = torch.cat([gated_rmsnorm(y, z, nw, groups, 1e-5, first, torch.float32), a], dim=1)
    two_kernels = gemv(mo, w, bias, residual=h)
    # plain PyTorch
    gate = F.silu(z)
    v = y if norm and first else y * gate  # no norm: the plain SiLU gate
    if norm:
        vg = v.view(M, groups, -1)
        v = (vg * torch.rsqrt(vg.pow(2).mean(-1, keepdim=True) + 1e-5)).view(M, KS) * nw
        v = v * gate if first else v
    plain = h + F.linear(torch.cat([v, a], 1), w, bias)
    h0 = h.clone()
    got = gated_gemv(y, z, nw, groups, 1e-5, first, a, w, bias, residual=h, out=h)
    assert got.data_ptr() == h.data_ptr()
    assert rel(got - h0, plain - h0) < 1e-5 and rel(got, two_kernels) < 1e-5


@pytest.mark.skipif(DEV != "cuda", reason="fla kernels need CUDA")
@pytest.mark.parametrize("lens", [[1, 63, 64, 65], [300], [2, 129, 3, 1]])
def test_varlen_conv_fla_matches_reference(lens):
    """Prefill conv through fla (bf16, [S,C,K] states) against the gather reference: every segment starts
    from its own cached window, including segments shorter than the window."""
    pytest.importorskip("fla")
    from h1r.model.kernels.prefill import varlen_causal_conv

    g = torch.Generator().manual_seed(sum(lens))
    Cc, K = 300, 4
    cu_host = [0]
    for n in lens:
        cu_host.append(cu_host[-1] + n)
    cu = torch.tensor(cu_host, device=DEV)
    wide = torch.randn(cu_host[-1], Cc + 20, generator=g).to(DEV, torch.bfloat16)
    x = wide[:, 10:10 + Cc]  # a strided column slice, as the fused projection hands it over
    w, b = torch.randn(Cc, K, generator=g).to(DEV, torch.bfloat16), torch.randn(Cc, generator=g).to(DEV)
    init = torch.randn(len(lens), Cc, K - 1, generator=g).to(DEV, torch.bfloat16)
    init[0] = 0  # a fresh segment
    y, fin = varlen_causal_conv(x, w, b, cu, init, cu_host, use_fla=True)
    yr, finr = varlen_causal_conv(x, w, b, cu, init, cu_host, use_fla=False)
    assert y.dtype == torch.bfloat16 and fin.shape == finr.shape
    assert rel(y, yr) < 1e-2
    assert torch.equal(fin.float(), finr.float())  # the final window is a copy of inputs, exact


@pytest.mark.skipif(DEV != "cuda", reason="fla kernels and flash attention need CUDA")
@pytest.mark.parametrize("lens", [[1, 63, 64, 65], [300], [7, 129, 2]])
def test_varlen_ssd_and_attention_on_gpu(lens):
    pytest.importorskip("fla")
    from h1r.model.kernels.prefill import segment_attention, varlen_ssd

    g = torch.Generator().manual_seed(sum(lens))
    H, P, Ns, G = 4, 64, 128, 1
    N = sum(lens)
    cu_host = [0]
    for n in lens:
        cu_host.append(cu_host[-1] + n)
    cu = torch.tensor(cu_host, device=DEV)
    x = torch.randn(N, H, P, generator=g).to(DEV, torch.bfloat16)
    dt = F.softplus(torch.randn(N, H, generator=g) - 2).to(DEV)
    A = -torch.rand(H, generator=g).to(DEV) * 4
    B = torch.randn(N, G, Ns, generator=g).to(DEV, torch.bfloat16) * 0.3
    C = torch.randn(N, G, Ns, generator=g).to(DEV, torch.bfloat16) * 0.3
    S0 = torch.randn(len(lens), H, P, Ns, generator=g).to(DEV)
    y, fin = varlen_ssd(x, dt, A, B, C, cu, S0, 256, cu_host, use_fla=True)
    yr, finr = varlen_ssd(x.float(), dt, A, B.float(), C.float(), cu, S0, 256, cu_host, use_fla=False)
    assert rel(y, yr) < 2e-2 and rel(fin, finr) < 2e-2
    # varlen flash attention: several segments (one with a cached prefix), GQA, against the loop
    from h1r.model.kernels.prefill import varlen_attention

    qs, ks, cached_l = [], [], [0, 40, 0]
    for n, c in zip((17, 33, 1), cached_l):
        qs.append(torch.randn(n, 6, 128, generator=g).to(DEV, torch.bfloat16))
        ks.append((torch.randn(c + n, 2, 128, generator=g).to(DEV, torch.bfloat16),
                   torch.randn(c + n, 2, 128, generator=g).to(DEV, torch.bfloat16)))
    cu_q = torch.tensor([0, 17, 50, 51], device=DEV)
    cu_k = torch.tensor([0, 17, 17 + 73, 17 + 73 + 1], device=DEV)
    out = varlen_attention(torch.cat(qs), torch.cat([k for k, _ in ks]), torch.cat([v for _, v in ks]), cu_q, cu_k,
                           33, 73, 128 ** -0.5)
    ref = torch.cat([segment_attention(q.float(), k.float(), v.float(), c, 128 ** -0.5)
                     for q, (k, v), c in zip(qs, ks, cached_l)])
    assert rel(out, ref) < 2e-2
    # flash attention with a cached prefix, merged by log-sum-exp
    for cached in (0, 37):
        T = 50
        q = torch.randn(T, 6, 128, generator=g).to(DEV, torch.bfloat16)
        k = torch.randn(cached + T, 2, 128, generator=g).to(DEV, torch.bfloat16)
        v = torch.randn(cached + T, 2, 128, generator=g).to(DEV, torch.bfloat16)
        out = segment_attention(q, k, v, cached, 128 ** -0.5)
        ref = segment_attention(q.float(), k.float(), v.float(), cached, 128 ** -0.5)
        assert rel(out, ref) < 2e-2


@pytest.mark.skipif(DEV != "cuda", reason="the training kernels need CUDA")
@pytest.mark.parametrize("compile_layers,doc_conv", [(False, False), (True, False), (False, True), (True, True)])
def test_training_path_matches_reference_values_and_gradients(compile_layers, doc_conv, monkeypatch):
    """bf16 autocast training step over packed documents: kernels (fla conv/SSD, varlen flash attention,
    fused cross-entropy) against the plain reference path."""
    pytest.importorskip("fla")
    import h1r.model.context as ctx_mod
    from h1r.checkpoint import init_model
    from h1r.config import preset
    from h1r.train.loss import TokenNLL

    model = init_model(preset("tiny", vocab_size=300, mamba_chunk_size=32, mamba_n_groups=2), seed=1, device=DEV)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (2, 150), generator=g).to(DEV)
    reset = torch.zeros(2, 150, dtype=torch.bool, device=DEV)
    reset[0, [0, 31, 32, 97]] = True  # documents crossing and touching chunk boundaries
    reset[1, [0, 70]] = True
    mask = torch.ones(2, 150, dtype=torch.bool, device=DEV)

    import h1r.model.falcon_h1 as fh

    compile_was = fh.COMPILE_TRAINING, fh.COMPILE_MIN_TOKENS
    fh.COMPILE_MIN_TOKENS = 0  # these 300 tokens would otherwise stay eager

    from h1r.model.kernels import train as TK

    def run(kernels, half=True):  # the reference runs also leave the glue uncompiled (eager PyTorch)
        ctx_mod.USE_TRAIN_KERNELS = fh.COMPILE_TRAINING = kernels
        monkeypatch.setattr(fh, "COMPILE_LAYERS", kernels and compile_layers)
        monkeypatch.setattr(TK, "DOC_CONV", doc_conv)
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=half):
            loss = TokenNLL(model, fused=kernels)(ids, mask, reset=reset).mean()
        loss.backward()
        return loss.item(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    before = dict(TK.CALLS)
    try:
        fast = run(True)
        used = {k: TK.CALLS[k] - before[k] for k in before}
        ref = run(False)  # the plain path in bf16 autocast (its SSD runs in fp32)
        exact = run(False, half=False)  # fp32 throughout: the ground truth
    finally:
        ctx_mod.USE_TRAIN_KERNELS = True
        fh.COMPILE_TRAINING, fh.COMPILE_MIN_TOKENS = compile_was
    # the kernels ran, not the reference (inside a compiled layer the attention is traced, not counted)
    assert all(v > 0 for k, v in used.items() if not (compile_layers and k == "attention")), used
    assert all(TK.CALLS[k] - before[k] == used[k] for k in before)  # and the reference runs used none
    assert abs(fast[0] - exact[0]) < 1e-2 * abs(exact[0])
    bad = []
    for name, g_exact in exact[1].items():
        e_kernel, e_ref = rel(fast[1][name], g_exact), rel(ref[1][name], g_exact)
        # bf16 error of the kernel path: within 6%, or at most twice the plain path's own bf16 error.
        # The dt-bias bound is loose from the fla-parallel SSD days (11.5% here against 3.7% for the plain
        # bf16 path); the chunked SSD's dA gradient measured 0.4% off fp32 on its own
        # (bench/results/ssd_train_gpu.json), so tighten this once the GPU test is re-run.
        bound = 0.15 if name.endswith("dt_bias") else max(0.06, 2 * e_ref)
        if not e_kernel < bound:
            bad.append((name, round(e_kernel, 4), round(e_ref, 4)))
    assert not bad, bad


@pytest.mark.skipif(DEV != "cuda", reason="fla kernels and CUDA graphs need CUDA")
@pytest.mark.parametrize("bias", [True, False])
def test_graphed_training_conv_equals_op_by_op(bias, monkeypatch):
    """The training conv over packed documents with its forward and backward replayed from CUDA graphs: the
    same values and gradients as fla called op by op, for several layers (strided inputs, as the in_proj
    split hands them over) and a second document layout."""
    pytest.importorskip("fla")
    from h1r.model.kernels import train as TK

    from h1r.model.kernels.graphs import _REGISTRY, layer_graphs

    for kind in ("conv.forward", "conv.backward"):
        _REGISTRY.pop(kind, None)
    for i, lens in enumerate(([1, 63, 64, 65, 200], [300, 90])):
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), device=DEV)
        n = sum(lens)
        runs = {}
        for graphs in (False, True):
            monkeypatch.setattr(TK, "CONV_GRAPHS", graphs)
            g = torch.Generator().manual_seed(i)
            out = []
            for _ in range(4):  # layers
                wide = torch.randn(n, 300, generator=g).to(DEV, torch.bfloat16).requires_grad_()
                w = torch.randn(256, 4, generator=g).to(DEV).requires_grad_()
                b = torch.randn(256, generator=g).to(DEV).requires_grad_() if bias else None
                y = TK.conv_varlen(wide[:, 20:276], w, b, cu)
                y.backward(torch.randn(y.shape, generator=g).to(DEV, y.dtype))
                out.append([y.detach()] + [t.grad for t in (wide, w, b) if t is not None])
            runs[graphs] = out
        for a_layer, b_layer in zip(runs[True], runs[False]):
            for a, b_ in zip(a_layer, b_layer):
                torch.testing.assert_close(a, b_, rtol=1e-2, atol=1e-2)
        assert not torch.equal(runs[True][1][0], runs[True][2][0])
        for kind in ("conv.forward", "conv.backward"):
            assert layer_graphs(kind).stats == {"eager": i + 1, "captures": i + 1, "replays": 3 * (i + 1)}


@pytest.mark.skipif(DEV != "cuda", reason="the training kernels need CUDA")
@pytest.mark.parametrize("doc_conv", [False, True])
def test_static_document_context_equals_the_dynamic_one(doc_conv, monkeypatch):
    """DenseContext(doc_capacity=...): cu padded with empty documents and the longest document taken as T
    (nothing read on the host) gives the training step the same loss and gradients."""
    pytest.importorskip("fla")
    from h1r.checkpoint import init_model
    from h1r.config import preset
    from h1r.model.context import DenseContext
    from h1r.model.kernels import train as TK
    from h1r.train.loss import TokenNLL

    monkeypatch.setattr(TK, "DOC_CONV", doc_conv)
    model = init_model(preset("tiny", vocab_size=300, mamba_chunk_size=32, mamba_n_groups=2), seed=2, device=DEV)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (2, 150), generator=g).to(DEV)
    reset = torch.zeros(2, 150, dtype=torch.bool, device=DEV)
    reset[0, [0, 31, 32, 97]] = True
    reset[1, [0, 70]] = True
    mask = torch.ones(2, 150, dtype=torch.bool, device=DEV)
    out = []
    for capacity in (None, 16):
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ctx = DenseContext(None, ids.shape, ids.device, None, reset, None, doc_capacity=capacity)
            loss = TokenNLL(model, fused=True)(ids, mask, reset=reset, ctx=ctx).mean()
        loss.backward()
        if capacity:
            assert ctx.cu.numel() == capacity + 1 and ctx.max_len == 150
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert abs(out[0][0] - out[1][0]) < 1e-4 * abs(out[0][0])
    for name, a in out[0][1].items():
        assert rel(out[1][1][name], a) < 1e-3, name
