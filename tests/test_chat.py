"""Streaming generation (LLM.stream) and the `h1r chat` command."""

import io

import pytest

from h1r import LLM, SamplingParams
from h1r.cli import main
from h1r.commands.chat import ReasoningFilter, final_answer
from tests.engine_fixtures import make_model_dir

KW = dict(dtype="float32", max_model_len=256, cache_memory=32 << 20, page_size=8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"))


@pytest.fixture(scope="module")
def byte_level_model_dir(tmp_path_factory):
    """A random tiny model with a byte-level BPE tokenizer: its random tokens split UTF-8 characters."""
    from h1r.data.tokenizer_train import save_tokenizer, train_tokenizer

    root = tmp_path_factory.mktemp("bl")
    save_tokenizer(train_tokenizer(["héllo wörld 世界 " * 30, "x² ≤ √3"], vocab_size=320), root / "tok")
    assert main(["init", "tiny", str(root / "m"), "--tokenizer", str(root / "tok"), "--dtype", "float32"]) == 0
    return root / "m"


@pytest.mark.parametrize("which", ["word_level", "byte_level"])
def test_stream_equals_generate_and_a_break_frees_the_cache(which, model_dir, byte_level_model_dir):
    llm = LLM(str(model_dir if which == "word_level" else byte_level_model_dir), **KW)
    prompt = "w1 w2 w3"
    for seed in range(4):
        sp = SamplingParams(n=2, temperature=1.0, max_tokens=24, seed=seed, ignore_eos=True)
        want = [c.text for c in llm.generate([prompt], sp)[0].outputs]
        got, pieces = ["", ""], 0
        for i, t in llm.stream(prompt, sp):
            got[i] += t
            pieces += 1
        assert pieces > 2 and got == want
    for k, _ in enumerate(llm.stream(prompt, sp)):
        if k == 2:
            break  # closing the generator aborts the request
    u = llm.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and u["slots_free"] == u["slots_total"]
    assert not llm.engine.requests and not llm.engine.has_unfinished()


def test_reasoning_filter_handles_tags_split_across_pieces():
    f = ReasoningFilter()
    out = "".join(f.feed(p) for p in ["ab<thi", "nk>x y", "z</th", "ink> the ", "answer <", "b>"]) + f.flush()
    assert out == "ab the answer <b>"
    assert final_answer("<think>scratch</think>\n 42 ") == "42"


def test_chat_command_keeps_history_and_resets(model_dir, monkeypatch, capsys):
    turns = ["w1 w2", "w5", "/reset", "", "w3", "/exit", "w9"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(turns) + "\n"))
    argv = ["chat", "--model", str(model_dir), "--temperature", "0", "--max-tokens", "5", "--dtype", "float32"]
    assert main(argv) == 0
    answers = capsys.readouterr().out.splitlines()
    assert len(answers) == 3  # w1 w2, w5, w3 (the empty line is skipped, nothing after /exit)
    llm = LLM(str(model_dir), **KW)
    greedy = SamplingParams(temperature=0, max_tokens=5)
    first = llm.chat([{"role": "user", "content": "w1 w2"}], greedy)[0].outputs[0].text
    second = llm.chat([{"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": first},
                       {"role": "user", "content": "w5"}], greedy)[0].outputs[0].text
    third = llm.chat([{"role": "user", "content": "w3"}], greedy)[0].outputs[0].text  # history was reset
    assert answers == [first, second, third]


def test_chat_survives_a_turn_that_does_not_fit(model_dir, monkeypatch, capsys):
    long_turn = " ".join(f"w{i % 100}" for i in range(300))  # > --max-model-len
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{long_turn}\nw3\n"))
    argv = ["chat", "--model", str(model_dir), "--temperature", "0", "--max-tokens", "5", "--max-model-len", "128"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "error:" in err and "context" in err
    llm = LLM(str(model_dir), **KW)
    alone = llm.chat([{"role": "user", "content": "w3"}], SamplingParams(temperature=0, max_tokens=5))
    assert out.splitlines() == [alone[0].outputs[0].text]  # the failed turn left no trace in the history


def test_chat_rejects_n_above_one(model_dir, capsys):
    assert main(["chat", "--model", str(model_dir), "--n", "3"]) == 2
    assert "--n must be 1" in capsys.readouterr().err


def test_text_is_the_same_with_and_without_stop_strings(byte_level_model_dir):
    """With stop strings the engine detokenizes incrementally; a sequence that ends without meeting one
    (length) must still get exactly decode(output ids), partial trailing character included."""
    llm = LLM(str(byte_level_model_dir), **KW)
    for seed in range(6):
        plain = SamplingParams(temperature=1.0, max_tokens=20, seed=seed, ignore_eos=True)
        with_stop = SamplingParams(temperature=1.0, max_tokens=20, seed=seed, ignore_eos=True, stop=["\x00never"])
        a = llm.generate(["w1"], plain)[0].outputs[0]
        b = llm.generate(["w1"], with_stop)[0].outputs[0]
        assert a.token_ids == b.token_ids
        assert a.text == b.text == llm.tokenizer.decode(a.token_ids, skip_special_tokens=True)
