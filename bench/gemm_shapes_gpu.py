"""Decode-sized GEMMs of the 7B shape (M = 1 and 64 rows) in three layouts, replayed from CUDA graphs:
whether cuBLAS does better on x @ W^T, (W @ x^T)^T or a K x N copy of the weight. Exploratory; prints only.

    python bench/gemm_shapes_gpu.py     (output of one H200 run: bench/results/gemm_shapes_gpu.log)
"""
import torch, torch.nn.functional as F
dev = "cuda"
def t(fn, reps=200):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(20): fn()
    g.replay(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    s.record()
    for _ in range(reps // 20): g.replay()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) * 1e3 / reps
for M in (1, 64):
    for K, N in ((3072, 24576), (12288, 3072), (3072, 8728), (4608, 3072), (3072, 130048)):
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        W = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        Wt = W.t().contiguous()
        res = {"linear": t(lambda: F.linear(x, W)), "W@xT": t(lambda: (W @ x.t()).t()),
               "x@Wt(KxN)": t(lambda: x @ Wt)}
        gb = N * K * 2 / 1e9
        print(M, K, N, {k: f"{v:.1f}us {gb / v * 1e6 / 1e3:.2f}TB/s" for k, v in res.items()}, flush=True)
