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
    overrides: Annotated[
        list[str] | None, typer.Argument(help="KEY=VALUE overrides, e.g. stages.0.max_steps=10")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="'auto': continue the run in output_dir from its newest checkpoint.")
    ] = None,
    output_dir: Annotated[
        str | None, typer.Option(help="Run folder (overrides the recipe's output_dir).")
    ] = None,
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


@app.command("convert")
def convert(
    src: Annotated[Path, typer.Argument(help="Source checkpoint folder.")],
    dst: Annotated[Path, typer.Argument(help="Output folder.")],
    direction: Annotated[
        str, typer.Option(help="hf-to-openovis | openovis-to-hf | official-to-openovis")
    ] = "hf-to-openovis",
    official_numerics: Annotated[
        bool,
        typer.Option(
            help="hf-to-openovis: use the official pre-norm features instead of transformers' post-norm."
        ),
    ] = False,
    image_atom_id: Annotated[
        int | None, typer.Option(help="official-to-openovis: text id of <IMG_ATOM>.")
    ] = None,
    indicator_token_ids: Annotated[
        str | None, typer.Option(help="official-to-openovis: comma-separated ids of the indicator tokens.")
    ] = None,
) -> None:
    """Convert checkpoints between transformers' Ovis2, the official Ovis layout and openovis (see docs/conversion.md)."""
    from openovis.convert import convert_hf_ovis2_checkpoint, convert_official_checkpoint

    if direction == "hf-to-openovis":
        feature = "pre_norm" if official_numerics else "post_norm"
        out = convert_hf_ovis2_checkpoint(src, dst, "hf_to_openovis", backbone_feature=feature)
    elif direction == "openovis-to-hf":
        out = convert_hf_ovis2_checkpoint(src, dst, "openovis_to_hf")
    elif direction == "official-to-openovis":
        if image_atom_id is None or indicator_token_ids is None:
            raise typer.BadParameter(
                "official checkpoints use placeholder ids: give --image-atom-id and --indicator-token-ids"
            )
        ids = [int(i) for i in indicator_token_ids.split(",")]
        out = convert_official_checkpoint(src, dst, image_atom_id=image_atom_id, indicator_token_ids=ids)
    else:
        raise typer.BadParameter(f"--direction: unknown {direction!r}")
    typer.echo(f"wrote {out}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
