"""Serving throughput: N requests answered one at a time (the server's queue) vs one padded batch.

    python benchmarks/serve_queue.py                       # tiny preset, CPU, 4 requests x 32 tokens
    python benchmarks/serve_queue.py --model runs/x/stage3-qa/final --device cuda --requests 8 --compile

Prints, measured in the same run: the queue (TokenStreamer, one sequence after another, dynamic or
static+compiled cache), a batched ``model.generate`` over the same prompts (left-padded), and their ratio.
The model answers exactly ``--tokens`` tokens (stop ids disabled) so that both do the same work.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from openovis.generation import SamplingParams, TokenStreamer


def tiny_folder(root: Path) -> Path:
    from openovis import build_model
    from openovis.data.text_tokenizer import byte_level_tokenizer
    from openovis.processing.processor import OvisProcessor

    tokenizer = byte_level_tokenizer()
    model = build_model("tiny", tokenizer=tokenizer)
    model.save_pretrained(root)
    OvisProcessor.from_model_config(model.config, tokenizer).save_pretrained(root)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="Model folder (default: a random tiny model)."
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="Queue with a static cache + compiled step.")
    args = parser.parse_args()

    from openovis.inference import OvisPipeline

    folder = args.model or tiny_folder(Path(tempfile.mkdtemp()))
    pipe = OvisPipeline.from_pretrained(folder, device=args.device)
    proc, model = pipe.processor, pipe.model
    images = [Image.new("RGB", (64 + 16 * i, 64), (40 * i, 90, 200)) for i in range(args.requests)]
    prompts = [
        [{"role": "user", "content": f"<image>Question {i}: what is shown?"}] for i in range(args.requests)
    ]
    samples = [proc(p, [img], mode="generate") for p, img in zip(prompts, images, strict=True)]
    params = SamplingParams(max_new_tokens=args.tokens)

    kind = "static" if args.compile else "dynamic"
    streamer = TokenStreamer(model, stop_ids=[], cache=kind, compile=args.compile, max_cache_len=1024)
    streamer.generate(samples[0]["input_ids"], samples[0]["pixel_values"], params)  # warm-up / compile
    start = time.perf_counter()
    for s in samples:
        streamer.generate(s["input_ids"], s["pixel_values"], params)
    queued = time.perf_counter() - start

    batch = proc.batch(prompts, [[img] for img in images], mode="generate")
    batch = {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    kwargs = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False}
    with torch.inference_mode():
        model.generate(**batch, **kwargs, pad_token_id=proc.pad_token_id)  # warm-up
        start = time.perf_counter()
        model.generate(**batch, **kwargs, pad_token_id=proc.pad_token_id)
        batched = time.perf_counter() - start

    n = args.requests * args.tokens
    print(f"{args.requests} requests x {args.tokens} tokens on {args.device}")
    print(f"queue ({kind}{', compiled' if args.compile else ''}): {queued:.2f} s  {n / queued:.1f} tok/s")
    print(f"one padded batch (generate):   {batched:.2f} s  {n / batched:.1f} tok/s")
    print(f"batch / queue throughput: {queued / batched:.2f}x")


if __name__ == "__main__":
    main()
