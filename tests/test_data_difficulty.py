"""`h1r data difficulty`: pass rates per problem (joined on id), the difficulty label moved aside so the
measured pass rate drives the SFT weight, and the bad-input paths."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from h1r.cli import main
from h1r.data.difficulty import annotate, estimate_pass_rates, read_problems
from h1r.engine.sampling_params import SamplingParams


def tiny_world(root: Path, seed: int = 0, train_per_level: int = 2, test_per_level: int = 2) -> dict[str, Path]:
    """A synthetic curriculum, its BPE tokenizer and a random tiny hybrid model, as the demo builds them."""
    import torch

    from h1r.checkpoint import init_model, save_model
    from h1r.config import preset
    from h1r.data.synth import write_curriculum
    from h1r.data.tokenizer_train import train_from_jsonl
    from h1r.tokenizer import load_tokenizer

    data = root / "data"
    write_curriculum(data, seed, train_per_level, test_per_level, 2)
    tok_dir = train_from_jsonl(data / "train.jsonl", root / "tok", 400)
    tok = load_tokenizer(tok_dir)
    cfg = preset("tiny", vocab_size=max(tok.vocab_size, 400), hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, mamba_d_ssm=64, mamba_n_heads=2, head_dim=16)
    model = init_model(cfg, seed=seed, dtype=torch.float32)
    save_model(model, root / "model", tokenizer=tok)
    return {"data": data, "model": root / "model", "train": data / "train.jsonl", "test": data / "test.jsonl"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("difficulty"))


class FakeLLM:
    """Answers the first c of a request's samples correctly (c fixed per prompt): a known pass rate per
    problem, so the bookkeeping can be checked exactly."""

    def __init__(self, correct_of):
        self.correct_of = correct_of  # prompt text -> (gold, how many of the k samples are right)
        self.tokenizer = SimpleNamespace(apply_chat_template=lambda msgs, **kw: msgs[-1]["content"])
        self.calls = []

    def generate(self, prompts, params):
        out = []
        for prompt, p in zip(prompts, params):
            self.calls.append((prompt, p.n, p.seed))
            gold, c = self.correct_of[prompt]
            texts = [f"<think>x</think>\\boxed{{{gold if i < c else 'wrong'}}}" for i in range(p.n)]
            out.append(SimpleNamespace(outputs=[SimpleNamespace(text=t) for t in texts]))
        return out


def rows_file(tmp_path, rows) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pass_rates_join_traces_on_id_and_replace_the_label(tmp_path):
    rows = [
        {"id": "p1", "trace": 0, "level": 1, "difficulty": "easy", "answer": "3",
         "messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "t0"}]},
        {"id": "p2", "level": 5, "difficulty": "hard", "answer": "7", "messages": [{"role": "user", "content": "Q2"}]},
        {"id": "p1", "trace": 1, "level": 1, "difficulty": "easy", "answer": "3",
         "messages": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "t1"}]},
        {"prompt": "Q3", "answer": "1"},  # no id: keyed by its prompt
    ]
    rows_in, keys, problems = read_problems(rows_file(tmp_path, rows))
    assert keys[0] == keys[2] == "p1" and len(problems) == 3
    llm = FakeLLM({"Q1": ("3", 1), "Q2": ("7", 4), "Q3": ("1", 0)})
    rates = estimate_pass_rates(llm, problems, 4, SamplingParams(max_tokens=8), seed=5)
    assert len(llm.calls) == 3 and all(n == 4 for _, n, _ in llm.calls)  # one request per problem, not per trace
    assert {k: r.rate for k, r in rates.items()} == {"p1": 0.25, "p2": 1.0, keys[3]: 0.0}
    out = annotate(rows_in, keys, rates)
    assert [r["pass_rate"] for r in out] == [0.25, 1.0, 0.25, 0.0]
    assert "difficulty" not in out[0] and out[0]["difficulty_prior"] == "easy" and out[0]["pass_k"] == 4
    assert annotate(rows_in, keys, rates, keep_difficulty=True)[1]["difficulty"] == "hard"

    # the measured pass rate, not the level label, now decides the SFT weight
    from h1r.train.config import SFTConfig
    from h1r.train.weighting import example_weight

    cfg = SFTConfig()
    assert example_weight(rows[0], 10, cfg)[0] == "easy"  # the label would have said easy ...
    assert example_weight(out[0], 10, cfg)[0] == "hard"  # ... the pass rate 1/4 says hard
    assert example_weight(out[1], 10, cfg) == ("easy", cfg.easy_weight)


def test_seeds_depend_on_the_problem_not_the_batch(tmp_path):
    rows = [{"id": f"p{i}", "answer": "1", "prompt": f"Q{i}"} for i in range(5)]
    _, _, problems = read_problems(rows_file(tmp_path, rows))
    llm_a, llm_b = (FakeLLM({f"Q{i}": ("1", 1) for i in range(5)}) for _ in range(2))
    estimate_pass_rates(llm_a, problems, 2, SamplingParams(), seed=1, chunk=5)
    estimate_pass_rates(llm_b, problems, 2, SamplingParams(), seed=1, chunk=2)
    assert sorted(llm_a.calls) == sorted(llm_b.calls) and len({s for _, _, s in llm_a.calls}) == 5


def test_cli_end_to_end_on_a_tiny_model(world, tmp_path, capsys):
    out = tmp_path / "pr.jsonl"
    assert main(["data", "difficulty", "--model", str(world["model"]), "--data", str(world["train"]),
                 "--out", str(out), "--k", "2", "--max-tokens", "8", "--threads", "1"]) == 0
    rows_in = [json.loads(x) for x in world["train"].read_text().splitlines()]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(rows_in) and [r["id"] for r in rows] == [r["id"] for r in rows_in]
    assert all(r["pass_k"] == 2 and r["pass_rate"] in (0.0, 0.5, 1.0) and "difficulty" not in r for r in rows)
    by_id = {}
    for r in rows:
        assert by_id.setdefault(r["id"], r["pass_rate"]) == r["pass_rate"]  # traces of a problem agree
    printed = capsys.readouterr().out
    assert "mean pass rate" in printed and "difficulty_prior" in printed


@pytest.mark.parametrize("rows,argv_extra,message", [
    ([{"id": "a", "messages": [{"role": "user", "content": "Q"}]}], [], "missing the gold 'answer'"),
    ([{"id": "a", "answer": "1"}], [], "needs 'messages' or 'prompt'"),
    ([{"id": "a", "answer": "1", "prompt": "Q"}, {"id": "a", "answer": "2", "prompt": "Q"}], [], "two different answers"),
    ([{"id": "a", "answer": "1", "prompt": "Q"}], ["--k", "0"], "--k must be a positive integer"),
])
def test_bad_rows_and_arguments(world, tmp_path, capsys, rows, argv_extra, message):
    data = rows_file(tmp_path, rows)
    rc = main(["data", "difficulty", "--model", str(world["model"]), "--data", str(data), "--out",
               str(tmp_path / "o.jsonl"), *argv_extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("h1r data: error:") and message in err[-1]


def test_missing_paths(world, tmp_path, capsys):
    assert main(["data", "difficulty", "--model", str(world["model"]), "--data", str(tmp_path / "none.jsonl"),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "none.jsonl: no such data file" in capsys.readouterr().err
    assert main(["data", "difficulty", "--model", str(tmp_path / "nomodel"), "--data", str(world["train"]),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "nomodel is not a directory" in capsys.readouterr().err
