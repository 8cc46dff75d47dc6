"""Crash safety: SIGKILL mid-run and a crash inside a checkpoint write, then --resume, give final
weights bit-identical to an uninterrupted run (CPU, one thread)."""

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

from tests.test_sft_helpers import make_model_dir, make_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sftresume")
    return make_model_dir(tmp / "model"), write_jsonl(tmp / "d.jsonl", make_rows(24, seed=3))


def write_config(tmp: Path, model: Path, data: Path, out: Path) -> Path:
    cfg = dict(model=str(model), data=[str(data)], output_dir=str(out), batch_size=4, micro_batch_size=2,
               max_seq_len=64, max_steps=6, save_every=2, keep_last=2, lr=3e-3, warmup_steps=1,
               weighting="sample", progress=False, tensorboard=False, seed=5)
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start(cfg: Path, *extra, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "h1r", "sft", "--config", str(cfg), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, ok: bool = True) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=240)
    if ok:
        assert p.returncode == 0, err
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def assert_same_weights(a: Path, b: Path):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def test_crash_in_save_then_sigkill_then_resume_is_bitwise_identical(tmp_path, base):
    """One run dies inside its 2nd checkpoint write, is resumed, is SIGKILLed between checkpoints, and
    is resumed again: its final weights equal those of an uninterrupted run, bit for bit."""
    model, data = base
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    ref_cfg, cfg = write_config(tmp_path, model, data, ref_out), write_config(tmp_path, model, data, out)
    ck = out / "checkpoints"

    # 1. the reference run, and in parallel a run that dies inside its 2nd checkpoint write (step 4)
    ref = start(ref_cfg)
    r = finish(start(cfg, env_extra={"H1R_DEBUG_CRASH_IN_SAVE": "2"}), ok=False)
    assert r.returncode == 9, r.stderr
    assert (ck / "latest").read_text().strip() == "step_00000002"
    assert (ck / ".tmp_step_00000004").is_dir() and not (ck / "step_00000004").exists()
    assert not (out / "final").exists()

    # 2. resume it, slowed down, and SIGKILL it after step 5 (its step-4 checkpoint is written by then)
    killed = start(cfg, "--resume", env_extra={"H1R_DEBUG_STEP_SLEEP": "0.5"})
    deadline = time.time() + 120
    while max(logged_steps(out), default=0) < 5:
        assert killed.poll() is None, killed.communicate()[1]
        assert time.time() < deadline, "the resumed run did not reach step 5"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert finish(killed, ok=False).returncode == -signal.SIGKILL
    assert (ck / "latest").read_text().strip() == "step_00000004"
    assert not (ck / ".tmp_step_00000004").exists()  # the torn save was cleaned up
    assert not (out / "final").exists()

    # 3. resume again, to the end
    r = finish(start(cfg, "--resume"))
    assert "resumed from" in r.stderr and "step 4/6" in r.stderr
    finish(ref)

    assert_same_weights(ref_out / "final", out / "final")
    assert logged_steps(out) == [1, 2, 3, 4, 5, 6]  # steps redone after a crash are logged once
    losses = lambda o: [json.loads(x)["loss"] for x in (o / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert losses(ref_out) == losses(out)
    assert sorted(p.name for p in (ref_out / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
    for name in ("tokenizer.json", "tokenizer_config.json"):  # copied unchanged from the base model
        assert (out / "final" / name).read_bytes() == (model / name).read_bytes()


def test_resume_refuses_changed_settings_and_fresh_run_refuses_existing_checkpoints(tmp_path, base):
    from h1r.errors import ConfigError
    from h1r.train.config import SFTConfig
    from h1r.train.sft import train
    from h1r.utils.config import load_config

    model, data = base
    torch.set_num_threads(1)
    cfg_path = write_config(tmp_path, model, data, tmp_path / "run")
    short = ["--max_steps", "3"]
    train(load_config(SFTConfig, cfg_path, short))
    with pytest.raises(ConfigError, match="already holds training checkpoints"):
        train(load_config(SFTConfig, cfg_path, short))
    with pytest.raises(ConfigError, match=r"settings differ.*lr: 0.003 -> 0.001"):
        train(load_config(SFTConfig, cfg_path, [*short, "--resume", "--lr", "1e-3"]))
    # resuming a finished run redoes the steps after its last checkpoint and exports the same model
    before = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    train(load_config(SFTConfig, cfg_path, [*short, "--resume"]))
    after = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
