"""Two gloo processes (torchrun, FSDP2 on CPU, activation checkpointing, uneven micro-batch counts) with
the global batch split between them follow the same loss curve as one process; their sharded checkpoint
resumes in a single process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.test_sft_helpers import make_model_dir, make_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_gloo_processes_match_one_process(tmp_path):
    from h1r.train.config import SFTConfig
    from h1r.train.sft import train
    from h1r.utils.config import load_config

    model = make_model_dir(tmp_path / "model")
    data = write_jsonl(tmp_path / "d.jsonl", make_rows(40, seed=4))
    # 7 unpacked rows per step: rank 0 gets 4, rank 1 gets 3 and (micro-batches of 1) runs an empty one
    cfg = dict(model=str(model), data=[str(data)], batch_size=7, micro_batch_size=2, max_seq_len=64, pack=False,
               max_steps=4, save_every=2, lr=3e-3, warmup_steps=1, weighting="loss", progress=False,
               tensorboard=False, seed=2)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "h1r", "sft", "--config", str(cfg_path), "--output_dir", str(two),
                        "--activation_checkpointing", "true", "--micro_batch_size", "1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = tmp_path / "one"
        train(load_config(SFTConfig, cfg_path, ["--output_dir", str(one)]))
        assert len(losses(one)) == 4
        assert losses(two) == pytest.approx(losses(one), rel=1e-5)
        w1, w2 = load_file(str(one / "final/model.safetensors")), load_file(str(two / "final/model.safetensors"))
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)

        # the 2-rank checkpoint is sharded (one file per rank) and resumes in one process (resharded)
        dcp_files = sorted(p.name for p in (two / "checkpoints/step_00000002/dcp").glob("*.distcp"))
        assert dcp_files == ["__0_0.distcp", "__1_0.distcp"]
        train(load_config(SFTConfig, cfg_path, ["--output_dir", str(two), "--resume"]))
        w3 = load_file(str(two / "final/model.safetensors"))
        for k in w1:
            torch.testing.assert_close(w3[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
        assert losses(two) == pytest.approx(losses(one), rel=1e-5)
    finally:
        torch.set_num_threads(n)
