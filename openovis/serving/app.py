"""The HTTP application: OpenAI-compatible chat completions, model list, health, and the chat page.

    GET  /                      the web chat page (static HTML + JS, no build step)
    GET  /health                {"status": "ok", "model", "queued", "served"}
    GET  /v1/models             the one served model
    POST /v1/chat/completions   OpenAI chat completions; "stream": true answers as server-sent events

Every refusal is an OpenAI-style body ``{"error": {"message", "type", "param", "code"}}`` with a 4xx
status; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from openovis.serving.engine import Engine, Job, RequestError
from openovis.serving.schemas import ChatCompletionRequest


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI application serving ``engine``'s model."""
    app = FastAPI(title="openovis", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    created = int(time.time())
    model_id = engine.settings.model_id
    page = resources.files("openovis.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.exception_handler(RequestError)
    async def _refused(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, err: StarletteHTTPException) -> JSONResponse:
        body = RequestError(str(err.detail), err.status_code).body()
        return JSONResponse(body, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(RequestError(str(err)).body(), status_code=400)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "queued": engine.queued, "served": engine.stats["served"]}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_id, "object": "model", "created": created, "owned_by": "openovis"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await _read_body(request, engine.settings.max_request_bytes)
        parsed = _parse(body)
        prepared = await run_in_threadpool(engine.prepare, parsed)
        job = engine.submit(prepared, asyncio.get_running_loop())
        reply_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if prepared.stream:
            return StreamingResponse(
                _sse(job, reply_id, model_id),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(job, reply_id, model_id)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body too large: over {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"request body too large: over {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> ChatCompletionRequest:
    """Strict validation; the error names the deepest failing field (union branches collapsed)."""
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        if errors and errors[0]["type"] == "json_invalid":
            raise RequestError(f"the body is not valid JSON: {errors[0]['msg']}") from err
        worst = max(errors, key=lambda e: len(e["loc"]))
        loc = _field_path(worst["loc"])
        raise RequestError(f"{loc}: {worst['msg']}", param=loc or None) from err


_PART_TAGS = ("text", "image_url")


def _field_path(loc: tuple[Any, ...]) -> str:
    """``messages.0.content.0.text`` from pydantic's location, without its union-branch labels."""
    out: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part):
            continue  # a union branch, e.g. 'list[tagged-union[TextPart,ImagePart]]'
        if part in _PART_TAGS and i > 0 and isinstance(loc[i - 1], int) and i + 1 < len(loc):
            continue  # the discriminator value that chose the branch
        out.append(str(part))
    return ".".join(out)


def _chunk(reply_id: str, model_id: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": reply_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


async def _sse(job: Job, reply_id: str, model_id: str) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content chunks, a finish chunk, [usage], ``[DONE]``."""
    try:
        yield f"data: {json.dumps(_chunk(reply_id, model_id, {'role': 'assistant', 'content': ''}, None))}\n\n"
        while True:
            kind, payload = await job.events.get()
            if kind == "delta":
                yield f"data: {json.dumps(_chunk(reply_id, model_id, {'content': payload}, None))}\n\n"
            elif kind == "error":
                yield f"data: {json.dumps(RequestError(payload, 500).body())}\n\n"
                break
            else:
                yield f"data: {json.dumps(_chunk(reply_id, model_id, {}, payload['finish_reason']))}\n\n"
                if job.prepared.include_usage:
                    usage = {**_chunk(reply_id, model_id, {}, None), "choices": [], "usage": payload["usage"]}
                    yield f"data: {json.dumps(usage)}\n\n"
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancel.set()  # a client that went away stops its generation at the next token


async def _complete(job: Job, reply_id: str, model_id: str) -> JSONResponse:
    pieces = []
    try:
        while True:
            kind, payload = await job.events.get()
            if kind == "delta":
                pieces.append(payload)
            elif kind == "error":
                return JSONResponse(RequestError(payload, 500).body(), status_code=500)
            else:
                break
    except asyncio.CancelledError:
        job.cancel.set()
        raise
    message = {"role": "assistant", "content": "".join(pieces)}
    return JSONResponse(
        {
            "id": reply_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": payload["finish_reason"]}],
            "usage": payload["usage"],
        }
    )
