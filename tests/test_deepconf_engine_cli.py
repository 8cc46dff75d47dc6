"""`h1r solve`: the printed summary, --json, and one-line errors for bad input."""

import json

import pytest

from h1r.cli import main
from tests.engine_fixtures import make_model_dir

FAST = ["--budget", "6", "--warmup", "3", "--step", "3", "--window", "4", "--max-tokens", "12", "--seed", "3",
        "--max-model-len", "128"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_model_dir(tmp_path_factory.mktemp("m")))


def test_prints_answer_votes_tokens_and_threshold(model_dir, capsys):
    assert main(["solve", "--model", model_dir, "w1 w2 w3", *FAST]) == 0
    out = capsys.readouterr().out
    for needle in ("answer:", "threshold s:", "tokens: warm-up", "majority", "min_window_weighted", "stopped early"):
        assert needle in out


def test_json_is_the_result(model_dir, capsys):
    assert main(["solve", "--model", model_dir, "w1 w2 w3", *FAST, "--json", "--no-consensus", "--variant", "high"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert len(d["traces"]) == 6 and d["ended_by"] == "budget"
    assert d["tokens"]["total"] == sum(t["num_tokens"] for t in d["traces"])
    assert d["config"]["variant"] == "high" and d["config"]["consensus"] is None and d["config"]["seed"] == 3
    assert d["config"]["window"] == 4 and d["config"]["sampling"]["max_tokens"] == 12
    # same seed, same run
    assert main(["solve", "--model", model_dir, "w1 w2 w3", *FAST, "--json", "--no-consensus", "--variant", "high"]) == 0
    assert json.loads(capsys.readouterr().out) == d


@pytest.mark.parametrize("extra, message", [
    (["--warmup", "8"], "warmup_traces (8) exceeds the budget (6)"),
    (["--consensus", "1.5"], "consensus"),
    (["--window", "0"], "window must be a positive integer"),
    (["--topk", "30"], "topk must be in [1, 20]"),
    (["--n", "4"], "--budget"),
    (["--temperature", "-1"], "temperature"),
])
def test_bad_options_are_one_line_errors(model_dir, capsys, extra, message):
    assert main(["solve", "--model", model_dir, "w1", *FAST, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_problem_and_model(model_dir, tmp_path, capsys):
    assert main(["solve", "--model", model_dir, "   ", *FAST]) == 2
    assert "problem text is empty" in capsys.readouterr().err
    assert main(["solve", "--model", str(tmp_path / "nope"), "w1"]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["solve", "--model", model_dir, "w1", "--variant", "medium"])
    assert e.value.code == 2
