import json
import subprocess
import sys

from h1r.cli import main


def test_version_and_help(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert "h1r" in capsys.readouterr().out
    assert main([]) == 2  # no sub-command: help, non-zero


def test_init_and_inspect(tmp_path, capsys):
    assert main(["init", "tiny", str(tmp_path / "m"), "--vocab-size", "300"]) == 0
    assert main(["inspect", str(tmp_path / "m"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert s["vocab_size"] == 300 and s["layers"] == 4
    assert s["kv_bytes_per_token"] == 4 * 2 * 2 * 32 * 4  # fp32 tiny: L * (K,V) * Hkv * hd * 4
    assert s["ssm_state_bytes_fp32"] == 4 * 4 * 32 * 16 * 4


def test_bad_input_exits_nonzero_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "h1r", "inspect", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "not a directory and not a preset" in r.stderr
    r = subprocess.run([sys.executable, "-m", "h1r", "init", "tiny-typo", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown preset 'tiny-typo'" in r.stderr


def test_generate_command(tmp_path, capsys):
    from tests.engine_fixtures import make_model_dir

    d = make_model_dir(tmp_path / "m")
    (tmp_path / "p.jsonl").write_text('{"prompt": "w1 w2"}\n{"prompt_token_ids": [11, 12, 13]}\n')
    assert main(["generate", "--model", str(d), "--input", str(tmp_path / "p.jsonl"), "--temperature", "0",
                 "--max-tokens", "4", "--logprobs", "2", "--json", "--n", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 2 and all(len(r["outputs"]) == 2 for r in rows)
    o = rows[1]["outputs"][0]
    assert rows[1]["prompt_token_ids"] == [11, 12, 13] and len(o["token_ids"]) == 4 and len(o["logprobs"]) == 4
    (tmp_path / "bad.jsonl").write_text('{"prompt": "w1"}\n{oops\n')
    for argv, msg in [(["--input", str(tmp_path / "bad.jsonl")], "bad.jsonl:2: invalid JSON"),
                      (["w1", "--temperature", "-0.5"], "temperature must be >= 0"),
                      (["w1", "--top-p", "1.5"], "top_p must be in"),
                      (["w1", "--max-tokens", "999999"], "exceeds the context length"),
                      (["w1", "--stop-token", "<nope>"], "unknown stop token")]:
        r = subprocess.run([sys.executable, "-m", "h1r", "generate", "--model", str(d), *argv],
                           capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
