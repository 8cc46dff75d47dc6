"""Two gloo processes under torchrun (FSDP2 on CPU; each rank's own engine generates its share of the
groups, which are then gathered) follow the same run as one process: same rewards, same losses, same
final weights up to float reassociation."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.test_grpo_helpers import grpo_dict, make_model_dir, make_prompt_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = """import sys
sys.path.insert(0, {repo!r})
import tests.test_grpo_helpers  # registers the test-only reward
from h1r.cli import main
sys.exit(main(sys.argv[1:]))
"""


def metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    model = make_model_dir(tmp_path / "model")
    data = write_jsonl(tmp_path / "p.jsonl", make_prompt_rows(40, seed=1))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(grpo_dict(model, data, tmp_path / "unused", max_steps=4, pack=True,
                                            per_device_train_batch_size=2)))
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for name, prefix in [("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                  "2"]), ("one", [sys.executable])]:
        runs[name] = out = tmp_path / name
        r = subprocess.run([*prefix, str(launcher), "grpo", "--config", str(cfg), "--output_dir", str(out)], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
    one, two = metrics(runs["one"]), metrics(runs["two"])
    assert [m.get("reward") for m in two] == [m.get("reward") for m in one]
    assert [m["cache_hits"] for m in two] == [m["cache_hits"] for m in one]
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-4, abs=1e-6)
    w1 = load_file(str(runs["one"] / "final/model.safetensors"))
    w2 = load_file(str(runs["two"] / "final/model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)
