"""A real server on a free loopback port (uvicorn in a thread) over the tiny saved model."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402
from tiny_folder import save_tiny_folder  # noqa: E402

from openovis.serving.app import create_app  # noqa: E402
from openovis.serving.engine import Engine, ServeSettings  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn serving an app in a background thread; ``url`` is its base address."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(engine), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.close()


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    return save_tiny_folder(tmp_path_factory.mktemp("serve-model"), letters=True)


@pytest.fixture(scope="session")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "red.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


@pytest.fixture(scope="session")
def server(model_folder: Path, image_root: Path) -> Iterator[Server]:
    settings = ServeSettings(
        model_id="tiny",
        image_root=image_root,
        max_images=2,
        max_image_bytes=200_000,
        max_image_pixels=1000 * 1000,
        max_prompt_tokens=400,
        max_tokens_default=8,
        max_tokens_limit=64,
        max_request_bytes=400_000,
    )
    with Server(Engine.from_pretrained(model_folder, settings, device="cpu")) as running:
        yield running
