"""The `serve` command function: options reach the engine and uvicorn; loopback by default."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from openovis.serving.cli import serve


def test_serve_command_builds_the_app_and_binds_loopback(model_folder, image_root, monkeypatch) -> None:
    seen = {}

    def fake_run(app, host, port, **kwargs):
        seen.update(app=app, host=host, port=port)

    monkeypatch.setattr("uvicorn.run", fake_run)
    cli = typer.Typer()
    cli.command("serve")(serve)
    cli.command("other")(lambda: None)  # a group, as in openovis.cli, so "serve" is a subcommand
    args = [
        "serve",
        str(model_folder),
        "--port",
        "8123",
        "--image-root",
        str(image_root),
        "--max-images",
        "3",
    ]
    result = CliRunner().invoke(cli, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    engine = seen["app"].state.engine
    assert engine.settings.model_id == model_folder.name and engine.settings.max_images == 3
    assert engine.settings.image_root == image_root
    engine.close()
    assert "--image-root" in CliRunner().invoke(cli, ["serve", "--help"]).output
