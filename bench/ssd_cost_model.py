"""What the training SSD (h1r.model.ssd_packed) asks of the hardware, counted op by op on the CPU: FLOPs
and the bytes each PyTorch op reads and writes, for one layer's forward + backward at a preset's shape.

    python bench/ssd_cost_model.py [--preset falcon-h1-1.5b-deep] [--tokens 16384] [--chunk 128]
    TRITON_INTERPRET=1 python bench/ssd_cost_model.py --scan     # with H1R_SSD_SCAN's Triton state passing

No timing: a lower bound per op of max(FLOPs / matmul rate, bytes / copy bandwidth) with the H200 rates
measured in bench/results (780 TFLOP/s, 4.2 TB/s), summed by kind of op. Ops run eagerly here; on the GPU
torch.compile fuses the elementwise chains, so their bytes are an upper bound there. Writes
bench/results/ssd_cost_model.json (with --scan: ssd_cost_model_scan.json; the scan kernels run in the
Triton interpreter, outside the op ledger, so their bytes are added from their definition: forward reads S
and writes S_in, backward reads dS_in and S_in and writes dS).
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, ".")
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from h1r.config import preset
from h1r.model import ssd_packed as SP

MATMUL_RATE, COPY_BW = 780e12, 4.2e12  # H200, bench/results/decode_gpu.json and train_gpu.log
FREE = {"aten.view.default", "aten.t.default", "aten.transpose.int", "aten.permute.default", "aten.expand.default",
        "aten.slice.Tensor", "aten.select.int", "aten.unsqueeze.default", "aten._unsafe_view.default",
        "aten.alias.default", "aten.diagonal.default", "aten.detach.default", "aten.as_strided.default",
        "aten.split.Tensor", "aten.squeeze.dim", "aten.unbind.int"}


def nbytes(x):
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (list, tuple)):
        return sum(nbytes(t) for t in x)
    return 0


PAUSED = [False]  # while a Triton kernel runs in the interpreter: its own tensor plumbing is not the model's


def paused(fn):
    def run(*args, **kwargs):
        PAUSED[0] = True
        try:
            return fn(*args, **kwargs)
        finally:
            PAUSED[0] = False
    return run


class Ledger(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.rows = defaultdict(lambda: [0, 0.0, 0])  # op -> [calls, bytes, flops]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        if name not in FREE and not PAUSED[0]:
            r = self.rows[name]
            r[0] += 1
            r[1] += nbytes(args) + nbytes(out)
        return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="falcon-h1-1.5b-deep")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--docs", type=int, default=4, help="documents packed in the row")
    ap.add_argument("--scan", action="store_true", help="the Triton scan between chunks (needs TRITON_INTERPRET=1)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.out = args.out or f"bench/results/ssd_cost_model{'_scan' if args.scan else ''}.json"
    if args.scan:
        SP.SCAN = True
        if not SP._use_scan(torch.empty(1)):
            raise SystemExit("--scan needs triton and TRITON_INTERPRET=1 on a CPU machine")
        from h1r.model.kernels import state_passing as SPK

        SPK.state_pass, SPK.state_pass_backward = paused(SPK.state_pass), paused(SPK.state_pass_backward)
    cfg = preset(args.preset)
    H, P, N, G = cfg.mamba_n_heads, cfg.ssm_head_dim, cfg.mamba_d_state, cfg.mamba_n_groups
    Q = args.chunk or cfg.mamba_chunk_size
    n = args.tokens
    torch.manual_seed(0)
    dt = torch.bfloat16
    x = torch.randn(n, H, P, dtype=dt, requires_grad=True)
    dtv = (torch.rand(n, H) * 0.1).requires_grad_()
    A = (-torch.rand(H) - 0.5).requires_grad_()
    B = torch.randn(n, G, N, dtype=dt, requires_grad=True)
    C = torch.randn(n, G, N, dtype=dt, requires_grad=True)
    cu = torch.linspace(0, n, args.docs + 1).long()
    doc = SP.doc_ids_from_cu(cu, n)
    nc = -(-n // Q)
    state_bytes = nc * H * N * P * torch.finfo(dt).bits // 8  # one [nc, G, N, Hg*P] state tensor
    res = {"preset": args.preset, "tokens": n, "chunk": Q, "docs": args.docs, "H": H, "P": P, "N": N, "G": G,
           "scan": args.scan,
           "rates": {"matmul_flops_per_s": MATMUL_RATE, "copy_bytes_per_s": COPY_BW}, "passes": {}}
    for phase in ("forward", "backward"):
        led = Ledger()
        with FlopCounterMode(display=False) as fc:
            if phase == "forward":
                with led:
                    y = SP.ssd_packed(x, dtv, A, B, C, doc, Q)
            else:
                g = torch.randn_like(y)
                with led:
                    y.backward(g)
        flops = {str(k): v for k, v in fc.get_flop_counts().get("Global", {}).items()}
        rows = []
        for op, (calls, b, _) in led.rows.items():
            f = flops.get(op.rsplit(".", 1)[0], 0) if op.count(".") == 2 else flops.get(op, 0)
            rows.append({"op": op, "calls": calls, "GB": b / 1e9, "GFLOP": f / 1e9,
                         "floor_us": max(f / MATMUL_RATE, b / COPY_BW) * 1e6})
        if args.scan:
            b = (2 if phase == "forward" else 3) * state_bytes
            rows.append({"op": "state_passing scan (Triton, from its definition)", "calls": 1, "GB": b / 1e9,
                         "GFLOP": 0.0, "floor_us": b / COPY_BW * 1e6})
        rows.sort(key=lambda r: -r["floor_us"])
        tot = {"GB": sum(r["GB"] for r in rows), "GFLOP": sum(r["GFLOP"] for r in rows),
               "floor_us": sum(r["floor_us"] for r in rows)}
        res["passes"][phase] = {"total": tot, "ops": rows}
        print(f"{phase}: {tot['GFLOP']:.1f} GFLOP, {tot['GB']:.2f} GB moved by eager ops, floor {tot['floor_us']:.0f} us")
        for r in rows[:8]:
            print(f"   {r['op']:40} x{r['calls']:<3} {r['GB']:7.3f} GB {r['GFLOP']:8.2f} GFLOP  {r['floor_us']:7.1f} us")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
