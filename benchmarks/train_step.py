"""Training-step benchmark: openovis vs transformers' Ovis2 on the same weights and batches, in one run.

    python benchmarks/train_step.py --size tiny --device cpu --sweep      # each lever alone, CPU
    python benchmarks/train_step.py --size mid --device cpu --crops 4 --text-len 256 --batch 2
    python benchmarks/train_step.py --size 2b --device cuda --crops 10 --text-len 512 --batch 2 --sweep

A random transformers ``Ovis2ForConditionalGeneration`` of the chosen size is built and converted to
openovis (`openovis.convert.hf_ovis2_to_openovis`, so both hold the same weights and compute the same
function); both then train on the same batches with the same loss (next-token cross-entropy on the
answer tokens, token mean) and AdamW. Per model: samples/s, tokens/s (real tokens, text + visual
atoms, padding excluded), the first step's loss (the two must agree), and the peak extra memory of
one training step over the weights and optimizer state already allocated (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the peak of torch's CPU allocations in one profiled step,
replayed from the profiler's allocation events, which sees tensors that RSS hides in allocator reuse),
and ratios against transformers (higher is better).

Samples: ``--crops`` crops per image (1, or 1 + rows·cols: a thumbnail and a grid, Ovis2's layout),
the text around the image ``--text-len`` tokens at most (uniform in [text-len/2, text-len] unless
``--fixed-length``), the second half of the text the supervised answer.

Levers of the openovis model (each switchable, README "Performance"): ``--vet-impl`` (the fused VET
op), ``--loss-impl`` (loss without [tokens, vocab] logits), ``--pack`` (sequence packing),
``--compile`` (torch.compile of the LLM blocks), ``--ac`` (selective/full activation checkpointing).
``--sweep`` measures openovis with every lever off, then each lever alone, then all defaults of the
device. Sizes: ``tiny`` and ``mid`` for a CPU; ``2b`` is Ovis2-2B-like (AIMv2-huge-448-like ViT,
Qwen2.5-1.5B-like LM, K = 65536) for a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Ovis2Config, Ovis2ForConditionalGeneration, Qwen2Config
from transformers.models.ovis2.configuration_ovis2 import Ovis2VisionConfig

from openovis.constants import IGNORE_INDEX
from openovis.convert import hf_ovis2_to_openovis
from openovis.processing.collator import OvisCollator, model_inputs
from openovis.processing.packing import PackingCollator
from openovis.training.speed import SpeedSpec, apply_speed_levers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vet_op import cpu_peak_bytes  # noqa: E402

N_IND = 5
PAD = 0

# ViT (AIMv2-style) and LM (Qwen2-style) widths per size; K is the visual vocabulary.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
        ),
        "text": dict(
            vocab_size=4096,
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        "K": 1024,
    },
    "mid": {
        "vision": dict(
            hidden_size=256,
            intermediate_size=1024,
            num_hidden_layers=4,
            num_attention_heads=4,
            image_size=224,
            patch_size=14,
        ),
        "text": dict(
            vocab_size=32000,
            hidden_size=512,
            intermediate_size=1408,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
        ),
        "K": 8192,
    },
    "2b": {  # Ovis2-2B: AIMv2-huge-patch14-448 + Qwen2.5-1.5B, K = 65536
        "vision": dict(
            hidden_size=1536,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=12,
            image_size=448,
            patch_size=14,
        ),
        "text": dict(
            vocab_size=151936,
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            rope_theta=1000000.0,
            max_position_embeddings=32768,
        ),
        "K": 65536,
    },
}


def hf_config(size: str) -> Ovis2Config:
    spec = SIZES[size]
    v = spec["text"]["vocab_size"]
    vision = Ovis2VisionConfig(
        **spec["vision"],
        hidden_stride=2,
        vocab_size=spec["K"],
        num_visual_indicator_tokens=N_IND,
        tokenize_function="softmax",
    )
    text = Qwen2Config(**spec["text"], tie_word_embeddings=True)
    return Ovis2Config(
        vision_config=vision,
        text_config=text,
        image_token_id=v - N_IND - 1,
        visual_indicator_token_ids=list(range(v - N_IND, v)),
        vocab_size=v,
        hidden_size=spec["text"]["hidden_size"],
        tie_word_embeddings=True,
    )


def build_hf(size: str, device: str, dtype: torch.dtype, attn: str) -> Ovis2ForConditionalGeneration:
    """A random transformers Ovis2 of ``size``, built directly on ``device``."""
    torch.manual_seed(0)
    config = hf_config(size)
    with torch.device(device):
        model = Ovis2ForConditionalGeneration(config)
    model.set_attn_implementation(attn)
    return model.to(dtype)


def build_ours(hf: Ovis2ForConditionalGeneration, device: str, **overrides: Any):
    """The openovis model holding ``hf``'s weights (post-norm features: the same function)."""
    with torch.device(device):
        ours = hf_ovis2_to_openovis(hf, **overrides)
    ours.set_attn_implementation(hf.config.text_config._attn_implementation)
    return ours


# ---- data ---------------------------------------------------------------------------------------------
def crop_grid(crops: int) -> tuple[int, int]:
    """(rows, cols) of an image of ``crops`` crops: 1 is a single crop, else a thumbnail + rows·cols."""
    if crops == 1:
        return 1, 1
    n = crops - 1
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    return rows, n // rows


def image_ids(config: Ovis2Config, crops: int, tokens_per_crop: int) -> list[int]:
    """transformers' Ovis2 layout: start, atoms, grid, [atoms col atoms … row …], end."""
    start, grid, col, row, end = config.visual_indicator_token_ids
    rows, cols = crop_grid(crops)
    atoms = [config.image_token_id] * tokens_per_crop
    ids = [start, *atoms, grid]
    if crops > 1:
        for r in range(rows):
            for c in range(cols):
                ids += atoms + ([col] if c < cols - 1 else [])
            ids += [row] if r < rows - 1 else []
    return [*ids, end]


def make_samples(
    config: Ovis2Config, n: int, crops: int, text_len: int, fixed: bool, seed: int
) -> list[dict]:
    """Processed-sample dicts: prompt | image | prompt | answer (supervised), random ids and pixels."""
    g = torch.Generator().manual_seed(seed)
    vc = config.vision_config
    t = (vc.image_size // vc.patch_size // vc.hidden_stride) ** 2
    image = image_ids(config, crops, t)
    top = config.image_token_id - 1
    samples = []
    for _ in range(n):
        length = text_len if fixed else int(torch.randint(text_len // 2, text_len + 1, (), generator=g))
        text = torch.randint(1, top, (max(length, 2),), generator=g).tolist()
        prompt, answer = text[: len(text) // 2], text[len(text) // 2 :]
        ids = [*prompt[: len(prompt) // 2], *image, *prompt[len(prompt) // 2 :], *answer]
        labels = [IGNORE_INDEX] * (len(ids) - len(answer)) + answer
        samples.append(
            {
                "input_ids": torch.tensor(ids),
                "attention_mask": torch.ones(len(ids), dtype=torch.long),
                "labels": torch.tensor(labels),
                "pixel_values": torch.randn(crops, 3, vc.image_size, vc.image_size, generator=g),
                "grids": [crop_grid(crops)],
            }
        )
    return samples


def batches(samples: list[dict], batch: int, pack: bool) -> list[dict]:
    collate = PackingCollator(PAD, max_length=10**9) if pack else OvisCollator(PAD, "right")
    return [collate(samples[i : i + batch]) for i in range(0, len(samples), batch)]


# ---- measuring ----------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    samples_s: float
    tokens_s: float
    peak_mib: float
    first_loss: float
    step_ms: float


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(model, optimizer, batch: dict, device: str, dtype: torch.dtype) -> torch.Tensor:
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in model_inputs(batch).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    inputs.setdefault("use_cache", False)
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measure(name: str, model, data: list[dict], args: argparse.Namespace, dtype: torch.dtype) -> Row:
    """Warm-up steps, timed steps, then one step for the memory peak; returns the row."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
    first = float(train_step(model, optimizer, data[0], args.device, dtype))  # same batch, same weights
    for i in range(1, args.warmup):
        train_step(model, optimizer, data[i % len(data)], args.device, dtype)
    sync(args.device)
    start = time.perf_counter()
    timed = [data[(args.warmup + i) % len(data)] for i in range(args.steps)]
    for b in timed:
        train_step(model, optimizer, b, args.device, dtype)
    sync(args.device)
    seconds = time.perf_counter() - start
    samples = sum(b["num_samples"] for b in timed)
    tokens = sum(int(b["attention_mask"].sum()) for b in timed)
    peak = peak_step_bytes(model, optimizer, data[0], args.device, dtype)
    del optimizer
    return Row(name, samples / seconds, tokens / seconds, peak / 2**20, first, 1e3 * seconds / args.steps)


def peak_step_bytes(model, optimizer, batch: dict, device: str, dtype: torch.dtype) -> int:
    gc.collect()
    if device != "cuda":
        return cpu_peak_bytes(lambda: train_step(model, optimizer, batch, device, dtype))
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, optimizer, batch, device, dtype)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---- configurations -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Levers:
    vet_impl: str = "reference"
    loss_impl: str = "reference"
    pack: bool = False
    compile: bool = False
    ac: str = "off"

    def label(self) -> str:
        on = [
            f"vet={self.vet_impl}" if self.vet_impl != "reference" else "",
            f"loss={self.loss_impl}" if self.loss_impl != "reference" else "",
            "pack" if self.pack else "",
            "compile" if self.compile else "",
            f"ac={self.ac}" if self.ac != "off" else "",
        ]
        return "openovis " + (", ".join(x for x in on if x) or "(levers off)")


def device_defaults(device: str) -> Levers:
    """The levers that pay on this device (tiny/mid CPU measurements: benchmarks/RESULTS.md)."""
    if device == "cuda":
        return Levers(vet_impl="auto", loss_impl="auto", compile=True)
    return Levers(vet_impl="auto", loss_impl="chunked")


def sweep(device: str) -> list[Levers]:
    off = Levers()
    alone = [
        dataclasses.replace(off, vet_impl="chunked"),
        dataclasses.replace(off, loss_impl="auto"),
        dataclasses.replace(off, pack=True),
        dataclasses.replace(off, ac="selective"),
    ]
    compile_alone = [dataclasses.replace(off, compile=True)] if device == "cuda" else []
    return [off, *alone, device_defaults(device), *compile_alone]


def run_ours(hf, levers: Levers, samples: list[dict], args, dtype) -> Row:
    model = build_ours(hf, args.device, vet_impl=levers.vet_impl, loss_impl=levers.loss_impl)
    model.to(dtype)
    apply_speed_levers(model, SpeedSpec(compile_llm=levers.compile, activation_checkpointing=levers.ac))
    data = batches(samples, args.batch, levers.pack)
    try:
        return measure(levers.label(), model, data, args, dtype)
    finally:
        del model
        free(args.device)


def print_table(rows: list[Row], header: str) -> None:
    ref = rows[0]
    print(f"\n{header}")
    print("| model | step ms | samples/s | × | tokens/s | × | peak MiB | × | first loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.name} | {r.step_ms:.1f} | {r.samples_s:.2f} | {r.samples_s / ref.samples_s:.2f} | "
            f"{r.tokens_s:,.0f} | {r.tokens_s / ref.tokens_s:.2f} | {r.peak_mib:,.1f} | "
            f"{ref.peak_mib / max(r.peak_mib, 1e-9):.2f} | {r.first_loss:.5f} |"
        )
    mem = "torch.cuda.max_memory_allocated" if rows and header.find("cuda") >= 0 else "torch CPU allocations"
    print(
        f"×: against {ref.name} (higher is better; memory: its peak / this peak). peak: extra memory of "
        f"one training step over weights + optimizer state ({mem})."
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument("--crops", type=int, default=1, help="crops per image: 1, or 1 + rows·cols (e.g. 10)")
    p.add_argument("--text-len", type=int, default=128, help="text tokens per sample (at most)")
    p.add_argument("--fixed-length", action="store_true", help="every sample has --text-len text tokens")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile happens here)")
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="cuda: bf16, cpu: fp32")
    p.add_argument("--attn", default="sdpa", help="attention implementation of both models")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--vet-impl", choices=["reference", "chunked", "auto"], default=None)
    p.add_argument("--loss-impl", choices=["reference", "chunked", "liger", "auto"], default=None)
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--ac", choices=["off", "selective", "full"], default=None)
    p.add_argument("--sweep", action="store_true", help="levers off, each lever alone, device defaults")
    p.add_argument("--no-hf", action="store_true", help="skip transformers' model (ratios vs the first row)")
    p.add_argument("--json", default=None, help="append the rows here as JSON lines")
    args = p.parse_args(argv)
    if args.crops != 1 and args.crops < 3:
        p.error("--crops: 1, or 1 + rows·cols (a thumbnail and at least a 1x2 grid)")
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    header = (
        f"train step, size {args.size}, {args.crops} crop(s) + ≤{args.text_len} text, batch {args.batch}, "
        f"{args.steps} steps, {args.device}, {dtype}, attn {args.attn}, torch {torch.__version__}"
    )
    print(header, flush=True)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    defaults = device_defaults(args.device)
    chosen = Levers(
        vet_impl=args.vet_impl or defaults.vet_impl,
        loss_impl=args.loss_impl or defaults.loss_impl,
        pack=defaults.pack if args.pack is None else args.pack,
        compile=defaults.compile if args.compile is None else args.compile,
        ac=args.ac or defaults.ac,
    )
    hf = build_hf(args.size, args.device, dtype, args.attn)
    n = args.batch * (args.warmup + args.steps)
    samples = make_samples(hf.config, n, args.crops, args.text_len, args.fixed_length, seed=1)
    rows = []

    def record(row: Row) -> None:
        rows.append(row)
        print(json.dumps(dataclasses.asdict(row)), flush=True)
        if args.json:  # row by row, so a run cut short by a time limit keeps what it measured
            with open(args.json, "a") as f:
                f.write(json.dumps({"header": header, **dataclasses.asdict(row)}) + "\n")

    if not args.no_hf:  # first, then its initial weights come back for the openovis conversions
        initial = {k: v.clone() for k, v in hf.state_dict().items()}
        record(measure("transformers Ovis2", hf, batches(samples, args.batch, False), args, dtype))
        hf.load_state_dict(initial)
        del initial
        free(args.device)
    hf.requires_grad_(False)
    for levers in sweep(args.device) if args.sweep else [chosen]:
        try:
            record(run_ours(hf, levers, samples, args, dtype))
        except Exception as err:  # one failing lever must not cost the other figures
            print(f"FAILED {levers.label()}: {type(err).__name__}: {err}", flush=True)
            free(args.device)
    if rows:
        print_table(rows, header)
    return rows


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
