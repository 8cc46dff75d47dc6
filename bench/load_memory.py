"""Peak resident memory while loading a checkpoint, as a multiple of its size on disk.

    python bench/load_memory.py [--preset falcon-h1-0.5b] [--dtype bfloat16] [--out bench/results/load_memory.json]

Writes a random checkpoint of the preset shape, then in fresh processes loads it with H1R's
`load_model` and with transformers' `from_pretrained` (the peer), reading the kernel's peak-RSS
counter (VmHWM, reset with /proc/self/clear_refs just before the load). transformers memory-maps
the safetensors file, so its weights become resident only when first used: the second column
reads the peak again after one forward pass, which touches every weight.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(2)
def rss(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import transformers, h1r.checkpoint  # imports before the baseline
which, path, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
open('/proc/self/clear_refs', 'w').write('5')
base = rss('VmRSS'); t0 = time.perf_counter()
if which == 'h1r':
    m = h1r.checkpoint.load_model(path, dtype=dtype)
else:
    m = transformers.FalconH1ForCausalLM.from_pretrained(path, dtype=dtype)
dt = time.perf_counter() - t0
peak = rss('VmHWM')
with torch.no_grad():  # touch every weight once (memory-mapped loaders fault pages in here)
    m(torch.ones(1, 4, dtype=torch.long))
print(json.dumps({'baseline_rss': base, 'peak_rss': peak, 'peak_rss_after_forward': rss('VmHWM'),
                  'seconds': dt, 'params': sum(p.numel() for p in m.parameters())}))
"""


def measure(which: str, path: Path, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(path), dtype], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["peak_increase"] = r["peak_rss"] - r["baseline_rss"]
    r["peak_increase_after_forward"] = r["peak_rss_after_forward"] - r["baseline_rss"]
    return r


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="falcon-h1-0.5b")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--out", default="bench/results/load_memory.json")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args(argv)
    import torch

    from h1r.checkpoint import init_model, save_model
    from h1r.config import preset

    with tempfile.TemporaryDirectory() as tmp:
        cfg = preset(args.preset)
        t0 = time.perf_counter()
        model = init_model(cfg, seed=0, dtype=getattr(torch, args.dtype))
        save_model(model, tmp, max_shard_size="400MB")
        del model
        size = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))
        print(f"wrote {args.preset} ({cfg.num_parameters() / 1e6:.0f} M params, {size / 1e9:.2f} GB) "
              f"in {time.perf_counter() - t0:.1f}s")
        results = {"preset": args.preset, "dtype": args.dtype, "checkpoint_bytes": size,
                   "params": cfg.num_parameters(), "loaders": {}}
        for which in ["h1r"] + ([] if args.skip_transformers else ["transformers"]):
            r = measure(which, Path(tmp), args.dtype)
            if "error" not in r:
                r["peak_increase_over_size"] = r["peak_increase"] / size
            results["loaders"][which] = r
    print(f"{'loader':<14}{'peak RSS increase':>20}{'x size':>8}{'after 1 forward':>18}{'x size':>8}{'load s':>8}")
    for which, r in results["loaders"].items():
        if "error" in r:
            print(f"{which:<14}  error: {r['error']}")
            continue
        af = r["peak_increase_after_forward"]
        print(f"{which:<14}{r['peak_increase'] / 1e9:>17.2f} GB{r['peak_increase_over_size']:>8.2f}"
              f"{af / 1e9:>15.2f} GB{af / size:>8.2f}{r['seconds']:>8.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
