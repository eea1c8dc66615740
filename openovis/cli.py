"""The `openovis` command line: a thin layer over the library, generated from typed signatures (typer).

Each command calls one library function; `openovis COMMAND --help` documents every option.

Errors of known kinds (bad input, a missing file, a damaged checkpoint) print one line,
``error: ...``, and exit with status 1; ``--debug`` (or ``OPENOVIS_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import os
import textwrap
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import click
import typer
from typer.core import TyperGroup

from openovis.experiments.ablation import AblationConfig
from openovis.experiments.demo import DemoConfig
from openovis.options import ConversionTarget, Device
from openovis.serving.cli import serve

DEBUG_ENV = "OPENOVIS_DEBUG"


def _known_errors() -> tuple[type[BaseException], ...]:
    from openovis.integrity import CheckpointError

    # SkipSample is a ValueError; ImportError covers a missing optional dependency.
    return (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, CheckpointError, ImportError)


class _OneLineErrors(TyperGroup):
    """Turns known library errors into one ``error:`` line and exit status 1 (unless debugging)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _known_errors() as err:
            if ctx.params.get("debug") or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                raise
            message = " ".join(str(err).split()) or type(err).__name__
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1) from None


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstring under each field of a dataclass (the project's field-doc convention)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, nxt in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def dataclass_command(
    cls: type, arguments: tuple[str, ...] = ()
) -> Callable[[Callable[[Any], Any]], Callable[..., Any]]:
    """Turns ``fn(config: cls)`` into a typer command whose options are ``cls``'s fields.

    Each field becomes ``--field-name`` (or a positional argument when named in ``arguments``) with
    its type, default and docstring as help, so an option is declared once, in the dataclass.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)

    def wrap(fn: Callable[[Any], Any]) -> Callable[..., Any]:
        params = []
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            kind = typer.Argument if f.name in arguments else typer.Option
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = inspect.Parameter.empty
            params.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=Annotated[hints[f.name], kind(help=docs.get(f.name, ""))],
                )
            )

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            return fn(cls(**kwargs))

        command.__signature__ = inspect.Signature(params)
        del command.__wrapped__
        return command

    return wrap


app = typer.Typer(
    name="openovis",
    help="Ovis (structural embedding alignment) multimodal LLMs: build, train, evaluate, chat, serve, convert.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneLineErrors,
)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option(help=f"Show full tracebacks instead of one-line errors (or set {DEBUG_ENV}=1).")
    ] = False,
) -> None:
    """Ovis (structural embedding alignment) multimodal LLMs: build, train, evaluate, chat, serve, convert."""


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
        from openovis.data.text_tokenizer import tokenizer_from_corpus

        tokenizer_from_corpus(out / "corpus.txt", out_dir=out / "tokenizer")
    typer.echo(
        f"wrote {out} in {info['seconds']:.1f}s: " + ", ".join(f"{k} {v}" for k, v in info["counts"].items())
    )


@app.command("demo")
@dataclass_command(DemoConfig)
def demo(cfg: DemoConfig) -> None:
    """Train Ovis (VET) and its MLP-projector twin on Shapes World, evaluate both, and write a report."""
    from openovis.experiments import demo as demo_lib

    results = demo_lib.run_demo(cfg)
    typer.echo("\n".join(demo_lib.summary_lines(results, cfg.out)))


@app.command("ablate")
@dataclass_command(AblationConfig, arguments=("experiment",))
def ablate(cfg: AblationConfig) -> None:
    """Run one of the paper's checks as a grid of training runs: a table (results.md) and a plot."""
    from openovis.experiments import ablation

    results = ablation.run_ablation(cfg)
    typer.echo("\n".join(ablation.summary_lines(results)))
    typer.echo(f"results: {cfg.out / cfg.experiment / 'results.md'}")


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
    device: Annotated[
        Device, typer.Option(help="Where the model runs: auto (CUDA when present), cpu or cuda.")
    ] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Visual-word analysis: entropies, vocabulary usage, top words over images, patch galleries, nearest text tokens."""
    from openovis.experiments.analysis import run_analysis

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
        Literal["auto", "never"],
        typer.Option(
            help="auto: continue the run in output_dir from its newest checkpoint; never: start over."
        ),
    ] = "never",
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
    summary = run_training(
        load_recipe(recipe, extra), resume=None if resume == "never" else resume, progress=progress
    )
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
    device: Annotated[
        Device, typer.Option(help="Where the model runs: auto (CUDA when present), cpu or cuda.")
    ] = "auto",
    require_images: Annotated[
        bool,
        typer.Option(help="Skip text-only rows (reason 'no image') instead of asking them without an image."),
    ] = False,
    image_check: Annotated[
        bool,
        typer.Option(
            help="Also compare the answers' loss with each question's own image vs a mismatched one "
            "(a gap near 0: the model answers without reading the image)."
        ),
    ] = False,
) -> None:
    """Evaluate a model: accuracy overall and per question type, with chance levels, and every prediction.

    Bad rows are skipped and counted by reason (listed in the results JSON); every other row is scored.
    """
    from openovis.evaluation.runner import format_table, run_eval

    result = run_eval(
        model,
        data,
        out,
        image_root,
        batch_size,
        max_new_tokens,
        limit,
        device=device,
        require_images=require_images,
        check_images=image_check,
    )
    typer.echo(format_table(result["metrics"]))
    typer.echo(
        result["skip_summary"] + (" (see skipped_rows in the results JSON)" if result["skipped"] else "")
    )
    if image_check:
        from openovis.evaluation.image_check import format_image_check

        typer.echo("image check (nats per answer token): " + format_image_check(result["image_check"]))
    typer.echo(f"predictions: {result['path']}")


@app.command("chat")
def chat(
    model: Annotated[Path, typer.Option(help="Model folder saved by training (model + processor).")],
    question: Annotated[
        str | None, typer.Argument(help="One question (omit for an interactive chat).")
    ] = None,
    image: Annotated[list[Path] | None, typer.Option(help="Image file (repeat for several).")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer in tokens.")] = 64,
    device: Annotated[
        Device, typer.Option(help="Where the model runs: auto (CUDA when present), cpu or cuda.")
    ] = "auto",
    image_root: Annotated[
        Path | None,
        typer.Option(
            help="Resolve image paths inside this folder; paths leaving it (.., absolute, symlinks) are refused."
        ),
    ] = None,
    compile: Annotated[
        bool, typer.Option(help="Static KV cache and a torch.compile-d decode step (greedy; compiles first).")
    ] = False,
    thinking: Annotated[
        bool | None,
        typer.Option(
            "--thinking/--no-thinking",
            help="Thinking mode of templates that have one (Ovis2.5/Qwen3): let the model reason in a "
            "<think> block first, or close an empty one. Default: the template's (off).",
        ),
    ] = None,
    thinking_budget: Annotated[
        int | None,
        typer.Option(
            help="With --thinking: most tokens of thinking before the block is closed and the answer starts."
        ),
    ] = None,
) -> None:
    """Ask a model about images: one question, or an interactive multi-turn chat with streamed answers."""
    from transformers import TextStreamer

    from openovis.inference import OvisPipeline, resolve_user_image
    from openovis.skips import SkipSample

    images = [resolve_user_image(str(p), image_root) for p in image or []]
    pipe = OvisPipeline.from_pretrained(model, device=device, compile=compile)
    if question is not None:
        answer = pipe.chat(
            question,
            images,
            max_new_tokens=max_new_tokens,
            thinking=thinking,
            thinking_budget=thinking_budget,
        )
        typer.echo(answer)
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
        try:  # a bad image or prompt: say so and keep chatting (the history is left unchanged)
            if line.startswith("/image "):
                pending.append(resolve_user_image(line.split(" ", 1)[1].strip(), image_root))
                continue
            typer.echo("ovis> ", nl=False)
            pipe.chat(
                line,
                pending,
                history=history,
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                thinking=thinking,
                thinking_budget=thinking_budget,
            )
        except SkipSample as err:
            typer.echo(f"error: {err}", err=True)
            if line.startswith("/image "):
                continue
        pending = []


app.command("serve")(serve)


@app.command("convert")
def convert(
    src: Annotated[
        Path, typer.Argument(help="Source checkpoint folder (its layout is read off config.json).")
    ],
    dst: Annotated[Path, typer.Argument(help="Output folder.")],
    to: Annotated[ConversionTarget, typer.Option(help="Layout to write.")] = "openovis",
    official_numerics: Annotated[
        bool,
        typer.Option(help="transformers Ovis2 -> openovis: the official pre-norm features, not post-norm."),
    ] = False,
    accept_post_norm: Annotated[
        bool,
        typer.Option(
            help="--to hf-ovis2 of a pre-norm model: accept that transformers applies the final norm."
        ),
    ] = False,
    accept_pre_norm: Annotated[
        bool,
        typer.Option(help="--to official of a post-norm model: accept that the official code skips it."),
    ] = False,
    direction: Annotated[
        Literal["hf-to-openovis", "openovis-to-hf", "official-to-openovis"] | None,
        typer.Option(help="Deprecated: the source layout is detected; use --to."),
    ] = None,
) -> None:
    """Convert between the official Ovis 1.x/2 layout, transformers' Ovis2 and openovis (see docs/conversion.md)."""
    from openovis.convert import convert_checkpoint, detect_layout

    if direction is not None:
        expected, to = {
            "hf-to-openovis": ("hf-ovis2", "openovis"),
            "openovis-to-hf": ("openovis", "hf-ovis2"),
            "official-to-openovis": ("official", "openovis"),
        }[direction]
        found = detect_layout(src)
        if found != expected:
            raise typer.BadParameter(
                f"--direction {direction}: {src} is in the {found} layout, not {expected}"
            )
        typer.echo(f"--direction is deprecated: use `openovis convert SRC DST --to {to}`", err=True)
    try:
        notes = convert_checkpoint(
            src,
            dst,
            to=to,
            official_numerics=official_numerics,
            accept_post_norm=accept_post_norm,
            accept_pre_norm=accept_pre_norm,
        )
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    for note in notes:
        typer.echo(note)
    typer.echo(f"wrote {dst}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
