"""The packed, grouped chunked SSD (training path) against the step-by-step recurrence: values and
gradients of x, dt, A, B, C, documents starting anywhere (first token, chunk boundaries, mid-chunk,
one-token documents), odd lengths, several groups."""

import pytest
import torch
import torch.nn.functional as F

from h1r.model import ssd
from h1r.model.ssd_packed import doc_ids_from_cu, ssd_packed


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make(lens, H, P, N, G, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    n = sum(lens)
    x = torch.randn(n, H, P, generator=g, dtype=dtype)
    dt = F.softplus(torch.randn(n, H, generator=g, dtype=dtype) - 1)
    A = -(torch.rand(H, generator=g, dtype=dtype) * 3 + 0.1)
    B = torch.randn(n, G, N, generator=g, dtype=dtype) * 0.5
    C = torch.randn(n, G, N, generator=g, dtype=dtype) * 0.5
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    return x, dt, A, B, C, cu


def reference(x, dt, A, B, C, cu):
    """The recurrence in the inputs' precision, one token at a time, the state zeroed at each document start:
    S = exp(dt A) S + dt x (x) B;  y = S C."""
    n, H, P = x.shape
    G, N = B.shape[1:]
    starts = set(cu[:-1].tolist())
    S = x.new_zeros(H, P, N)
    ys = []
    for t in range(n):
        if t in starts:
            S = S * 0
        Bh, Ch = B[t].repeat_interleave(H // G, 0), C[t].repeat_interleave(H // G, 0)  # [H,N]
        S = torch.exp(dt[t] * A)[:, None, None] * S + (dt[t][:, None] * x[t])[..., None] * Bh[:, None, :]
        ys.append((S * Ch[:, None, :]).sum(-1))
    return torch.stack(ys)


def test_reference_agrees_with_the_library_recurrence():
    x, dt, A, B, C, cu = make([9, 7], 4, 3, 5, 2, torch.float32, seed=1)
    reset = torch.zeros(1, 16, dtype=torch.bool)
    reset[0, [0, 9]] = True
    y_lib, _ = ssd.ssd_sequential(x[None], dt[None], A, B[None], C[None], reset=reset)
    assert rel(reference(x, dt, A, B, C, cu), y_lib[0]) < 1e-6


CASES = [  # (document lengths, chunk)
    ([37], 8),
    ([8, 8, 8], 8),  # documents exactly on chunk boundaries
    ([3, 1, 12, 1, 7, 9], 8),  # mid-chunk starts, one-token documents, odd total (33)
    ([40, 25], 16),  # documents spanning several chunks: the inter-chunk recurrence
    ([1], 4),
]


@pytest.mark.parametrize("lens,Q", CASES)
@pytest.mark.parametrize("G", [1, 2])
def test_values_and_gradients_match_the_recurrence(lens, Q, G):
    H, P, N = 4, 3, 5
    inputs = [t.requires_grad_() for t in make(lens, H, P, N, G, torch.float64, seed=len(lens) * 10 + Q + G)[:5]]
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    doc = doc_ids_from_cu(cu, sum(lens))
    y = ssd_packed(*inputs, doc, Q)
    y_ref = reference(*inputs, cu)
    assert rel(y, y_ref) < 1e-10
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, inputs, dy)
    grads_ref = torch.autograd.grad(y_ref, inputs, dy)
    for name, gr, gref in zip("x dt A B C".split(), grads, grads_ref):
        assert rel(gr, gref) < 1e-9, name


def test_gradcheck():
    x, dt, A, B, C, cu = make([5, 6, 2], 2, 2, 3, 1, torch.float64, seed=3)
    doc = doc_ids_from_cu(cu, 13)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C)]
    assert torch.autograd.gradcheck(lambda *t: ssd_packed(*t, doc, 4), inputs)


def test_documents_do_not_leak():
    """Changing an earlier document changes nothing in a later one, in the output or its gradients."""
    lens, Q = [10, 13], 8
    x, dt, A, B, C, cu = make(lens, 3, 4, 5, 1, torch.float64, seed=7)
    doc = doc_ids_from_cu(cu, 23)
    y1 = ssd_packed(x, dt, A, B, C, doc, Q)
    x2 = x.clone()
    x2[:10] += 1.0
    y2 = ssd_packed(x2, dt, A, B, C, doc, Q)
    assert not torch.allclose(y1[:10], y2[:10])
    assert torch.equal(y1[10:], y2[10:])


def test_strong_decay_and_fp32_match():
    """Large log-decays (dt*A down to about -60 per step): no overflow, no NaN, fp32 within 1e-5."""
    lens = [50, 30]
    x, dt, A, B, C, cu = make(lens, 4, 8, 16, 2, torch.float32, seed=11)
    dt = dt * 20
    doc = doc_ids_from_cu(cu, 80)
    inputs = [t.requires_grad_() for t in (x, dt, A, B, C)]
    y = ssd_packed(*inputs, doc, 16)
    y_ref = reference(*(t.detach().double() for t in inputs), cu)
    assert torch.isfinite(y).all()
    assert rel(y.double(), y_ref) < 1e-5
    g = torch.autograd.grad(y.sum(), inputs)
    assert all(torch.isfinite(t).all() for t in g)


def test_bf16_operands_stay_close():
    """bf16 matmul operands (what autocast training uses) against the fp64 recurrence."""
    lens = [70, 58]
    x, dt, A, B, C, cu = make(lens, 4, 16, 32, 1, torch.float32, seed=5)
    doc = doc_ids_from_cu(cu, 128)
    y = ssd_packed(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), doc, 32)
    y_ref = reference(x.double(), dt.double(), A.double(), B.double(), C.double(), cu)
    assert y.dtype == torch.float32
    assert rel(y.double(), y_ref) < 2e-2


def test_doc_ids_from_cu():
    assert doc_ids_from_cu(torch.tensor([0, 2, 3, 6]), 6).tolist() == [0, 0, 1, 2, 2, 2]
    assert doc_ids_from_cu(torch.tensor([0, 4]), 4).tolist() == [0, 0, 0, 0]


def test_compiled_pieces_match_eager(monkeypatch):
    """The torch.compile'd elementwise pieces (the GPU default) compute what the eager ones do."""
    import h1r.model.ssd_packed as SP

    lens, Q = [19, 1, 30], 16
    x, dt, A, B, C, cu = make(lens, 4, 8, 6, 2, torch.float64, seed=13)
    doc = doc_ids_from_cu(cu, sum(lens))
    dy = torch.randn(sum(lens), 4, 8, dtype=torch.float64)

    def run():
        ins = [t.detach().clone().requires_grad_() for t in (x, dt, A, B, C)]
        y = ssd_packed(*ins, doc, Q)
        return [y.detach()] + list(torch.autograd.grad(y, ins, dy))

    from torch._dynamo.utils import counters

    eager = run()
    monkeypatch.setattr(SP, "COMPILE_ON_CPU", True)
    graphs = counters["stats"]["unique_graphs"]
    compiled = run()
    assert counters["stats"]["unique_graphs"] - graphs >= 6  # every piece went through dynamo
    for name, c, e in zip("y x dt A B C".split(), compiled, eager):
        assert rel(c, e) < 1e-12, name


def test_result_and_compiled_pieces_do_not_depend_on_the_callers_autocast(monkeypatch):
    """Training calls the SSD forward under autocast and its backward without: the forward must compute the
    same thing either way (C.B in fp32, as the backward recomputes it, not rounded by autocast), and the
    compiled elementwise pieces must serve both from one entry (a bench process ran into torch's recompile
    limit on the autocast guard)."""
    import h1r.model.ssd_packed as SP
    from torch._dynamo.utils import counters

    x, dt, A, B, C, cu = make([21, 11], 4, 8, 6, 2, torch.float32, seed=5)
    x, B, C = x.bfloat16(), B.bfloat16(), C.bfloat16()  # what the layer hands over under autocast
    doc = doc_ids_from_cu(cu, 32)
    dy = torch.randn(32, 4, 8)

    def run():
        ins = [t.detach().clone().requires_grad_() for t in (x, dt, A, B, C)]
        y = ssd_packed(*ins, doc, 16)
        return [y.detach()] + list(torch.autograd.grad(y, ins, dy))

    plain = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = run()
    for name, u, p in zip("y x dt A B C".split(), under, plain):
        assert torch.equal(u, p), name

    monkeypatch.setattr(SP, "COMPILE_ON_CPU", True)
    run()  # compiles (or finds) the entries
    graphs = counters["stats"]["unique_graphs"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run()
    assert counters["stats"]["unique_graphs"] == graphs


def test_layout_is_reused_for_one_doc_tensor_and_rebuilt_for_another():
    """The per-step layout cache is keyed by the doc tensor itself: the same length with other document
    boundaries (the next training step) must not reuse it."""
    from h1r.model.ssd_packed import layout_for

    x, dt, A, B, C, _ = make([30], 2, 3, 4, 1, torch.float64, seed=17)
    for lens in ([10, 20], [25, 5], [10, 20]):
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
        doc = doc_ids_from_cu(cu, 30)
        assert layout_for(doc, 8) is layout_for(doc, 8)
        assert layout_for(doc, 8) is not layout_for(doc.clone(), 8)
        assert rel(ssd_packed(x, dt, A, B, C, doc, 8), reference(x, dt, A, B, C, cu)) < 1e-10


def test_training_dispatch(monkeypatch):
    """With gradients the training SSD is ssd_packed; forward-only calls keep fla's chunked forward where
    fla-core is installed (tests/test_train_kernel_gate.py: where not); an unknown H1R_TRAIN_SSD is an error
    that names it."""
    import h1r.model.kernels.train as TK

    from h1r.model import kernels

    monkeypatch.setattr(kernels, "fla_available", lambda: True)
    lens = [6, 10]
    x, dt, A, B, C, cu = make(lens, 2, 3, 4, 1, torch.float64, seed=19)
    calls = []
    monkeypatch.setattr(TK, "_ssd_fla", lambda *a: calls.append("fla") or torch.zeros_like(a[0]))
    y = TK.ssd_varlen(x.requires_grad_(), dt, A, B, C, cu)
    assert calls == [] and rel(y, reference(x, dt, A, B, C, cu)) < 1e-10
    with torch.no_grad():
        TK.ssd_varlen(x, dt, A, B, C, cu)
    assert calls == ["fla"]
    monkeypatch.setattr(TK, "SSD_KERNEL", "fast")
    with pytest.raises(ValueError, match="H1R_TRAIN_SSD='fast'"):
        TK.ssd_varlen(x, dt, A, B, C, cu)


def test_a_document_index_of_the_wrong_length_is_a_named_error():
    x, dt, A, B, C, _ = make([12], 2, 3, 4, 1, torch.float32, seed=23)
    with pytest.raises(ValueError, match="12 tokens but the document index covers 11"):
        ssd_packed(x, dt, A, B, C, torch.zeros(11, dtype=torch.int64), 8)


@pytest.mark.parametrize("lens,Q", CASES)
@pytest.mark.parametrize("G", [1, 2])
def test_scan_state_passing_matches_the_dense_product(lens, Q, G, monkeypatch):
    """H1R_SSD_SCAN=1 (the Triton scan between chunks, kernels/state_passing.py): the same values and
    gradients as the dense [nc, nc] product and as the recurrence. Runs on CUDA or under TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    from h1r.model import kernels
    from h1r.model import ssd_packed as SP

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if not kernels.available(dev):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    H, P, N = 4, 3, 5
    base = make(lens, H, P, N, G, torch.float64, seed=len(lens) * 10 + Q + G + 1)
    cu = base[5]
    doc = doc_ids_from_cu(cu, sum(lens)).to(dev)
    runs = {}
    for scan in (False, True):
        monkeypatch.setattr(SP, "SCAN", scan)
        assert SP._use_scan(torch.empty(1, device=dev)) == scan
        inputs = [t.float().to(dev).requires_grad_() for t in base[:5]]
        y = ssd_packed(*inputs, doc, Q)
        dy = torch.ones_like(y).cumsum(0) / y.shape[0]
        runs[scan] = [y] + list(torch.autograd.grad(y, inputs, dy))
    y_ref = reference(*base[:5], cu)
    assert rel(runs[True][0].double().cpu(), y_ref) < 1e-5
    for name, a, b in zip("y x dt A B C".split(), runs[True], runs[False]):
        assert rel(a, b) < 1e-5, name


FUSED_CASES = [  # (document lengths, chunk, P, N): the kernel's tile takes chunks of 16..128
    ([37], 16, 3, 5),
    ([16, 16, 16], 16, 4, 8),  # documents exactly on chunk boundaries
    ([3, 1, 12, 1, 7, 9, 20], 16, 20, 80),  # mid-chunk starts, one-token documents, odd total; P, N masked
    ([70, 25], 32, 16, 16),  # N in two blocks; documents spanning several chunks
    ([1], 16, 3, 5),
]


@pytest.mark.parametrize("lens,Q,P,N", FUSED_CASES)
@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("scan,atomic", [(False, True), (True, True), (True, False)])
def test_fused_chunk_output_matches_the_pytorch_path(lens, Q, P, N, G, scan, atomic, monkeypatch):
    """H1R_SSD_FUSED=1 (kernels/ssd_chunk.py: one Triton program per chunk and head): the same values and
    gradients as the PyTorch path and the recurrence, with either state passing and either way of summing
    dCB over a group's heads. Runs on CUDA or under TRITON_INTERPRET=1."""
    pytest.importorskip("triton")
    from h1r.model import kernels
    from h1r.model import ssd_packed as SP
    from h1r.model.kernels import ssd_chunk

    monkeypatch.setattr(ssd_chunk, "DCB_ATOMIC", atomic)

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if not kernels.available(dev):
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    H = 4
    base = make(lens, H, P, N, G, torch.float64, seed=len(lens) * 10 + Q + G + P)
    cu = base[5]
    doc = doc_ids_from_cu(cu, sum(lens)).to(dev)
    monkeypatch.setattr(SP, "SCAN", scan)
    runs = {}
    for fused in (False, True):
        monkeypatch.setattr(SP, "FUSED", fused)
        inputs = [t.float().to(dev).requires_grad_() for t in base[:5]]
        k = SP._Chunks(inputs[0], inputs[1], inputs[3], inputs[4], SP.layout_for(doc, Q))
        assert SP._use_fused(k) == fused
        y = ssd_packed(*inputs, doc, Q)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(5)).to(dev)
        runs[fused] = [y] + list(torch.autograd.grad(y, inputs, dy))
    assert rel(runs[True][0].double().cpu(), reference(*base[:5], cu)) < 1e-5
    for name, a, b in zip("y x dt A B C".split(), runs[True], runs[False]):
        assert rel(a, b) < 1e-5, name


def test_fused_kernels_take_other_warp_counts(monkeypatch):
    """ssd_chunk.WARPS (the launch a device session may sweep) reaches both kernels and keeps them right."""
    pytest.importorskip("triton")
    from h1r.model.kernels import ssd_chunk

    monkeypatch.setattr(ssd_chunk, "WARPS", {"fwd": (16, 4), "bwd": (2, 8)})
    nc, G, H, Q, P, N = 2, 1, 2, 16, 4, 8
    shapes = dict(xdt=(nc * Q, H, P), C=(nc * Q, G, N), S_in=(nc, G, N, H * P), CB=(nc, G, Q, Q), cs=(nc, Q, H))
    t = {k: torch.zeros(v) for k, v in shapes.items()}
    args = (t["xdt"], t["C"], t["S_in"], t["CB"], t["cs"], torch.zeros(nc * Q, dtype=torch.long))
    assert [ssd_chunk._launch_args(*args, kind)[2]["num_warps"] for kind in ("fwd", "bwd")] == [16, 2]
    lens, Q, P, N = FUSED_CASES[2]
    test_fused_chunk_output_matches_the_pytorch_path(lens, Q, P, N, 2, True, True, monkeypatch)


@pytest.mark.parametrize("lens,Q,P,N,cols", [([3, 1, 12, 1, 7, 9, 20, 40], 32, 20, 80, 16),
                                              ([70, 25, 1, 33], 64, 16, 16, 16),
                                              ([100, 1, 60, 97], 128, 16, 16, 64)])  # the default's split
@pytest.mark.parametrize("atomic", [True, False])
def test_backward_in_column_blocks_matches(lens, Q, P, N, cols, atomic, monkeypatch):
    """ssd_chunk.BWD_COLS: the backward over [Q, cols] column blocks of the tile (documents starting inside and
    across the blocks) gives the PyTorch path's gradients; the whole-tile kernel is not called."""
    pytest.importorskip("triton")
    from h1r.model.kernels import ssd_chunk

    monkeypatch.setattr(ssd_chunk, "BWD_COLS", cols)
    monkeypatch.setattr(ssd_chunk, "_out_bwd_kernel", None)  # taking it would fail
    test_fused_chunk_output_matches_the_pytorch_path(lens, Q, P, N, 2, True, atomic, monkeypatch)


@pytest.mark.parametrize("lens,Q,P,N", [([3, 1, 12, 1, 7, 9, 20, 40], 32, 20, 80), ([100, 1, 60, 97], 128, 16, 16)])
def test_backward_over_the_whole_tile_matches(lens, Q, P, N, monkeypatch):
    """BWD_COLS=None (the whole [Q, Q] tile a program, the default before 2026-12-05) stays right."""
    pytest.importorskip("triton")
    from h1r.model.kernels import ssd_chunk

    monkeypatch.setattr(ssd_chunk, "BWD_COLS", None)
    monkeypatch.setattr(ssd_chunk, "_out_bwd_cols_kernel", None)  # taking it would fail
    test_fused_chunk_output_matches_the_pytorch_path(lens, Q, P, N, 2, True, True, monkeypatch)


def test_column_blocks_that_do_not_tile_the_chunk_are_a_named_error(monkeypatch):
    pytest.importorskip("triton")
    from h1r.model.kernels import ssd_chunk

    monkeypatch.setattr(ssd_chunk, "BWD_COLS", 24)
    nc, G, H, Q, P, N = 1, 1, 2, 32, 4, 16
    t = [torch.zeros(s) for s in ((nc * Q, H, P), (nc * Q, H, P), (nc * Q, G, N), (nc, G, N, H * P), (nc, G, Q, Q),
                                  (nc, Q, H))]
    with pytest.raises(ValueError, match="BWD_COLS=24: needs a power of two >= 16 that divides the chunk"):
        ssd_chunk.chunk_output_backward(*t, torch.zeros(nc * Q, dtype=torch.long))


def test_fused_kernel_takes_tiles_of_16_to_128():
    """Chunks that are not a power of two in 16..128, and fp64, keep the PyTorch path."""
    pytest.importorskip("triton")
    from h1r.model.kernels import ssd_chunk

    assert not ssd_chunk.supported(8, 64, torch.float32) and not ssd_chunk.supported(256, 64, torch.bfloat16)
    assert not ssd_chunk.supported(64, 64, torch.float64) and ssd_chunk.supported(128, 64, torch.bfloat16)


def test_fp64_stays_exact_with_the_kernels_switched_on(monkeypatch):
    """fp64 (and the CPU without the interpreter) falls back to the PyTorch path whatever the switches say."""
    from h1r.model import ssd_packed as SP

    monkeypatch.setattr(SP, "FUSED", True)
    monkeypatch.setattr(SP, "SCAN", True)
    x, dt, A, B, C, cu = make([20], 2, 3, 4, 1, torch.float64, seed=3)
    assert rel(ssd_packed(x, dt, A, B, C, doc_ids_from_cu(cu, 20), 16), reference(x, dt, A, B, C, cu)) < 1e-10


def test_scan_refuses_states_past_int32_indexing():
    """The scan indexes in int32: a batch whose states pass 2^31 elements is a named error, not garbage."""
    pytest.importorskip("triton")
    from h1r.model.kernels.state_passing import state_pass

    nc, state = 2 ** 11 + 1, 2 ** 20  # 2^31 + 2^20 state elements, on the meta device (no memory)
    S = torch.empty(nc, 1, 1, state, device="meta")
    with pytest.raises(ValueError, match="pass 2\\^31 elements"):
        state_pass(S, torch.zeros(nc, 4, device="meta"))


def test_chunk_kernels_refuse_tensors_past_int32_indexing():
    pytest.importorskip("triton")
    from h1r.model.kernels.ssd_chunk import chunk_output

    nc, Q, H, P, N = 2 ** 11, 128, 64, 128, 8  # 2^31 elements of xdt, on the meta device (no memory)
    T = nc * Q
    m = dict(device="meta")
    with pytest.raises(ValueError, match="pass 2\\^31 elements"):
        chunk_output(torch.empty(T, H, P, **m), torch.empty(T, 1, N, **m), torch.empty(nc, 1, N, H * P, **m),
                     torch.empty(nc, 1, Q, Q, **m), torch.empty(nc, Q, H, **m), torch.empty(T, dtype=torch.long, **m))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphed_layers_equal_op_by_op(dtype, monkeypatch):
    """Several "layers" (different inputs, one document layout) through the SSD with the CUDA graphs on and
    off: the same outputs and gradients; the first call runs eagerly, the second is captured, the rest replay;
    a new layout starts over."""
    import h1r.model.ssd_packed as SP

    dev = torch.device("cuda")

    def layers(lens, seeds, graphs):
        monkeypatch.setattr(SP, "GRAPHS", graphs)
        doc = doc_ids_from_cu(make(lens, 4, 16, 32, 2, dtype, 0)[5].to(dev), sum(lens))
        out = []
        for seed in seeds:
            ts = [t.to(dev).requires_grad_() for t in make(lens, 4, 16, 32, 2, torch.float32, seed)[:5]]
            x, dt, A, B, C = ts
            y = ssd_packed(x.to(dtype), dt, A, B, C, doc, 16)
            out.append((y.detach(), ts, y))
        gy = [torch.randn_like(y) for y, _, _ in out]
        for (_, _, y), g in zip(reversed(out), reversed(gy)):  # backward in reverse, as the layers do
            y.backward(g)
        return [(y, [t.grad for t in ts]) for y, ts, _ in out]

    from h1r.model.kernels.graphs import _REGISTRY, layer_graphs

    for kind in ("forward", "backward"):
        _REGISTRY.pop(f"ssd_packed.{kind}", None)
    for i, lens in enumerate(([40, 25, 3], [16, 16, 1, 30])):  # the second: a new layout, so new graphs
        seeds = [1, 2, 3, 4]
        torch.manual_seed(0)
        plain = layers(lens, seeds, False)
        torch.manual_seed(0)
        graphed = layers(lens, seeds, True)
        for kind in ("forward", "backward"):
            assert layer_graphs(f"ssd_packed.{kind}").stats == {"eager": i + 1, "captures": i + 1, "replays": 3 * (i + 1)}
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
        for (y0, g0), (y1, g1) in zip(plain, graphed):
            torch.testing.assert_close(y1, y0, **tol)
            for a, b in zip(g1, g0):
                torch.testing.assert_close(a, b, **tol)
        assert not torch.equal(graphed[1][0], graphed[2][0])  # each layer's own inputs, not a stale buffer
