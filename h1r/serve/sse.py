"""Server-sent events in the OpenAI shape: `data: {json}\n\n` per chunk, `data: [DONE]\n\n` at the end.
An error after the stream started cannot change the status code any more; it goes out as an error
event (`data: {"error": {...}}`, which the openai client raises), then [DONE]."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from h1r.serve.errors import APIError

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def sse_done() -> str:
    return "data: [DONE]\n\n"


def sse_stream(server, body: AsyncIterator[str]) -> StreamingResponse:
    """Starlette cancels `body` when the client disconnects; closing it aborts the engine requests."""

    async def guarded():
        try:
            async for event in body:
                yield event
        except (asyncio.CancelledError, GeneratorExit):
            server.metrics.disconnects.inc()
            raise
        except APIError as e:
            yield sse_event(e.body())
            yield sse_done()
        except Exception as e:  # noqa: BLE001 - the status line is gone; report in-band
            yield sse_event(server.error_for(e).body())
            yield sse_done()
        finally:
            await body.aclose()

    return StreamingResponse(guarded(), media_type="text/event-stream", headers=HEADERS)
