"""`h1r grpo` on bad input: one clear line naming the problem, exit code 2, no traceback."""

import json

import pytest
import yaml

from h1r.cli import main
from tests.test_grpo_helpers import grpo_dict, make_model_dir, make_prompt_rows, write_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("grpocli") / "model")


def config(tmp_path, model_dir, data, **over):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(grpo_dict(model_dir, data, tmp_path / "run", max_steps=1, **over)))
    return path


def grpo_error(capsys, *argv) -> str:
    assert main(["grpo", *argv]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("h1r grpo: error: ") and "Traceback" not in err
    return last


def test_unknown_key_and_bad_values(tmp_path, model_dir, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", make_prompt_rows(4))
    cfg = str(config(tmp_path, model_dir, data))
    assert "unknown config key 'num_generation'" in grpo_error(capsys, "--config", cfg, "--num_generation", "8")
    assert "loss_type: 'ppo' is not one of" in grpo_error(capsys, "--config", cfg, "--loss_type", "ppo")
    assert "num_generations must be >= 2" in grpo_error(capsys, "--config", cfg, "--num_generations", "1")
    assert "must be a positive multiple of num_generations" in grpo_error(
        capsys, "--config", cfg, "--generation_batch_size", "10")
    assert "unknown reward 'acc'" in grpo_error(capsys, "--config", cfg, "--reward_funcs", "acc")
    assert "reward_weights has 2 values for 1 reward_funcs" in grpo_error(
        capsys, "--config", cfg, "--reward_weights", "1,2")
    assert "importance_sampling_cap must be >= 1" in grpo_error(
        capsys, "--config", cfg, "--importance_sampling_cap", "0.5")


def test_missing_model_and_files(tmp_path, model_dir, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", make_prompt_rows(4))
    cfg = str(config(tmp_path, model_dir, data))
    assert f"model: {tmp_path / 'nope'} is not a directory" in grpo_error(
        capsys, "--config", cfg, "--model", str(tmp_path / "nope"))
    assert f"{tmp_path / 'none.jsonl'}: no such data file" in grpo_error(
        capsys, "--config", cfg, "--data", str(tmp_path / "none.jsonl"))
    assert "eval_data:" in grpo_error(capsys, "--config", cfg, "--eval_data", str(tmp_path / "e.jsonl"))
    assert "config file" in grpo_error(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert "model is required" in grpo_error(capsys, "--data", str(data), "--output_dir", str(tmp_path / "o"))


def test_broken_jsonl_and_bad_rows_name_file_and_line(tmp_path, model_dir, capsys):
    lines = [json.dumps(r) for r in make_prompt_rows(4)]
    lines[2] = lines[2][:-4]
    data = tmp_path / "broken.jsonl"
    data.write_text("\n".join(lines) + "\n")
    assert f"{data}:3: invalid JSON" in grpo_error(capsys, "--config", str(config(tmp_path, model_dir, data)))
    for row, msg in [({"prompt": "w1"}, "the row has no gold 'answer'"),
                     ({"question": "w1", "answer": "1"}, "a prompt row needs 'messages' or 'prompt'"),
                     ({"messages": [{"role": "assistant", "content": "w1"}], "answer": "1"},
                      "the conversation must end with the user turn")]:
        data = write_jsonl(tmp_path / "d.jsonl", [*make_prompt_rows(1), row])
        assert f"{data}:2: {msg}" in grpo_error(capsys, "--config", str(config(tmp_path, model_dir, data)))
    data = write_jsonl(tmp_path / "code.jsonl", [{"prompt": "w1", "answer": "1", "kind": "code"}])
    assert "no usable prompts" in grpo_error(capsys, "--config", str(config(tmp_path, model_dir, data)))


def test_help_lists_config_keys(capsys):
    with pytest.raises(SystemExit):
        main(["grpo", "--help"])
    out = capsys.readouterr().out
    assert "--epsilon_high (default: 0.28)" in out and "--filter-only" in out


def test_filter_only_writes_the_curriculum(tmp_path, model_dir, capsys):
    data = write_jsonl(tmp_path / "p.jsonl", make_prompt_rows(6))
    cfg = config(tmp_path, model_dir, data, filter_keep_unsolved=1.0, filter_num_samples=4)
    assert main(["grpo", "--config", str(cfg), "--filter-only"]) == 0
    path = tmp_path / "run" / "curriculum.jsonl"
    assert capsys.readouterr().out.strip() == str(path) and path.is_file()
    assert not (tmp_path / "run" / "checkpoints").exists()  # no training
