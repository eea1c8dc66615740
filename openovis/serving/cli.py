"""`openovis serve MODEL_DIR`: the command, as a typed function (``openovis.cli`` registers it).

It also runs alone: ``python -m openovis.serving.cli MODEL_DIR``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from openovis.options import Device


def serve(
    model_dir: Annotated[Path, typer.Argument(help="Model folder saved by training (model + processor).")],
    host: Annotated[
        str, typer.Option(help="Address to bind; the default serves this machine only.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    image_root: Annotated[
        Path | None, typer.Option(help="Allow image paths inside this folder (default: data: URLs only).")
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="Model id clients send (default: the folder name).")
    ] = None,
    compile: Annotated[
        bool,
        typer.Option(
            help="Static KV cache and a torch.compile-d decode step (compiles on the first request)."
        ),
    ] = False,
    device: Annotated[
        Device, typer.Option(help="Where the model runs: auto (CUDA when present), cpu or cuda.")
    ] = "auto",
    max_images: Annotated[int, typer.Option(help="Most images per request.")] = 4,
    max_prompt_tokens: Annotated[
        int, typer.Option(help="Longest prompt in tokens, image tokens included.")
    ] = 4096,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest max_tokens a request may ask for.")] = 1024,
    max_queue: Annotated[int, typer.Option(help="Waiting requests before new ones get HTTP 429.")] = 16,
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, with a web chat page at / (see docs/serving.md)."""
    import uvicorn

    from openovis.serving.app import create_app
    from openovis.serving.engine import Engine, ServeSettings

    settings = ServeSettings(
        model_id=model_name or model_dir.resolve().name,
        image_root=image_root,
        max_images=max_images,
        max_prompt_tokens=max_prompt_tokens,
        max_tokens_limit=max_tokens_limit,
        max_queue=max_queue,
        compile=compile,
    )
    engine = Engine.from_pretrained(model_dir, settings, device=device)
    typer.echo(f"serving {settings.model_id!r} on http://{host}:{port}/  (API: http://{host}:{port}/v1)")
    uvicorn.run(create_app(engine), host=host, port=port, log_level="info")


if __name__ == "__main__":
    typer.run(serve)
