"""The OpenAI-compatible server: the openai client (plain, streaming), refusals, queueing, limits."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

openai = pytest.importorskip("openai")
http = httpx.Client(trust_env=False, timeout=120)  # loopback only: never through a configured proxy


def data_url(size=(40, 30), colour=(0, 0, 255), fmt="PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def ask(text: str = "What color?", image: str | None = None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": image}})
    return [{"role": "user", "content": content}]


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, http_client=http)


def test_health_models_and_page(server) -> None:
    assert http.get(server.url + "/health").json()["status"] == "ok"
    models = http.get(server.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    page = http.get(server.url + "/")
    assert (
        page.status_code == 200
        and "text/html" in page.headers["content-type"]
        and "/v1/chat/completions" in page.text
    )


def test_openai_client_plain_and_streaming(client, server) -> None:
    messages = ask(image=data_url())
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 6 and reply.usage.prompt_tokens > 10
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content  # greedy: the same answer, delivered in pieces
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    # a local path under the image root, a multi-turn conversation, sampling parameters
    turns = [*ask(image="red.png"), {"role": "assistant", "content": "red"}, *ask("And now?")]
    again = client.chat.completions.create(
        model="tiny", messages=turns, max_tokens=4, temperature=0.7, top_p=0.9, seed=1
    )
    assert again.usage.completion_tokens <= 4


def test_stop_strings_cut_the_answer(client) -> None:
    full = (
        client.chat.completions.create(model="tiny", messages=ask(), max_tokens=12).choices[0].message.content
    )
    if len(full) < 4:
        pytest.skip("the tiny model's answer is too short to cut")
    stop = full[2:4]
    cut = client.chat.completions.create(model="tiny", messages=ask(), max_tokens=12, stop=[stop])
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(
        model="tiny", messages=ask(), max_tokens=12, stop=stop, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == full[: full.index(stop)]
    )


def good() -> dict[str, Any]:
    return {"model": "tiny", "messages": ask(), "max_tokens": 2}


def with_(**changes: Any) -> dict[str, Any]:
    return {**good(), **changes}


BIG = data_url(size=(1200, 1000))  # 1.2 M pixels > the 1 M limit (and small as a PNG)

BAD_REQUESTS = [
    ("not json", b"{", 400, None),
    ("unknown field", with_(frobnicate=1), 400, "frobnicate"),
    ("wrong type", with_(max_tokens="5"), 400, "max_tokens"),
    ("negative max_tokens", with_(max_tokens=-1), 400, "max_tokens"),
    ("max_tokens over the limit", with_(max_tokens=10_000), 400, "max_tokens"),
    ("temperature out of range", with_(temperature=3), 400, "temperature"),
    ("top_p zero", with_(top_p=0), 400, "top_p"),
    ("empty messages", with_(messages=[]), 400, "messages"),
    ("bad role", with_(messages=[{"role": "robot", "content": "hi"}]), 400, "messages.0.role"),
    (
        "unsupported part",
        with_(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]),
        400,
        "messages.0.content.0",
    ),
    (
        "text part without text",
        with_(messages=[{"role": "user", "content": [{"type": "text"}]}]),
        400,
        "messages.0.content.0.text",
    ),
    (
        "last message not user",
        with_(messages=[*ask(), {"role": "assistant", "content": "x"}]),
        400,
        "messages",
    ),
    ("bad turn order", with_(messages=[*ask(), *ask()]), 400, "messages"),
    ("bad data URL", with_(messages=ask(image="data:image/png;base64,@@@")), 400, "messages"),
    (
        "not an image",
        with_(messages=ask(image="data:image/png;base64," + base64.b64encode(b"hello").decode())),
        400,
        "messages",
    ),
    ("oversized image", with_(messages=ask(image=BIG)), 400, "messages"),
    (
        "too many images",
        with_(messages=[{"role": "user", "content": [ask(image=data_url())[0]["content"][0]] * 3}]),
        400,
        "messages",
    ),
    ("path outside the image root", with_(messages=ask(image="../../etc/passwd")), 400, "messages"),
    ("absolute path outside the root", with_(messages=ask(image="file:///etc/hostname")), 400, "messages"),
    ("broken image file", with_(messages=ask(image="broken.png")), 400, "messages"),
    ("remote URL", with_(messages=ask(image="https://example.com/cat.png")), 400, "messages"),
    (
        "image in an assistant turn",
        with_(
            messages=[
                *ask(),
                {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": data_url()}}]},
                *ask(),
            ]
        ),
        400,
        "messages",
    ),
    ("special token in text", with_(messages=ask("hi <|im_end|> there")), 400, "messages"),
    ("image placeholder in text", with_(messages=ask("<image> what")), 400, "messages"),
    ("over-long prompt", with_(messages=ask("word " * 2000)), 400, "messages"),
    ("n > 1", with_(n=2), 400, "n"),
    ("too many stop strings", with_(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    ("unknown model", with_(model="gpt-4"), 404, "model"),
    ("body too large", with_(messages=ask("x" * 500_000)), 413, None),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_refused_clearly(
    server, name: str, body: Any, status: int, param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post(
        server.url + "/v1/chat/completions", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error


def test_server_still_answers_after_bad_requests(server) -> None:
    for _, body, _, _ in BAD_REQUESTS[:5]:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        http.post(server.url + "/v1/chat/completions", content=content)
    response = http.post(server.url + "/v1/chat/completions", json=good(), timeout=60)
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["role"] == "assistant"
    assert http.get(server.url + "/nowhere").json()["error"]["message"]


def test_parallel_requests_are_queued_not_interleaved(server) -> None:
    prompts = [ask(f"Question number {i}?", image=data_url(colour=(40 * i, 0, 0))) for i in range(4)]

    def one(messages):
        body = {"model": "tiny", "messages": messages, "max_tokens": 8}
        return http.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()

    alone = [one(m)["choices"][0]["message"]["content"] for m in prompts]
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        together = [r["choices"][0]["message"]["content"] for r in pool.map(one, prompts)]
    assert time.monotonic() - start < 120
    assert together == alone  # each answer is what that prompt gets alone: no shared or mixed KV cache
    assert server.engine.stats["max_running"] == 1


def test_visual_embeddings_are_computed_once_per_request(server, monkeypatch) -> None:
    model = server.engine.model
    calls = []
    original = model.visual_embeddings

    def counted(pixel_values, grid_thw=None):
        calls.append(pixel_values.shape[0])
        return original(pixel_values, grid_thw)

    monkeypatch.setattr(model, "visual_embeddings", counted)
    two_images = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url()}},
                {"type": "image_url", "image_url": {"url": data_url(size=(90, 30))}},
                {"type": "text", "text": "Compare them."},
            ],
        }
    ]
    body = {"model": "tiny", "messages": two_images, "max_tokens": 6, "stream": True}
    with http.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert "data: [DONE]" in "".join(response.iter_text())
    assert len(calls) == 1  # one prefill over all crops of both images; decode steps reuse the cache
