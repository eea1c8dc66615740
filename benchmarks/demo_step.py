"""The demo's training step on Shapes World: batches padded to their longest sample vs packed rows.

    python benchmarks/demo_step.py                       # the demo's recipe, 2 threads, 30 steps
    python benchmarks/demo_step.py --recipe tiny-shapes-curriculum --pack-length 128 --threads 1

Builds the recipe's model (random weights), writes a small Shapes World with the recipe's generator
settings into a temporary folder, trains a BPE on it as the recipe does, and runs each text stage of
the recipe twice from the same weights over the same samples in the same order: once with the
padding collator, once with ``speed.pack_length`` rows (`openovis.processing.packing`). Per stage
and form: seconds per step, real tokens per second (text + visual atoms, padding excluded), the
padded fraction of the token slots, and the first steps' losses (packing changes only where samples
sit, so the two must agree to float rounding); then the packed form's speed as a ratio of the
padded one. Time on a quiet machine: another process on the same cores makes every figure noise.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from openovis.experiments.demo import DEFAULT_RECIPE
from openovis.processing.collator import OvisCollator, model_inputs
from openovis.processing.packing import PackingCollator
from openovis.training.loop import IndexStream
from openovis.training.recipe import load_recipe
from openovis.training.run import build_initial_model, build_processor, stage_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=DEFAULT_RECIPE, help="a shipped recipe name or a path")
    p.add_argument(
        "--pack-length", type=int, default=None, help="row length (default: the recipe's, else 256)"
    )
    p.add_argument("--steps", type=int, default=30, help="timed steps per stage and form")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-train", type=int, default=300, help="training scenes to generate")
    return p.parse_args(argv)


def prepare(recipe: Any, root: Path, n_train: int) -> tuple[Any, Path]:
    """Generates the recipe's Shapes World (``n_train`` scenes) under ``root`` and its tokenizer."""
    from transformers import AutoTokenizer

    from openovis.data.generated import generate_if_changed
    from openovis.data.text_tokenizer import tokenizer_from_corpus

    if recipe.generate is None:
        raise SystemExit(f"{recipe.output_dir}: the recipe generates no data; use a Shapes World recipe")
    data_root = root / "data"
    config = {**recipe.generate.config, "n_train": n_train, "n_test": 7}
    generate_if_changed(data_root, recipe.generate.source, config, progress=False)
    spec = recipe.model.tokenizer
    folder = root / "tokenizer"
    tokenizer_from_corpus(data_root / spec.train_on, spec.vocab_size, out_dir=folder)
    return AutoTokenizer.from_pretrained(folder), data_root


def run_form(
    model: torch.nn.Module, batches: list[dict[str, Any]], warmup: int
) -> tuple[float, float, float, list[float]]:
    """Trains ``model`` on ``batches``: seconds per timed step, real tokens/s, padded fraction, losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses, seconds, real, slots = [], 0.0, 0, 0
    for i, batch in enumerate(batches):
        count = int((batch["labels"][:, 1:] != -100).sum())
        start = time.perf_counter()
        out = model(**model_inputs(batch), num_items_in_batch=torch.tensor(max(count, 1)))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        losses.append(float(out.loss.detach()))
        if i >= warmup:
            seconds += elapsed
            real += int(batch["attention_mask"].sum())
            slots += batch["input_ids"].numel()
    timed = len(batches) - warmup
    return seconds / timed, real / seconds, 1 - real / slots, losses


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    pack_length = args.pack_length or recipe.speed.pack_length or 256
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, data_root = prepare(recipe, Path(tmp), args.n_train)
        torch.manual_seed(recipe.seed)
        initial = build_initial_model(recipe, tokenizer)
        processor = build_processor(recipe, initial, tokenizer)
        padded = OvisCollator.from_processor(processor, "right")
        packed = PackingCollator.from_processor(processor, pack_length)
        print(
            f"recipe {args.recipe}, {args.threads} threads, torch {torch.__version__}, "
            f"{args.warmup} + {args.steps} steps per stage and form, rows of {pack_length} tokens"
        )
        print("| stage | form | s / step | real tokens / s | padding | first losses |")
        print("|---|---|---|---|---|---|")
        for i, stage in enumerate(recipe.stages):
            if any(s.format in ("text", "regions") for s in stage.data):
                continue
            dataset = stage_dataset(stage, processor, data_root, recipe.seed + i)
            stream = IndexStream(len(dataset), stage.batch_size, recipe.seed + i)
            figures = {}
            for form, collate in (("padded", padded), (f"packed {pack_length}", packed)):
                source = iter(DataLoader(dataset, batch_sampler=stream, collate_fn=collate))  # from its start
                batches = [next(source) for _ in range(args.warmup + args.steps)]
                model = copy.deepcopy(initial)
                per_step, rate, waste, losses = run_form(model, batches, args.warmup)
                figures[form] = (per_step, rate)
                first = " ".join(f"{x:.5f}" for x in losses[:2])
                print(f"| {stage.name} | {form} | {per_step:.4f} | {rate:,.0f} | {waste:.0%} | {first} |")
                rows.append(
                    {
                        "stage": stage.name,
                        "form": form,
                        "s_per_step": per_step,
                        "tokens_per_s": rate,
                        "padding": waste,
                        "losses": losses[:2],
                    }
                )
            (base, _), (fast, _) = figures.values()
            print(f"| {stage.name} | packed / padded speed | {base / fast:.2f}x | | | |")
    return rows


if __name__ == "__main__":
    main()
