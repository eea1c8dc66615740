"""The `openovis` command line: a thin layer over the library, generated from typed signatures (typer).

Each command calls one library function; `openovis COMMAND --help` documents every option.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@app.command("train")
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. stages.0.max_steps=10")] = None,
    resume: Annotated[str | None, typer.Option(help="'auto': continue the run in output_dir from its newest checkpoint.")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Run folder (overrides the recipe's output_dir).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train a model through the stages of a recipe (single process, or under `accelerate launch`)."""
    from openovis.training.recipe import load_recipe
    from openovis.training.run import train as run_training

    extra = list(overrides or [])
    if output_dir:
        extra.append(f"output_dir={output_dir}")
    summary = run_training(load_recipe(recipe, extra), resume=resume, progress=progress)
    typer.echo(f"final model: {summary['final_model']} ({summary['seconds']:.0f}s)")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
