"""The OpenAI-compatible HTTP app around one engine.

    app = build_app(LLM("model_dir"), ServeConfig(api_key="sk-..."))   # then run it with uvicorn

One ServingEngine (AsyncLLM) is shared by every request, so concurrent clients share continuous
batching. A client that disconnects, streaming or not, has its engine requests aborted (pages and
slots freed). Client mistakes are 4xx OpenAI error objects; bodies over `max_body_bytes` are 413s.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from h1r.engine.sampling_params import SamplingError
from h1r.serve import errors
from h1r.serve.chat import create_chat_completion
from h1r.serve.completions import create_completion
from h1r.serve.engine_client import EngineClosed, ServingEngine
from h1r.serve.errors import APIError
from h1r.serve.logprobs import LogprobFormatter
from h1r.serve.metrics import CONTENT_TYPE, ServerMetrics
from h1r.serve.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList
from h1r.serve.reasoning import ReasoningParser

ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat", "/v1/models": "models",
             "/health": "health", "/metrics": "metrics"}


@dataclass
class ServeConfig:
    served_model_name: str = "h1r"
    api_key: str | None = None  # None: no authentication
    max_body_bytes: int = 1 << 20
    max_batch_prompts: int = 64  # prompts in one /v1/completions request
    shutdown_grace: float = 30.0  # seconds in-flight requests get after SIGTERM before they are aborted
    reasoning_parser: str = "deepseek_r1"  # or "none"
    deepconf_workers: int = 32  # DeepConf requests solved at once (each holds a thread while it waits)


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its engine work was aborted."""


class Server:
    """What the handlers share: the engine, tokenizer, parsers, metrics and configuration."""

    def __init__(self, llm, config: ServeConfig):
        self.llm, self.config = llm, config
        self.tokenizer = llm.tokenizer
        self.parser = ReasoningParser(self.tokenizer, config.reasoning_parser)
        self.engine = ServingEngine(llm.engine)
        self.logprobs = LogprobFormatter(self.tokenizer)
        self.metrics = ServerMetrics(self.engine)
        self.vocab_size = llm.engine.vocab_size
        self.max_model_len = llm.engine.max_model_len
        self.deepconf_pool = ThreadPoolExecutor(config.deepconf_workers, thread_name_prefix="h1r-deepconf")
        self.closing = False
        self._abort_timer: threading.Timer | None = None

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    async def until_disconnect(self, request: Request, coro):
        """Run `coro` unless the client disconnects first; then cancel it (aborting its engine work)."""
        work = asyncio.ensure_future(coro)

        async def gone():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watch = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (work, watch):
                if not t.done():
                    t.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientGone()

    def error_for(self, e: Exception) -> APIError:
        if isinstance(e, APIError):
            return e
        if isinstance(e, EngineClosed):
            return APIError(503, "the server is shutting down", code="shutdown")
        if isinstance(e, SamplingError):
            return APIError(400, str(e))
        return APIError(500, f"internal server error: {type(e).__name__}: {e}")

    # ---- shutdown -----------------------------------------------------------------------------------
    def begin_shutdown(self, grace: float | None = None) -> None:
        """SIGTERM: refuse new requests; in-flight ones get `grace` seconds, then they are aborted.
        Thread- and signal-safe (it only sets a flag and starts a timer)."""
        if self.closing:
            return
        self.closing = True
        grace = self.config.shutdown_grace if grace is None else grace
        self._abort_timer = threading.Timer(grace, self.engine.shutdown)
        self._abort_timer.daemon = True
        self._abort_timer.start()

    def close(self) -> None:
        self.closing = True
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        self.engine.shutdown()
        self.deepconf_pool.shutdown(wait=False, cancel_futures=True)


async def read_body(request: Request, model: type[BaseModel], limit: int):
    """The JSON body as `model`, refusing bodies over `limit` bytes (declared or actual) with a 413."""
    declared = request.headers.get("content-length")
    too_big = APIError(413, f"the request body exceeds the {limit}-byte limit", code="request_too_large")
    if declared is not None:
        if not declared.isdigit():
            raise errors.bad_request("invalid Content-Length header")
        if int(declared) > limit:
            raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    if not body.strip():
        raise errors.bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as e:
        raise errors.from_validation_error(e) from None


class Gate:
    """ASGI middleware: API key and shutdown checks before anything reads the body, and the
    per-endpoint request counter (status recorded as sent; 499 when the client left first)."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server
        key = server.config.api_key
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal.response()(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        except Exception:
            status = status or 500  # the error middleware outside us answers it
            raise
        finally:
            endpoint = ENDPOINTS.get(scope["path"], "other")
            self.server.metrics.requests.inc(endpoint, str(status or 499))

    def _refusal(self, scope) -> APIError | None:
        if not scope["path"].startswith("/v1/"):
            return None
        if self.expected is not None:
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, self.expected):
                return APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                code="invalid_api_key")
        if self.server.closing:
            return APIError(503, "the server is shutting down", code="shutdown")
        return None


def _json(result) -> Response:
    if isinstance(result, BaseModel):
        return Response(result.model_dump_json(), media_type="application/json")
    return result


def build_app(llm, config: ServeConfig | None = None) -> FastAPI:
    server = Server(llm, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(server.close)

    app = FastAPI(title="H1R", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    errors.install(app)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, e: ClientGone):
        server.metrics.disconnects.inc()
        return Response(status_code=499)

    async def _engine_error(request: Request, e: Exception):
        return server.error_for(e).response()

    for exc in (EngineClosed, SamplingError):
        app.add_exception_handler(exc, _engine_error)

    @app.get("/health")
    async def health():
        ok = not server.closing and server.engine.alive
        return JSONResponse({"status": "ok" if ok else "shutting_down"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        card = ModelCard(id=server.config.served_model_name, max_model_len=server.max_model_len)
        return _json(ModelList(data=[card]))

    @app.post("/v1/completions")
    async def completions(request: Request):
        t0 = time.perf_counter()
        req = await read_body(request, CompletionRequest, server.config.max_body_bytes)
        return _json(await create_completion(server, req, request, t0))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        t0 = time.perf_counter()
        req = await read_body(request, ChatCompletionRequest, server.config.max_body_bytes)
        return _json(await create_chat_completion(server, req, request, t0))

    app.add_middleware(Gate, server=server)
    return app
