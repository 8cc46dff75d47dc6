"""`h1r sft` on bad input: one clear line naming the problem, exit code 2, no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from h1r.cli import main
from tests.test_sft_helpers import make_model_dir, make_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("sftcli") / "model")


def config(tmp_path: Path, model_dir: Path, data: Path, **over) -> Path:
    cfg = dict(model=str(model_dir), data=[str(data)], output_dir=str(tmp_path / "run"), batch_size=2,
               micro_batch_size=2, max_seq_len=64, max_steps=1, progress=False, tensorboard=False, **over)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def sft_error(capsys, *argv) -> str:
    assert main(["sft", *argv]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("h1r sft: error: ") and "Traceback" not in err
    return last


def test_broken_jsonl_line_names_file_and_line(tmp_path, model_dir, capsys):
    rows = [json.dumps(r) for r in make_rows(4)]
    rows[2] = rows[2][:-5]  # torn line 3
    data = tmp_path / "broken.jsonl"
    data.write_text("\n".join(rows) + "\n")
    err = sft_error(capsys, "--config", str(config(tmp_path, model_dir, data)))
    assert f"{data}:3: invalid JSON" in err


@pytest.mark.parametrize("row, msg", [
    ({"question": "w1", "answer": "w2"}, "a row needs 'messages', or 'prompt' and 'response' (found keys: answer, question)"),
    ({"prompt": "w1"}, "a row needs 'messages', or 'prompt' and 'response'"),
    ({"messages": [{"role": "user", "content": "w1"}]}, "the last message must be the assistant turn"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "w1"}]}, "messages[0] needs string 'role' and 'content'"),
    ({"prompt": "w1", "response": "w2", "difficulty": "impossible"}, "'difficulty' must be one of easy, medium, hard"),
])
def test_bad_rows_name_file_and_line(tmp_path, model_dir, capsys, row, msg):
    data = write_jsonl(tmp_path / "d.jsonl", [*make_rows(1), row])
    err = sft_error(capsys, "--config", str(config(tmp_path, model_dir, data)))
    assert f"{data}:2: {msg}" in err


def test_bad_config(tmp_path, model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", make_rows(4))
    cfg = config(tmp_path, model_dir, data)
    assert "unknown config key 'lrr'" in sft_error(capsys, "--config", str(cfg), "--lrr", "1e-3")
    assert "'linear_decay' is not one of" in sft_error(capsys, "--config", str(cfg), "--schedule", "linear_decay")
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(cfg.read_text() + "warmpu_steps: 3\n")
    assert "unknown config key 'warmpu_steps'" in sft_error(capsys, "--config", str(bad_file))
    assert "model: /nonexistent/model is not a directory" in sft_error(
        capsys, "--config", str(cfg), "--model", "/nonexistent/model")
    assert "data is required" in sft_error(capsys, "--model", str(model_dir), "--output_dir", str(tmp_path / "o"))
    assert "no such data file" in sft_error(capsys, "--config", str(cfg), "--data", str(tmp_path / "nope.jsonl"))
    assert "fewer than batch_size=64" in sft_error(capsys, "--config", str(cfg), "--batch_size", "64",
                                                            "--max_steps", "none")
    assert "config file" in sft_error(capsys, "--config", str(tmp_path / "missing.yaml"))
    assert "cuda_graph needs a CUDA device, but device is cpu" in sft_error(
        capsys, "--config", str(cfg), "--cuda_graph", "true", "--device", "cpu")
    assert "graph_docs_per_row must be >= 1" in sft_error(capsys, "--config", str(cfg), "--graph_docs_per_row", "0")
    if not torch.cuda.is_available():  # device auto resolves to the CPU: refused before any training
        assert "cuda_graph needs a CUDA device; this run is on cpu" in sft_error(
            capsys, "--config", str(cfg), "--cuda_graph", "true")
        assert not (tmp_path / "run").exists()  # nothing written


def test_model_dir_without_weights_or_tokenizer(tmp_path, model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", make_rows(4))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no tokenizer.json" in sft_error(capsys, "--config", str(config(tmp_path, model_dir, data)),
                                            "--model", str(empty))


def test_exit_code_and_single_line_from_the_command(tmp_path, model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", make_rows(4))
    r = subprocess.run([sys.executable, "-m", "h1r", "sft", "--config", str(config(tmp_path, model_dir, data)),
                        "--model", str(tmp_path / "missing")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "is not a directory" in r.stderr
