"""Crash safety as in SFT: a GRPO run SIGKILLed between checkpoints and resumed ends with final
weights bit-identical to an uninterrupted run (the checkpoint holds the prompt position and the rollout
cache; rollouts are seeded by position). A crash inside a checkpoint write is tested by the SFT suite
(the same CheckpointManager).
Also: resume refuses changed settings, and the run's metrics and outputs are what the demo reads."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.test_grpo_helpers import grpo_dict, make_model_dir, make_prompt_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]
# the test-only "parity" reward lives in tests.test_grpo_helpers: import it, then run the CLI
LAUNCH = "import sys, tests.test_grpo_helpers; from h1r.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grporesume")
    return make_model_dir(tmp / "model"), write_jsonl(tmp / "p.jsonl", make_prompt_rows(40, seed=1))


def write_config(tmp: Path, model: Path, data: Path, out: Path, **over) -> Path:
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(grpo_dict(model, data, out, max_steps=6, save_every=2, keep_last=2, **over)))
    return path


def start(cfg: Path, *extra, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, "grpo", "--config", str(cfg), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, ok: bool = True) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=240)
    if ok:
        assert p.returncode == 0, err
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def rows(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def assert_same_weights(a: Path, b: Path):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, base):
    model, data = base
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref_cfg, cfg = write_config(tmp_path, model, data, ref_out), write_config(tmp_path, model, data, out)
    ck = out / "checkpoints"

    ref = start(ref_cfg)
    killed = start(cfg, env_extra={"H1R_DEBUG_STEP_SLEEP": "0.3"})  # SIGKILLed after step 5
    deadline = time.time() + 120
    while max((x["step"] for x in rows(out)), default=0) < 5:
        assert killed.poll() is None, killed.communicate()[1]
        assert time.time() < deadline, "the run did not reach step 5"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert finish(killed, ok=False).returncode == -signal.SIGKILL
    assert (ck / "latest").read_text().strip() == "step_00000004" and not (out / "final").exists()

    r = finish(start(cfg, "--resume"))
    assert "resumed from" in r.stderr and "step 4/6" in r.stderr
    finish(ref)

    assert_same_weights(ref_out / "final", out / "final")
    got, want = rows(out), rows(ref_out)
    assert [x["step"] for x in got] == [1, 2, 3, 4, 5, 6]  # steps redone after a crash are logged once
    for key in ("reward", "loss", "cache_hits", "cache_size", "prompts_seen", "is_ratio_max"):
        assert [x.get(key) for x in got] == [x.get(key) for x in want], key
    assert sum(x["cache_hits"] for x in want) > 0  # the cache was exercised (and restored on resume)
    torch_state = torch.load(ck / "step_00000004" / "extras" / "rollout_cache.pt", weights_only=True)
    assert torch_state["capacity"] == 4


def test_run_outputs_and_resume_refuses_changed_settings(tmp_path, base):
    from h1r.errors import ConfigError
    from h1r.train.grpo import train
    from h1r.train.grpo_config import GRPOConfig
    from h1r.utils.config import load_config

    model, data = base
    torch.set_num_threads(1)
    cfg_path = write_config(tmp_path, model, data, tmp_path / "run")
    short = ["--max_steps", "2", "--save_every", "1"]
    final = train(load_config(GRPOConfig, cfg_path, short))
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").read_bytes() == \
        (model / "tokenizer.json").read_bytes()
    m = rows(tmp_path / "run")
    for key in ("reward", "accuracy", "response_length", "clip_ratio", "entropy", "kept_group_share", "cache_hits",
                "rollout_time_s", "train_time_s", "is_weight_mean", "is_ratio_max", "grad_norm", "lr"):
        assert key in m[-1], key
    w0, w1 = load_file(str(model / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # it learned something
    with pytest.raises(ConfigError, match="already holds training checkpoints"):
        train(load_config(GRPOConfig, cfg_path, short))
    with pytest.raises(ConfigError, match=r"settings differ.*epsilon_high: 0.28 -> 0.3"):
        train(load_config(GRPOConfig, cfg_path, [*short, "--resume", "--epsilon_high", "0.3"]))


def test_options_kl_reference_nll_multiple_iterations_masking(tmp_path, base):
    """beta > 0 loads a reference model and logs the KL; nll_coef, entropy_coef, num_iterations > 1,
    masking of truncated completions, per-sequence aggregation and batch std scaling all run."""
    from h1r.train.grpo import train
    from h1r.train.grpo_config import GRPOConfig

    model, data = base
    torch.set_num_threads(1)
    cfg = GRPOConfig(**grpo_dict(model, data, tmp_path / "opt", max_steps=2, beta=0.04, nll_coef=0.1, num_iterations=2,
                                 entropy_coef=0.01, mask_truncated_completions=True, max_completion_length=12,
                                 loss_type="grpo", scale_rewards="batch", reward_funcs=["parity", "format"]))
    train(cfg)
    m = rows(tmp_path / "opt")
    assert m[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # first optimiser step: policy == reference
    assert m[1]["kl"] > 0 and "nll_correct" in m[1]
    assert m[1]["lr"] == pytest.approx(3e-3)  # warmup_steps 1 x num_iterations 2 optimiser steps
    assert sum(x["masked_truncated"] for x in m) > 0
