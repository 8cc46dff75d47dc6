"""Client mistakes get a 4xx with an OpenAI error object naming the problem, never a 500, and leave the
server healthy with its cache free."""

import httpx
import openai
import pytest

from h1r import LLM
from h1r.serve.app import ServeConfig, build_app
from h1r.serve.metrics import parse_text
from h1r.serve.server import BackgroundServer
from tests.engine_fixtures import make_model_dir

CTX = 64
LIMIT = 16 << 10
MSG = [{"role": "user", "content": "w1"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    d = make_model_dir(tmp_path_factory.mktemp("serve-err"))
    llm = LLM(str(d), dtype="float32", max_model_len=CTX, cache_memory=8 << 20, page_size=8)
    app = build_app(llm, ServeConfig(served_model_name="tiny", max_body_bytes=LIMIT))
    with BackgroundServer(app) as bg:
        with httpx.Client(base_url=bg.url, timeout=30) as http:
            yield bg, http, llm


def check_error(r: httpx.Response, status: int, param=None, words: str = ""):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param and words in err["message"], err
    return err


@pytest.mark.parametrize("path, body, param, words", [
    # wrong types
    ("/v1/completions", {"prompt": "w1", "temperature": "hot"}, "temperature", "valid number"),
    ("/v1/completions", {"prompt": "w1", "n": "2"}, "n", "valid integer"),
    ("/v1/completions", {"prompt": "w1", "max_tokens": 2.5}, "max_tokens", "valid integer"),
    ("/v1/completions", {"prompt": "w1", "stream": "yes"}, "stream", "valid boolean"),
    ("/v1/completions", {"prompt": {"text": "w1"}}, "prompt", "must be one of"),
    ("/v1/chat/completions", {"messages": "w1"}, "messages", "valid array"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "must be one of"),
    ("/v1/chat/completions", {"messages": [{"content": "w1"}]}, "messages.0.role", "required"),
    ("/v1/chat/completions", {"messages": []}, "messages", "at least 1"),
    ("/v1/chat/completions", {"messages": MSG, "stream_options": 3}, "stream_options", "must be an object"),
    # impossible values
    ("/v1/completions", {"prompt": "w1", "temperature": -0.5}, "temperature", "greater than or equal to 0"),
    ("/v1/completions", {"prompt": "w1", "top_p": 0}, "top_p", "greater than 0"),
    ("/v1/completions", {"prompt": "w1", "top_p": 1.5}, "top_p", "less than or equal to 1"),
    ("/v1/completions", {"prompt": "w1", "n": 0}, "n", "greater than or equal to 1"),
    ("/v1/completions", {"prompt": "w1", "logprobs": 21}, "logprobs", "less than or equal to 20"),
    ("/v1/completions", {"prompt": "w1", "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ("/v1/completions", {"prompt": "w1", "min_p": 2}, "min_p", "less than or equal to 1"),
    ("/v1/completions", {"prompt": "w1", "top_k": -2}, "top_k", "greater than or equal to -1"),
    ("/v1/completions", {"prompt": "w1", "max_tokens": 2, "min_tokens": 5}, "min_tokens", "must not exceed"),
    ("/v1/completions", {"prompt": "w1", "stop": [""]}, "stop", "must not be empty"),
    ("/v1/completions", {"prompt": "w1", "stream_options": {"include_usage": True}}, "stream_options", "stream"),
    ("/v1/completions", {"prompt": [1, 99999]}, "prompt", "outside the vocabulary"),
    ("/v1/completions", {"prompt": []}, "prompt", "empty"),
    ("/v1/completions", {"prompt": "w1", "stop_token_ids": [99999]}, "stop_token_ids", "outside the vocabulary"),
    ("/v1/completions", {"prompt": "w1", "echo": True}, "echo", "not supported"),
    ("/v1/completions", {"prompt": "w1", "logit_bias": {"5": 1.0}}, "logit_bias", "not supported"),
    ("/v1/chat/completions", {"messages": MSG, "top_logprobs": 21, "logprobs": True}, "top_logprobs", "less than"),
    ("/v1/chat/completions", {"messages": MSG, "top_logprobs": 2}, "top_logprobs", "needs 'logprobs'"),
    ("/v1/chat/completions", {"messages": MSG, "tools": [{"type": "function"}]}, "tools", "not supported"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages.0.content", "only text"),
    # longer than the context
    ("/v1/completions", {"prompt": " ".join(["w1"] * CTX)}, "prompt", "maximum context length is 64"),
    ("/v1/completions", {"prompt": "w1 w2", "max_tokens": CTX}, "prompt", "maximum context length"),
    ("/v1/chat/completions", {"messages": MSG, "max_completion_tokens": CTX}, "messages", "maximum context"),
])
def test_bad_requests_are_400s(srv, path, body, param, words):
    _, http, _ = srv
    err = check_error(http.post(path, json=body), 400, param, words)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw, words", [(b"{\"prompt\": ", "not valid JSON"), (b"[1, 2]", "JSON object"),
                                        (b"", "empty"), (b"\xff\xfe", "not valid JSON"), (b"nul", "not valid JSON")])
def test_malformed_bodies_are_400s(srv, raw, words):
    _, http, _ = srv
    check_error(http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"}),
                400, None, words)


def test_oversized_bodies_are_413s(srv):
    _, http, _ = srv
    big = {"prompt": "w1 " * LIMIT}
    check_error(http.post("/v1/completions", json=big), 413, None, f"{LIMIT}-byte limit")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(8):
            yield b" " * (LIMIT // 4)
        yield b'{"prompt": "w1"}'

    check_error(http.post("/v1/completions", content=chunks()), 413, None, "limit")


def test_unknown_model_route_and_method(srv):
    _, http, _ = srv
    err = check_error(http.post("/v1/completions", json={"model": "gpt-9", "prompt": "w1"}), 404, "model", "gpt-9")
    assert err["code"] == "model_not_found"
    check_error(http.post("/v1/embeddings", json={}), 404, None, "no route")
    check_error(http.get("/v1/completions"), 405, None, "not allowed")


def test_unknown_fields_are_ignored(srv):
    _, http, _ = srv
    r = http.post("/v1/completions", json={"prompt": "w1", "max_tokens": 2, "user": "u", "metadata": {"a": 1},
                                           "service_tier": "auto"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1


def test_openai_client_raises_bad_request_error(srv):
    bg, _, _ = srv
    client = openai.OpenAI(base_url=bg.url + "/v1", api_key="-", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=MSG, temperature=-1)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        list(client.completions.create(model="tiny", prompt="w1", top_p=2.0, stream=True))


def test_no_server_errors_and_cache_free_after_all_that(srv):
    _, http, llm = srv
    assert http.get("/health").json() == {"status": "ok"}
    m = parse_text(http.get("/metrics").text)
    assert not [k for k, v in m.items() if k.startswith("h1r_requests_total") and 'status="5' in k and v]
    assert m["h1r_cache_pages_used"] == 0 and m["h1r_cache_slots_used"] == 0
    assert m['h1r_requests_total{endpoint="completions",status="400"}'] >= 20
    u = llm.engine.cache_usage()
    assert u["pages_free"] == u["pages_total"] and not llm.engine.requests
