"""`h1r data synth` and `h1r data tokenizer` end to end, and their bad-argument paths."""

import json

import pytest

from h1r.cli import main
from h1r.tokenizer import load_tokenizer


def test_synth_then_tokenizer(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out), "--seed", "2", "--train-per-level", "3",
                 "--test-per-level", "2", "--traces-per-problem", "2", "--families", "arith, base"]) == 0
    manifest = json.loads((out / "synth.json").read_text())
    assert manifest["families"] == ["arith", "base"] and manifest["rows"]["train"] == 2 * 5 * 3 * 2
    assert len((out / "test.jsonl").read_text().splitlines()) == 2 * 5 * 2
    assert "train.jsonl 60 rows" in capsys.readouterr().out
    assert main(["data", "tokenizer", "--data", str(out / "train.jsonl"), "--out", str(tmp_path / "tok"),
                 "--vocab-size", "400"]) == 0
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.vocab_size <= 400 and tok.chat_template
    printed = capsys.readouterr().out
    assert "vocabulary" in printed and "response tokens" in printed


@pytest.mark.parametrize("argv,message", [
    (["data", "synth", "--out", "{tmp}/x", "--families", "arith,topology"], "topology"),
    (["data", "synth", "--out", "{tmp}/x", "--traces-per-problem", "0"], "traces-per-problem"),
    (["data", "tokenizer", "--data", "{tmp}/none.jsonl", "--out", "{tmp}/t"], "none.jsonl: no such file"),
    (["data", "tokenizer", "--data", "{tmp}/none.jsonl", "--out", "{tmp}/t", "--vocab-size", "0"], "vocab-size"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("h1r data: error:") and message in err[-1]


def test_missing_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data"])
    assert e.value.code == 2 and "ACTION" in capsys.readouterr().err
