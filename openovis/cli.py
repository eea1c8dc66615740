"""The `openovis` command line: a thin layer over the library, generated from typed signatures (typer).

Each command calls one library function; `openovis COMMAND --help` documents every option.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="openovis",
    help="Ovis (structural embedding alignment) multimodal LLMs: build, train, evaluate, chat, convert.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Ovis (structural embedding alignment) multimodal LLMs: build, train, evaluate, chat, convert."""


@app.command("models")
def models() -> None:
    """List the registered model presets (names for recipes and `build_model`)."""
    from openovis.builders import PRESETS, build_config

    for name, preset in sorted(PRESETS.items()):
        cfg = build_config(name)
        typer.echo(
            f"{name:24s} {preset.description}\n{'':24s} K={cfg.visual_vocab_size} s={cfg.hidden_stride} "
            f"tokens/crop={cfg.visual_tokens_per_crop} crop={cfg.crop_size}px max_partition={preset.max_partition}"
        )


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
