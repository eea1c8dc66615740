"""Generation benchmark: time to first token and decode speed, openovis vs transformers' Ovis2.

    python benchmarks/generate.py --size tiny --device cpu
    python benchmarks/generate.py --size 2b --device cuda --new-tokens 128

Same random weights (a transformers ``Ovis2ForConditionalGeneration`` converted to openovis, as in
`benchmarks/train_step.py`), the same prompts (text around one image of 1 or 10 crops), greedy, and
exactly ``--new-tokens`` new tokens (EOS never stops a run: ``min_new_tokens`` = ``max_new_tokens``).
For batch 1 and 8 and 1 and 10 crops:

- TTFT: median wall time of ``generate(max_new_tokens=1)`` (vision tower + prefill + one token);
- decode tokens/s: ``B · (N − 1) / (t(N) − t(1))``, the rate of the steps after the first.

Implementations: transformers' Ovis2 ``generate`` (dynamic cache); openovis ``generate`` with the
dynamic cache; and, where supported (``--static``, default on CUDA), openovis with a static cache and
the one-token decode step of the LLM compiled (``torch.compile``, ``reduce-overhead``: CUDA graphs on
CUDA). The greedy tokens of every implementation are compared with transformers'.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import PAD, SIZES, build_hf, build_ours, make_samples  # noqa: E402

from openovis.processing.collator import OvisCollator  # noqa: E402


@dataclass
class Row:
    case: str
    impl: str
    ttft_ms: float
    decode_tok_s: float
    same_tokens: bool


def compile_decode_step(model, device: str) -> None:
    """Compiles the LLM's forward for one-token steps only (the prefill, of any length, stays eager)."""
    llm = model.llm
    eager = llm.forward
    mode = "reduce-overhead" if device == "cuda" else None
    compiled = torch.compile(eager, mode=mode, dynamic=False)

    def forward(*args, **kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] == 1:
            return compiled(*args, **kwargs)
        return eager(*args, **kwargs)

    llm.forward = forward


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_generate(model, inputs: dict, new_tokens: int, device: str, **kwargs) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    out = model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=PAD,
        **kwargs,
    )
    sync(device)
    return time.perf_counter() - start, out


def measure(model, inputs: dict, args, batch: int, **kwargs) -> tuple[float, float, torch.Tensor]:
    """TTFT seconds, decode tokens/s and the generated tokens (after one warm-up of each length)."""
    n = args.new_tokens
    timed_generate(model, inputs, 1, args.device, **kwargs)
    _, out = timed_generate(model, inputs, n, args.device, **kwargs)
    ttft = statistics.median(
        timed_generate(model, inputs, 1, args.device, **kwargs)[0] for _ in range(args.repeats)
    )
    full = statistics.median(
        timed_generate(model, inputs, n, args.device, **kwargs)[0] for _ in range(args.repeats)
    )
    assert out.shape[1] == inputs["input_ids"].shape[1] + n, "generation stopped early"
    return ttft, batch * (n - 1) / max(full - ttft, 1e-9), out[:, inputs["input_ids"].shape[1] :]


def prompt_batch(config, batch: int, crops: int, text_len: int, device: str, dtype: torch.dtype) -> dict:
    samples = make_samples(config, batch, crops, text_len, fixed=False, seed=2)
    for s in samples:
        s.pop("labels")
    b = OvisCollator(PAD, "left")(samples)
    return {
        "input_ids": b["input_ids"].to(device),
        "attention_mask": b["attention_mask"].to(device),
        "pixel_values": b["pixel_values"].to(device, dtype),
    }


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="tiny")
    p.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--crops", default="1,10")
    p.add_argument("--text-len", type=int, default=64, help="prompt text tokens (at most)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--static",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also openovis with a static cache + compiled decode step (default: on CUDA)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    static = args.device == "cuda" if args.static is None else args.static
    print(
        f"generate, size {args.size}, {args.device}, {dtype}, {args.new_tokens} new tokens, "
        f"≤{args.text_len} prompt text tokens, torch {torch.__version__}",
        flush=True,
    )
    hf = build_hf(args.size, args.device, dtype, "sdpa").eval()
    impls = {"transformers Ovis2": (hf, {}), "openovis dynamic": (build_ours(hf, args.device).eval(), {})}
    if static:
        ours_static = build_ours(hf, args.device).eval()
        compile_decode_step(ours_static, args.device)
        impls["openovis static+compile"] = (ours_static, {"cache_implementation": "static"})
    rows: list[Row] = []
    with torch.inference_mode():
        for crops in map(int, args.crops.split(",")):
            for batch in map(int, args.batches.split(",")):
                inputs = prompt_batch(hf.config, batch, crops, args.text_len, args.device, dtype)
                case = f"B={batch}, {crops} crop(s)"
                want = None
                for name, (model, kwargs) in impls.items():
                    try:
                        ttft, rate, tokens = measure(model, inputs, args, batch, **kwargs)
                    except Exception as err:  # e.g. no static cache for this model: keep the other rows
                        print(f"FAILED {case} {name}: {type(err).__name__}: {err}", flush=True)
                        continue
                    want = tokens if want is None else want
                    rows.append(Row(case, name, 1e3 * ttft, rate, bool(torch.equal(tokens, want))))
                    print(json.dumps(dataclasses.asdict(rows[-1])), flush=True)
                    if args.json:  # row by row, so a run cut short keeps what it measured
                        with open(args.json, "a") as f:
                            f.write(json.dumps({"size": args.size, **dataclasses.asdict(rows[-1])}) + "\n")
                gc.collect()
    print_table(rows)
    return rows


def print_table(rows: list[Row]) -> None:
    print("\n| case | implementation | TTFT ms | × | decode tok/s | × | same tokens |")
    print("|---|---|---|---|---|---|---|")
    ref: dict[str, Row] = {}
    for r in rows:
        base = ref.setdefault(r.case, r)
        print(
            f"| {r.case} | {r.impl} | {r.ttft_ms:.1f} | {base.ttft_ms / r.ttft_ms:.2f} | "
            f"{r.decode_tok_s:,.1f} | {r.decode_tok_s / base.decode_tok_s:.2f} | {r.same_tokens} |"
        )
    print("×: against the first implementation of the case (transformers' Ovis2); higher is better.")


if __name__ == "__main__":
    main()
