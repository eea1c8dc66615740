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


data_app = typer.Typer(help="Generate and inspect data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path, typer.Option(help="Output folder (becomes the image root).")],
    seed: Annotated[int, typer.Option(help="Seed: same seed, byte-identical data.")] = 0,
    n_train: Annotated[int, typer.Option(help="Training images.")] = 4000,
    n_test: Annotated[
        int, typer.Option(help="Images per test split (in-distribution, held-out composition).")
    ] = 350,
    image_size: Annotated[int, typer.Option(help="Image side in pixels (32-256).")] = 64,
    tokenizer: Annotated[
        bool, typer.Option(help="Also train the text tokenizer on the corpus (into OUT/tokenizer).")
    ] = False,
) -> None:
    """Generate Shapes World: captions, descriptions, QA conversations and test splits (see docs/data-shapes.md)."""
    from openovis.data.shapes import ShapesConfig, generate_shapes_world

    info = generate_shapes_world(
        out, ShapesConfig(seed=seed, n_train=n_train, n_test=n_test, image_size=image_size)
    )
    if tokenizer:
        from openovis.data.text_tokenizer import tokenizer_for_shapes

        tokenizer_for_shapes(out, out_dir=out / "tokenizer")
    typer.echo(
        f"wrote {out} in {info['seconds']:.1f}s: " + ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    )


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Report folder (data, runs, report.md, PNGs).")] = Path(
        "demo_out"
    ),
    quick: Annotated[
        bool, typer.Option(help="Smaller data and 1/10 of the steps: a smoke run of the whole pipeline.")
    ] = False,
    seeds: Annotated[int, typer.Option(help="Training seeds per connector (report shows mean ± std).")] = 1,
    steps: Annotated[
        float | None,
        typer.Option(
            help="Multiplier of the demo recipe's steps (tiny-shapes-curriculum; default 1, 0.1 with --quick; e.g. 2 for a long run)."
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Train Ovis (VET) and its MLP-projector twin on Shapes World, evaluate both, and write a report."""
    from openovis.demo import DemoConfig, run_demo, summary_lines

    results = run_demo(DemoConfig(out=out, quick=quick, seeds=seeds, progress=progress, steps=steps))
    typer.echo("\n".join(summary_lines(results, out)))


@app.command("ablate")
def ablate(
    experiment: Annotated[str, typer.Argument(help="connector | vocab | stages")],
    seeds: Annotated[int, typer.Option(help="Training seeds per grid point (tables show mean ± std).")] = 1,
    out: Annotated[
        Path,
        typer.Option(help="Workspace: data, runs (reused when already finished), results per experiment."),
    ] = Path("ablate_out"),
    quick: Annotated[
        bool,
        typer.Option(help="Smaller data, 1/10 of the steps, smaller grid: a smoke run, not a measurement."),
    ] = False,
    recipe: Annotated[
        str, typer.Option(help="Base recipe (shipped name or path) on Shapes World.")
    ] = "tiny-shapes",
    values: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated grid instead of the default: K values (vocab), variants like 1+3 (stages)."
        ),
    ] = None,
    steps: Annotated[
        float | None, typer.Option(help="Multiplier of the recipe's steps (default 1, 0.1 with --quick).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run one of the paper's checks as a grid of training runs: a table (results.md) and a plot."""
    from openovis.evaluation.ablation import AblationConfig, run_ablation, summary_lines

    grid = [v.strip() for v in values.split(",") if v.strip()] if values else []
    cfg = AblationConfig(
        experiment, out, seeds=seeds, quick=quick, recipe=recipe, values=grid, steps=steps, progress=progress
    )
    results = run_ablation(cfg)
    typer.echo("\n".join(summary_lines(results)))
    typer.echo(f"results: {out / experiment / 'results.md'}")


@app.command("analyze")
def analyze(
    model: Annotated[Path, typer.Option(help="VET model folder saved by training (model + processor).")],
    data: Annotated[
        Path | None, typer.Option(help="Conversation or caption file whose images are analysed.")
    ] = None,
    images: Annotated[Path | None, typer.Option(help="Or a folder of images (searched recursively).")] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(help="Folder the data file's image paths are relative to (default: its folder)."),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: MODEL/analysis).")] = None,
    max_images: Annotated[int, typer.Option(help="Analyse at most this many images.")] = 500,
    word: Annotated[
        list[int] | None,
        typer.Option(help="Visual word to show in the patch gallery (repeatable; default: the most used)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Visual-word analysis: entropies, vocabulary usage, top words over images, patch galleries, nearest text tokens."""
    from openovis.evaluation.analysis import run_analysis

    result = run_analysis(
        model,
        data,
        out,
        images=images,
        image_root=image_root,
        max_images=max_images,
        words=word or None,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    typer.echo(f"report: {result['report']}")


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


@app.command("eval")
def evaluate(
    model: Annotated[Path, typer.Option(help="Model folder saved by training (model + processor).")],
    data: Annotated[
        Path, typer.Option(help="Test set: conversation JSON/JSONL with answers, or a VLMEvalKit TSV.")
    ],
    out: Annotated[Path | None, typer.Option(help="Results JSON (default: MODEL/eval_<data>.json).")] = None,
    image_root: Annotated[
        Path | None, typer.Option(help="Folder image paths are relative to (default: the data's).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Questions per generation batch.")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 16,
    limit: Annotated[int | None, typer.Option(help="Evaluate only the first N questions.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")] = None,
) -> None:
    """Evaluate a model: accuracy overall and per question type, with chance levels, and every prediction."""
    from openovis.evaluation.runner import format_table, run_eval

    result = run_eval(model, data, out, image_root, batch_size, max_new_tokens, limit, device=device)
    typer.echo(format_table(result["metrics"]))
    typer.echo(f"predictions: {result['path']}")


@app.command("chat")
def chat(
    model: Annotated[Path, typer.Option(help="Model folder saved by training (model + processor).")],
    question: Annotated[
        str | None, typer.Argument(help="One question (omit for an interactive chat).")
    ] = None,
    image: Annotated[list[Path] | None, typer.Option(help="Image file (repeat for several).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 64,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when present).")] = None,
) -> None:
    """Ask a model about images: one question, or an interactive multi-turn chat with streamed answers."""
    from transformers import TextStreamer

    from openovis.inference import OvisPipeline

    pipe = OvisPipeline.from_pretrained(model, device=device)
    images = [str(p) for p in image or []]
    if question is not None:
        typer.echo(pipe.chat(question, images, max_new_tokens=max_new_tokens))
        return
    streamer = TextStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    history = pipe.new_conversation()
    typer.echo(
        "Interactive chat: empty line or Ctrl-D to quit; '/image PATH' adds an image to the next question."
    )
    pending: list[str] = list(images)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line.startswith("/image "):
            pending.append(line.split(" ", 1)[1].strip())
            continue
        typer.echo("ovis> ", nl=False)
        pipe.chat(line, pending, history=history, max_new_tokens=max_new_tokens, streamer=streamer)
        pending = []


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
