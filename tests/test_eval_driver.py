"""The evaluation driver and `h1r eval`: a killed evaluation resumes to the same table, the report
folder, the synthetic held-out set as a benchmark (per-level accuracy), and the bad-input paths.

The model is "scripted" (see `scripted_model`): it writes `\\boxed{1}` or `\\boxed{2}`, sometimes
several times, then ends its turn; its samples are random, of varying length, and right or wrong
against the gold answers, while the whole engine runs as usual.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from h1r.cli import main
from tests.test_data_difficulty import tiny_world

REPO = Path(__file__).resolve().parents[1]


def scripted_model(src: Path, dst: Path, digits: dict[str, float]) -> Path:
    """Copy of the model in `src` that always writes `\\boxed{D}` then ends its turn or boxes again,
    with the digit D drawn from softmax(digits) (a bigram chain: with every layer zeroed, the logits
    depend on the current token only, and a few token states span few enough dimensions to solve for
    lm_head exactly)."""
    from h1r.checkpoint import load_model, save_model
    from h1r.tokenizer import load_tokenizer

    tok = load_tokenizer(src)
    model = load_model(src, dtype=torch.float32)
    cfg = model.config
    assert not cfg.tie_word_embeddings
    box = tok.encode("\\boxed{")
    close, end = tok.encode("}"), tok.token_to_id("<|im_end|>")
    digit_ids = {d: tok.encode(d) for d in digits}
    assert len(close) == 1 and all(len(v) == 1 for v in digit_ids.values())
    close, digit_ids = close[0], {d: v[0] for d, v in digit_ids.items()}
    # state -> {next token: logit}; every other token behaves like "start"
    chain = {"start": {box[0]: 0.0}}
    for a, b in zip(box, box[1:]):
        chain[a] = {b: 0.0}
    chain[box[-1]] = {digit_ids[d]: v for d, v in digits.items()}
    for i in digit_ids.values():
        chain[i] = {close: 1.0, **{j: -1.0 for j in digit_ids.values()}}
    chain[close] = {end: 1.0, box[0]: -0.5}
    states = list(chain)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.layers."):
                p.zero_()
        emb = torch.randn(len(states), cfg.hidden_size, generator=g)
        table = model.model.embed_tokens.weight
        table.copy_(emb[0].expand_as(table))
        for k, s in enumerate(states[1:], 1):
            table[s] = emb[k]
        h = model.model.final_layernorm(cfg.embedding_multiplier * emb)  # [S, D] the hidden state per state
        target = torch.full((cfg.vocab_size, len(states)), -30.0)  # [V, S] wanted logits
        for k, s in enumerate(states):
            for t, v in chain[s].items():
                target[t, k] = v
        model.lm_head.weight.copy_(target @ torch.linalg.pinv(h.T) / cfg.lm_head_multiplier)
    save_model(model, dst, tokenizer=tok)
    return dst


SCRIPT = {"1": 0.5, "2": 0.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldriver")
    w = tiny_world(root, train_per_level=2, test_per_level=2)
    w["scripted"] = scripted_model(w["model"], root / "scripted", SCRIPT)
    bench = root / "ones.jsonl"  # gold 1 or 2: the scripted model is right some of the time
    bench.write_text("".join(json.dumps({"id": i, "prompt": f"Question {i}?", "answer": 1 + i % 2}) + "\n"
                             for i in range(8)))
    w["bench"] = bench
    return w


def eval_argv(world, out, *extra):
    return ["eval", "--model", str(world["scripted"]), "--benchmarks", f"ones={world['bench']}", "--n", "6",
            "--method", "majority", "--max-tokens", "24", "--temperature", "1.0", "--top-p", "1.0", "--threads", "1",
            "--out", str(out), *extra]


def test_scripted_model_answers_some_right(world, tmp_path, capsys):
    assert main(eval_argv(world, tmp_path / "a")) == 0
    printed = capsys.readouterr().out
    assert "| ones | 8 | 6 |" in printed and "maj@6" in printed
    recs = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert len(recs) == 48 and {(r["problem_id"], r["sample_index"]) for r in recs} == \
        {(f"ones/{i}", j) for i in range(8) for j in range(6)}
    right = sum(r["correct"] for r in recs)
    assert 0 < right < 48 and len({r["tokens"] for r in recs}) > 3  # mixed outcomes, varied lengths
    report = (tmp_path / "a" / "report.md").read_text()
    assert "pass@1" in report and (tmp_path / "a" / "accuracy_vs_tokens.png").stat().st_size > 1000


def test_killed_evaluation_resumes_to_the_same_table(world, tmp_path, capsys):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(eval_argv(world, full)) == 0
    capsys.readouterr()
    env = {**os.environ, "H1R_DEBUG_EVAL_SLEEP": "0.1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "h1r", *eval_argv(world, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    records = killed / "samples.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_text().splitlines()) >= 12:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(records.read_text().splitlines())
    assert 12 <= done < 48, f"kill landed at {done} records"
    assert main(eval_argv(world, killed)) == 0
    capsys.readouterr()

    def by_key(path):
        rs = [json.loads(x) for x in (path / "samples.jsonl").read_text().splitlines()]
        return {(r["problem_id"], r["sample_index"]): r for r in rs}

    a, b = by_key(full), by_key(killed)
    assert a.keys() == b.keys() and len(a) == 48  # nothing redone twice, nothing missing
    assert all(a[k]["response"] == b[k]["response"] and a[k]["correct"] == b[k]["correct"] for k in a)
    assert (full / "report.md").read_text() == (killed / "report.md").read_text()


def test_synthetic_held_out_set_with_levels(world, tmp_path, capsys):
    argv = ["eval", "--model", str(world["model"]), "--benchmarks", f"synth={world['test']}", "--n", "2",
            "--max-tokens", "6", "--threads", "1", "--out", str(tmp_path / "s"), "--system", "falcon"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| synth | 50 | 2 |" in printed and "| level | synth (%) |" in printed
    for level in range(1, 6):
        assert f"| {level} | 0.0 (n=10) |" in printed
    rec = json.loads((tmp_path / "s" / "samples.jsonl").read_text().splitlines()[0])
    assert rec["level"] in range(1, 6) and rec["tokens"] <= 6
    assert (tmp_path / "s" / "accuracy_by_level.png").is_file()
    assert "pass@1 by level" in (tmp_path / "s" / "report.md").read_text()


def test_changed_settings_refuse_to_mix(world, tmp_path, capsys):
    assert main(eval_argv(world, tmp_path / "m", "--limit", "2")) == 0
    capsys.readouterr()
    assert main(eval_argv(world, tmp_path / "m", "--limit", "2", "--seed", "3")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("h1r eval: error:") and "other settings" in err and "seed" in err


@pytest.mark.parametrize("swap,message", [
    ({"--model": "{tmp}/nomodel"}, "nomodel is not a directory"),
    ({"--benchmarks": "{tmp}/none.jsonl"}, "none.jsonl: no such benchmark file"),
    ({"--benchmarks": "aime2030"}, "unknown benchmark 'aime2030'"),
    ({"--n": "0"}, "--n must be >= 1"),
    ({"--ks": "1,x"}, "--ks must be comma-separated integers"),
])
def test_bad_arguments(world, tmp_path, capsys, swap, message):
    argv = eval_argv(world, tmp_path / "x")
    for flag, value in swap.items():
        value = value.replace("{tmp}", str(tmp_path))
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("h1r eval: error:") and message in err and "Traceback" not in err


def test_bad_benchmark_rows_name_file_and_line(world, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "Q"}], "answer": 1}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "Q"}]}) + "\n")
    argv = eval_argv(world, tmp_path / "x")
    argv[argv.index("--benchmarks") + 1] = str(bad)
    assert main(argv) == 2
    assert f"{bad}:2: missing key 'answer'" in capsys.readouterr().err
    (tmp_path / "torn.jsonl").write_text('{"prompt": "Q", "answer": 1}\n{"prompt": ')
    argv[argv.index("--benchmarks") + 1] = str(tmp_path / "torn.jsonl")
    assert main(argv) == 2
    assert "torn.jsonl:2: invalid JSON" in capsys.readouterr().err


def test_deepconf_method_records_one_solve_per_problem_and_resumes(world, tmp_path, capsys):
    pytest.importorskip("h1r.deepconf.engine")
    out = tmp_path / "dc"
    argv = eval_argv(world, out, "--limit", "4", "--warmup", "2", "--window", "4")
    argv[argv.index("--method") + 1] = "deepconf-low"
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "deepconf-low (%)" in printed and "| ones | 4 |" in printed
    first = [json.loads(x) for x in (out / "deepconf-low.jsonl").read_text().splitlines()]
    assert len(first) == 4 and all(r["sample_index"] == 0 and len(r["warmup"]) == 2 for r in first)
    assert all(r["tokens"] >= sum(w["tokens"] for w in r["warmup"]) for r in first)  # every token counts
    argv[argv.index("--limit") + 1] = "8"  # more problems: the first four are not solved again
    assert main(argv) == 0
    capsys.readouterr()
    recs = [json.loads(x) for x in (out / "deepconf-low.jsonl").read_text().splitlines()]
    assert len(recs) == 8 and recs[:4] == first


def test_built_in_benchmarks_math_choice_and_code(world, tmp_path, capsys):
    from h1r.eval.benchmarks import default_data_dir

    if not (default_data_dir() / "aime25.jsonl").is_file():
        pytest.skip("benchmark data not present")
    argv = eval_argv(world, tmp_path / "b", "--limit", "2")
    argv[argv.index("--benchmarks") + 1] = "aime25,gpqa,livecodebench"
    argv[argv.index("--n") + 1] = "2"
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for row in ("| aime25 | 2 | 2 |", "| gpqa_diamond | 2 | 2 |", "| livecodebench | 2 | 2 |"):
        assert row in printed
    recs = [json.loads(x) for x in (tmp_path / "b" / "samples.jsonl").read_text().splitlines()]
    assert not any(r["correct"] for r in recs if r["benchmark"] == "livecodebench")  # no code block: fails its tests
    argv[argv.index("--method") + 1] = "deepconf-low"
    assert main(argv) == 2
    assert "does not apply to code benchmarks" in capsys.readouterr().err
