"""Decode-sized GEMMs of the 7B shape (M = 1 and 64 rows) in three layouts, timed in CUDA graphs: whether
cuBLAS does better on x @ W^T, (W @ x^T)^T or a K x N copy of the weight. Exploratory; prints only.

    python bench/gemm_shapes_gpu.py     (output of one H200 run: bench/results/gemm_shapes_gpu.log)
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.decode_gpu import time_graph  # noqa: E402

dev = "cuda"
for M in (1, 64):
    for K, N in ((3072, 24576), (12288, 3072), (3072, 8728), (4608, 3072), (3072, 130048)):
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        W = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        Wt = W.t().contiguous()
        res = {"linear": time_graph(lambda: F.linear(x, W), 20, 10), "W@xT": time_graph(lambda: (W @ x.t()).t(), 20, 10),
               "x@Wt(KxN)": time_graph(lambda: x @ Wt, 20, 10)}
        gb = N * K * 2 / 1e9
        print(M, K, N, {k: f"{v:.1f}us {gb / v * 1e6 / 1e3:.2f}TB/s" for k, v in res.items()}, flush=True)
