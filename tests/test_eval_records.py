"""Grading into records, and the resumable sample store an evaluation driver writes as it goes."""

from h1r.eval.benchmarks import Problem, load_benchmark
from h1r.eval.metrics import summarize
from h1r.eval.records import SampleStore, grade_records


def test_grade_records_mixed_kinds():
    aime = load_benchmark("aime24", limit=1)[0]
    gpqa = load_benchmark("gpqa", limit=1)[0]
    code = Problem("toy/echo", "toy", "echo", "", "code", {"tests": [{"input": "5\n", "output": "5\n"}], "testtype": "stdin", "level": 2})
    problems = [aime, aime, gpqa, code]
    responses = [r"<think>t</think>\boxed{204}", r"\boxed{205}", rf"\boxed{{{gpqa.answer}}}", "```python\nprint(input())\n```"]
    recs = grade_records(problems, [0, 1, 0, 0], responses, tokens=[10, 20, 30, 40], method="sample")
    assert [r["correct"] for r in recs] == [True, False, True, True]
    assert [r["answer"] for r in recs] == ["204", "205", gpqa.answer, None]
    assert recs[3]["level"] == 2 and all(r["method"] == "sample" for r in recs) and recs[1]["tokens"] == 20


def test_store_resumes_after_a_kill(tmp_path):
    rows = [{"problem_id": f"p{i // 2}", "benchmark": "b", "sample_index": i % 2, "correct": i % 3 == 0,
             "answer": str(i % 3), "tokens": i} for i in range(8)]
    path = tmp_path / "samples.jsonl"
    with SampleStore(path) as store:
        for r in rows[:5]:
            store.add(r)
    with open(path, "a") as f:
        f.write('{"problem_id": "p2", "sample_in')  # killed mid-write
    with SampleStore(path) as store:
        assert store.is_done("p2", 0) and not store.is_done("p2", 1)
        for r in rows:  # the driver skips finished samples; adding one twice is harmless anyway
            if not store.is_done(r["problem_id"], r["sample_index"]):
                store.add(r)
        store.add(rows[0])
        resumed = store.records()
    with SampleStore(path) as again:
        assert len(resumed) == 8 and len(again.records()) == 8
    assert summarize(resumed, ks=(2,)) == summarize(rows, ks=(2,))
