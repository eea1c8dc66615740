"""The serving engine: validated requests -> prompts -> one generation at a time on a worker thread.

    request --prepare (HTTP thread pool)--> Prepared (ids, crops, sampling) --submit--> queue
    worker thread: for each job, TokenStreamer.stream -> text deltas -> the job's asyncio queue

One worker owns the model, so generations never share (or interleave in) a KV cache; waiting requests
queue (bounded: a full queue answers 429). Images are decoded and cropped while the request is
prepared, and their visual embeddings are computed once, in the prefill of that request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from openovis.constants import IMAGE_PLACEHOLDER
from openovis.generation import SamplingParams, TokenStreamer
from openovis.serving.images import ImageError, load_request_image
from openovis.serving.schemas import ChatCompletionRequest


@dataclass(frozen=True)
class ServeSettings:
    """Limits and options of a server (all requests).

    Attributes:
        model_id: The name clients use in ``model`` (``GET /v1/models`` lists it).
        image_root: Local image paths are allowed only inside this folder (None: no local paths).
        max_images: Most images in one request.
        max_image_bytes: Largest encoded image.
        max_image_pixels: Largest image (width x height), checked before decoding.
        max_prompt_tokens: Longest prompt, images' tokens included.
        max_tokens_default: Answer length when a request gives no ``max_tokens``.
        max_tokens_limit: Largest ``max_tokens`` a request may ask for.
        max_queue: Requests waiting for the worker before new ones get HTTP 429.
        max_request_bytes: Largest request body.
        compile: Static KV cache and a ``torch.compile``-d decode step.
    """

    model_id: str = "openovis"
    image_root: Path | None = None
    max_images: int = 4
    max_image_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_prompt_tokens: int = 4096
    max_tokens_default: int = 256
    max_tokens_limit: int = 1024
    max_queue: int = 16
    max_request_bytes: int = 16 * 2**20
    compile: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("max_") and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{f.name}: must be an integer >= 1, got {value!r}")


class RequestError(Exception):
    """A request the server refuses; becomes an OpenAI-style JSON error with ``status``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass
class Prepared:
    """A validated request, ready for the worker."""

    input_ids: torch.Tensor  # [L]
    pixel_values: torch.Tensor | None  # [C, 3, S, S]
    params: SamplingParams
    stops: list[str]
    stream: bool
    include_usage: bool
    grid_thw: torch.Tensor | None = None  # [n, 3], NaViT models only

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class Job:
    """A queued generation; the worker posts ``(kind, payload)`` events to ``events`` on ``loop``."""

    prepared: Prepared
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancel: threading.Event = field(default_factory=threading.Event)

    def post(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


class TextTracker:
    """Token ids -> text deltas, holding back what may still become a stop string or a split character."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.tokens: list[int] = []
        self.sent = 0

    def add(self, token: int) -> tuple[str, bool]:
        """Adds a token; returns the text now safe to send and whether a stop string was reached."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hits = [i for i in (text.find(s, max(0, self.sent - len(s))) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            return self._send(text, max(end, self.sent)), True
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            return "", False
        hold = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._send(text, len(text) - hold), False

    def finish(self) -> str:
        """The held-back rest at the end of generation (no stop string was completed)."""
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        return self._send(text, len(text))

    def _send(self, text: str, end: int) -> str:
        end = max(end, self.sent)
        delta, self.sent = text[self.sent : end], end
        return delta


class Engine:
    """Owns the model and processor; prepares requests and runs generations one at a time.

    Args:
        model: An ``OvisForConditionalGeneration`` (eval mode).
        processor: Its ``OvisProcessor``.
        settings: Limits and options.
    """

    def __init__(self, model: Any, processor: Any, settings: ServeSettings) -> None:
        self.model, self.processor, self.settings = model.eval(), processor, settings
        kind = "static" if settings.compile else "dynamic"
        self.streamer = TokenStreamer.for_processor(
            model,
            processor,
            cache=kind,
            compile=settings.compile,
            max_cache_len=settings.max_prompt_tokens + settings.max_tokens_limit,
        )
        specials = processor.tokenizer.all_special_tokens + [
            t.content for t in processor.tokenizer.added_tokens_decoder.values() if t.special
        ]
        self._special_texts = sorted(set(specials))
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self.stats = {"served": 0, "running": 0, "max_running": 0, "failed": 0}
        self._worker = threading.Thread(target=self._run, name="openovis-generate", daemon=True)
        self._worker.start()

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, settings: ServeSettings, device: str | None = None
    ) -> Engine:
        """Loads a saved model folder (model + processor)."""
        from openovis.inference import OvisPipeline

        pipe = OvisPipeline.from_pretrained(folder, device=device)
        return cls(pipe.model, pipe.processor, settings)

    # ------------------------------------------------------------------------------------ prepare

    def prepare(self, request: ChatCompletionRequest) -> Prepared:
        """Checks a parsed request against the model and the limits, and builds its prompt.

        Raises:
            RequestError: Anything the server will not run, with the field at fault.
        """
        s = self.settings
        if request.model != s.model_id:
            raise RequestError(
                f"model {request.model!r} does not exist; this server serves {s.model_id!r}",
                404,
                "model",
                "model_not_found",
            )
        max_tokens = self._max_tokens(request)
        stops = self._stops(request.stop)
        messages, urls = self._messages(request)
        if len(urls) > s.max_images:
            raise RequestError(f"too many images: {len(urls)} > {s.max_images}", param="messages")
        images = []
        for i, url in enumerate(urls):
            try:
                images.append(load_request_image(url, s.image_root, s.max_image_bytes, s.max_image_pixels))
            except ImageError as err:
                raise RequestError(f"image {i}: {err}", param="messages", code="invalid_image") from err
        try:
            sample = self.processor(messages, images or None, mode="generate", max_length=s.max_prompt_tokens)
        except ValueError as err:  # SkipSample: bad turn order, over-long prompt, ...
            reason = getattr(getattr(err, "reason", None), "name", "")
            if reason in ("TOO_LONG", "IMAGES_TOO_LONG"):
                raise RequestError(
                    f"the prompt is longer than this server's limit of {s.max_prompt_tokens} tokens ({err})",
                    param="messages",
                    code="context_length_exceeded",
                ) from err
            raise RequestError(f"bad conversation: {err}", param="messages") from err
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=request.temperature if request.temperature is not None else 0.0,
            top_p=request.top_p if request.top_p is not None else 1.0,
            seed=request.seed,
        )
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        if request.stream_options is not None and not request.stream:
            raise RequestError("stream_options: only allowed with stream: true", param="stream_options")
        return Prepared(
            sample["input_ids"],
            sample["pixel_values"],
            params,
            stops,
            request.stream,
            include_usage,
            sample.get("grid_thw"),
        )

    def _max_tokens(self, request: ChatCompletionRequest) -> int:
        a, b = request.max_tokens, request.max_completion_tokens
        if a is not None and b is not None and a != b:
            raise RequestError("max_tokens and max_completion_tokens disagree", param="max_tokens")
        value = a if a is not None else b
        value = self.settings.max_tokens_default if value is None else value
        if value > self.settings.max_tokens_limit:
            raise RequestError(
                f"max_tokens: {value} is over this server's limit of {self.settings.max_tokens_limit}",
                param="max_tokens",
            )
        return value

    @staticmethod
    def _stops(stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise RequestError("stop: at most 4 non-empty strings of at most 64 characters", param="stop")
        return stops

    def _messages(self, request: ChatCompletionRequest) -> tuple[list[dict[str, str]], list[str]]:
        """OpenAI messages -> role/content messages with ``<image>`` placeholders, and the image URLs."""
        out, urls = [], []
        for i, message in enumerate(request.messages):
            parts = [message.content] if isinstance(message.content, str) else message.content
            pieces = []
            for part in parts:
                text = part if isinstance(part, str) else getattr(part, "text", None)
                if text is not None:
                    self._check_text(text, f"messages.{i}.content")
                    pieces.append(text)
                    continue
                if message.role != "user":
                    raise RequestError(
                        f"messages.{i}: images are only allowed in user messages", param="messages"
                    )
                pieces.append(IMAGE_PLACEHOLDER)
                urls.append(part.image_url.url)
            out.append({"role": message.role, "content": "".join(pieces)})
        if out[-1]["role"] != "user":
            raise RequestError("messages: the last message must be a user message", param="messages")
        return out, urls

    def _check_text(self, text: str, where: str) -> None:
        for token in self._special_texts:
            if token in text:
                raise RequestError(
                    f"{where}: the text contains the special token {token!r}"
                    + (" (send images as image_url parts)" if token == IMAGE_PLACEHOLDER else ""),
                    param="messages",
                )

    # ------------------------------------------------------------------------------------ queue

    def submit(self, prepared: Prepared, loop: asyncio.AbstractEventLoop) -> Job:
        """Queues a generation; its events arrive on ``job.events``.

        Raises:
            RequestError: 429 when ``max_queue`` requests are already waiting.
        """
        with self._lock:
            if self._waiting >= self.settings.max_queue:
                raise RequestError("the server is busy: too many queued requests; retry later", 429)
            self._waiting += 1
        job = Job(prepared, loop)
        self._jobs.put(job)
        return job

    @property
    def queued(self) -> int:
        return self._waiting

    def close(self) -> None:
        """Stops the worker after the current job."""
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._waiting -= 1
            if job.cancel.is_set():
                continue
            self.stats["running"] += 1
            self.stats["max_running"] = max(self.stats["max_running"], self.stats["running"])
            try:
                self._generate(job)
                self.stats["served"] += 1
            except Exception as err:  # noqa: BLE001 - report to the client, keep serving
                self.stats["failed"] += 1
                job.post("error", f"generation failed: {type(err).__name__}: {err}")
            finally:
                self.stats["running"] -= 1

    def _generate(self, job: Job) -> None:
        p = job.prepared
        tracker = TextTracker(self.processor.tokenizer, p.stops)
        by_string = False
        count = 0
        start = time.perf_counter()
        stream = self.streamer.stream(p.input_ids, p.pixel_values, p.params, p.grid_thw)
        try:
            for token in stream:
                count += 1
                delta, by_string = tracker.add(token)
                if delta:
                    job.post("delta", delta)
                if by_string or job.cancel.is_set():
                    break
        finally:
            stream.close()
        if not by_string:
            rest = tracker.finish()
            if rest:
                job.post("delta", rest)
        finish = "stop" if by_string or count < p.params.max_new_tokens else "length"
        usage = {
            "prompt_tokens": p.prompt_tokens,
            "completion_tokens": count,
            "total_tokens": p.prompt_tokens + count,
        }
        job.post("done", {"finish_reason": finish, "usage": usage, "seconds": time.perf_counter() - start})
