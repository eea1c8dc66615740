"""Benchmark of the visual-embedding op: the official formulation vs the chunked op, in the same run.

    python benchmarks/vet_op.py --device cpu                        # tiny … medium-4k; fp32
    python benchmarks/vet_op.py --device cuda                       # the DESIGN §7 cases; bf16
    python benchmarks/vet_op.py --device cuda --cases ovis2.5 --variants --probe --topk 64,1024

For every case and implementation: forward time (inference, no grad), forward+backward time, and the
peak EXTRA memory of forward+backward over the inputs and parameters already allocated. CUDA: median of
``triton.testing.do_bench`` (CUDA events) and ``torch.cuda.max_memory_allocated``. CPU: median of
repeats, and the peak of torch's CPU allocations replayed from the profiler's allocation events (torch
CPU tensors are invisible to tracemalloc), plus the bytes autograd saves for backward. The gradients
themselves (same for every implementation) are part of the extra memory; their size is printed apart.

Shapes: N visual tokens, F = d·s² features, K visual vocabulary, n indicators (head width K − n), D LLM
width; ``-even`` variants use n = 0 so that the head width is a multiple of 128.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from openovis.ops import vet
from openovis.ops.vet import reference_vet, vet_embed, vet_embed_topk


@dataclass(frozen=True)
class Case:
    n_tokens: int
    features: int
    vocab: int
    indicators: int
    width: int  # D


CASES = {
    "tiny": Case(256, 64, 512, 5, 128),
    "small": Case(512, 256, 4096, 5, 256),
    "medium": Case(1024, 512, 16384, 5, 512),
    "medium-4k": Case(4096, 512, 16384, 5, 512),
    "paper-8b": Case(4608, 1024, 131072, 2, 4096),
    "paper-8b-even": Case(4608, 1024, 131072, 0, 4096),
    "ovis2.5": Case(8192, 4608, 65536, 5, 3584),
    "ovis2.5-even": Case(8192, 4608, 65536, 0, 3584),
    "ovis2-8b": Case(10240, 4096, 65536, 5, 3584),
    "ovis2-8b-even": Case(10240, 4096, 65536, 0, 3584),
}
CPU_CASES = ["tiny", "small", "medium", "medium-4k"]
CUDA_CASES = ["paper-8b", "paper-8b-even", "ovis2.5", "ovis2.5-even", "ovis2-8b", "ovis2-8b-even"]


def make_inputs(case: Case, dtype: torch.dtype, device: str, seed: int = 0):
    """x, head W, γ, β, E as leaves requiring grad, and an upstream gradient, all random (never zeros)."""
    g = torch.Generator(device).manual_seed(seed)
    h = case.vocab - case.indicators

    def randn(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, device=device) * scale + shift).to(dtype).requires_grad_()

    x = randn(case.n_tokens, case.features)
    w = randn(h, case.features, scale=case.features**-0.5)
    gamma, beta = randn(h, scale=0.02, shift=1.0), randn(h, scale=0.02)
    table = randn(case.vocab, case.width, scale=0.02)
    dout = torch.randn(case.n_tokens, case.width, generator=g, device=device).to(dtype)
    return [x, w, gamma, beta, table], dout


# ---- measuring ------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device: str, params: list[torch.Tensor], repeats: int) -> float:
    """Median milliseconds of ``fn``; grads are reset to None before each call."""
    if device == "cuda":
        import triton

        return triton.testing.do_bench(fn, warmup=100, rep=500, grad_to_none=params, return_mode="median")
    times = []
    for i in range(repeats + 1):
        for p in params:
            p.grad = None
        start = time.perf_counter()
        fn()
        if i:  # the first call warms up
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of live torch CPU allocations during ``fn``, above the level when it starts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    nodes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if type(node.extra_fields).__name__ == "_ExtraFields_Allocation":
            nodes.append(node)
    live = peak = 0
    for node in sorted(nodes, key=lambda nd: nd.start_time_ns):
        live += node.extra_fields.alloc_size
        peak = max(peak, live)
    return peak


def peak_extra_bytes(fn: Callable[[], object], device: str, params: list[torch.Tensor]) -> int:
    for p in params:
        p.grad = None
    gc.collect()
    if device != "cuda":
        return cpu_peak_bytes(fn)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def saved_bytes(fn: Callable[[], torch.Tensor], own: list[torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward, beyond the inputs themselves."""
    skip = {t.untyped_storage().data_ptr() for t in own}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(saved.values())


# ---- one case -------------------------------------------------------------------------------------


def implementations(variants: bool, device: str) -> dict[str, Callable]:
    impls: dict[str, Callable] = {
        "reference": lambda *a, **k: reference_vet(*a, **k),
        "chunked": lambda *a, **k: vet_embed(*a, impl="chunked", **k),
    }
    if variants:
        impls["chunked, no pad"] = lambda *a, **k: vet_embed(*a, impl="chunked", pad_to=1, **k)
        impls["chunked, 1 GiB budget"] = lambda *a, **k: vet_embed(
            *a, impl="chunked", memory_budget_mb=1024, **k
        )
        if device == "cuda":
            impls["chunked, torch rows"] = lambda *a, **k: vet_embed(
                *a, impl="chunked", row_kernels="torch", **k
            )
    return impls


def run_case(name: str, device: str, dtype: torch.dtype, variants: bool, repeats: int) -> list[dict]:
    case = CASES[name]
    params, dout = make_inputs(case, dtype, device)
    kw = dict(num_indicators=case.indicators)
    grads_bytes = sum(p.numel() * p.element_size() for p in params)
    rows, ref_result = [], None
    for impl, fn in implementations(variants, device).items():

        def forward(fn=fn):
            with torch.no_grad():
                return fn(*params, **kw)

        def train_step(fn=fn):
            fn(*params, **kw).backward(dout)

        for p in params:
            p.grad = None
        out = fn(*params, **kw)
        out.backward(dout)
        result = [out.detach().float().clone()] + [p.grad.float().clone() for p in params]
        if ref_result is None:
            ref_result, errs = result, [0.0] * len(result)
        else:
            errs = [float((a - b).norm() / b.norm()) for a, b in zip(result, ref_result, strict=True)]
        del out, result
        row = {
            "case": name,
            "impl": impl,
            "fwd_ms": time_ms(forward, device, params, repeats),
            "fwd_bwd_ms": time_ms(train_step, device, params, repeats),
            "fwd_peak_mib": peak_extra_bytes(forward, device, params) / 2**20,
            "fwd_bwd_peak_mib": peak_extra_bytes(train_step, device, params) / 2**20,
            "saved_mib": saved_bytes(lambda fn=fn: fn(*params, **kw), params) / 2**20,
            "grads_mib": grads_bytes / 2**20,
            "max_rel_err": max(errs),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    del ref_result
    for p in params:
        p.grad = None
    return rows


def probe_gemms(device: str, dtype: torch.dtype, name: str = "ovis2.5", rows: int = 1024) -> None:
    """The logits GEMM of one chunk with the official odd head width, padded by copy, or as a strided view."""
    if device != "cuda":
        return
    import triton

    case = CASES[name]
    h = case.vocab - case.indicators
    hp = vet.padded_width(h, 128)
    x = torch.randn(rows, case.features, device=device, dtype=dtype)
    w = torch.randn(h, case.features, device=device, dtype=dtype)
    buf = torch.empty(rows, hp, device=device, dtype=dtype)
    wp = vet._padded_weight(w, hp)
    dz = torch.randn(rows, hp, device=device, dtype=dtype)
    flop = 2 * rows * case.features * hp
    cases = {
        "x Wᵀ, odd width (contiguous [c, H])": lambda: x @ w.t(),
        "x Wᵀ, W padded by copy": lambda: torch.mm(x, wp.t(), out=buf),
        "x Wᵀ, strided view out": lambda: torch.mm(x, w.t(), out=buf[:, :h]),
        "dz W, odd width (contiguous dz)": lambda: dz[:, :h].contiguous() @ w,
        "dz W, W padded": lambda: dz @ wp,
        "dz W, strided view": lambda: dz[:, :h] @ w,
        "dzᵀ x -> dW, strided view": lambda: dz[:, :h].t() @ x,
        "pad W (the copy)": lambda: vet._padded_weight(w, hp),
    }
    print(f"\nGEMM probe, {name}: c={rows}, F={case.features}, H={h}, Hp={hp}, {dtype}")
    for label, fn in cases.items():
        ms = triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")
        tflops = flop / ms / 1e9 if "copy)" not in label else float("nan")
        print(f"  {label:40s} {ms:8.3f} ms  {tflops:6.0f} TFLOP/s")


def probe_topk(device: str, dtype: torch.dtype, ks: list[int], name: str, repeats: int) -> None:
    """Opt-in top-k inference: time, and error against the exact forward at two temperatures.

    With random weights the LayerNorm outputs are N(0, 1) over tens of thousands of columns, so at τ = 1
    the softmax is nearly flat and top-k is far off; τ = 0.1 stands in for a peaked, trained head.
    """
    case = CASES[name]
    params, _ = make_inputs(case, dtype, device)
    args = [p.detach() for p in params]
    for tau in (1.0, 0.1):
        _probe_topk_at(args, case, ks, tau, device, repeats, name)


def _probe_topk_at(args, case: Case, ks: list[int], tau: float, device: str, repeats: int, name: str) -> None:
    kw = dict(num_indicators=case.indicators, temperature=tau)
    with torch.no_grad():
        exact = reference_vet(*args, **kw).float()
        ref_ms = time_ms(lambda: reference_vet(*args, **kw), device, [], repeats)
        ours_ms = time_ms(lambda: vet_embed(*args, **kw), device, [], repeats)
        print(
            f"\ntop-k inference, {name}, tau={tau}: reference fwd {ref_ms:.2f} ms, chunked fwd {ours_ms:.2f} ms"
        )
        for k in ks:
            approx = vet_embed_topk(*args, k=k, **kw).float()
            err = float((approx - exact).norm() / exact.norm())
            ms = time_ms(lambda k=k: vet_embed_topk(*args, k=k, **kw), device, [], repeats)
            print(f"  k={k:6d}: {ms:8.2f} ms ({ref_ms / ms:.2f}x reference), rel. error {err:.3e}")


def profile_kernels(device: str, dtype: torch.dtype, name: str) -> None:
    """GPU time per kernel of one chunked forward+backward (where the time goes)."""
    if device != "cuda":
        return
    from torch.profiler import ProfilerActivity, profile

    case = CASES[name]
    params, dout = make_inputs(case, dtype, device)
    kw = dict(num_indicators=case.indicators)
    for _ in range(2):
        vet_embed(*params, impl="chunked", **kw).backward(dout)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        vet_embed(*params, impl="chunked", **kw).backward(dout)
        torch.cuda.synchronize()
    print(f"\nkernels of one chunked forward+backward, {name}:")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=14, max_name_column_width=60))


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'case':14s} {'impl':21s} {'fwd ms':>8s} {'x':>5s} {'fwd+bwd ms':>10s} {'x':>5s} {'peak MiB':>9s} "
        f"{'x':>6s} {'work MiB':>9s} {'x':>6s} {'saved MiB':>9s} {'grads MiB':>9s} {'rel err':>8s}"
    )
    ref: dict = {}
    for r in rows:
        if r["impl"] == "reference":
            ref = r
        work, ref_work = r["fwd_bwd_peak_mib"] - r["grads_mib"], ref["fwd_bwd_peak_mib"] - ref["grads_mib"]
        print(
            f"{r['case']:14s} {r['impl']:21s} {r['fwd_ms']:8.2f} {ref['fwd_ms'] / r['fwd_ms']:5.2f} "
            f"{r['fwd_bwd_ms']:10.2f} {ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:5.2f} {r['fwd_bwd_peak_mib']:9.1f} "
            f"{ref['fwd_bwd_peak_mib'] / max(r['fwd_bwd_peak_mib'], 1e-9):6.2f} {work:9.1f} "
            f"{ref_work / max(work, 1e-9):6.2f} {r['saved_mib']:9.1f} {r['grads_mib']:9.1f} {r['max_rel_err']:8.1e}"
        )
    print(
        "x: reference / this (higher is better). peak: extra memory of forward+backward over inputs and "
        "parameters, gradients included; work: peak minus the gradients (x, W, γ, β, E in their dtypes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--cases", default=None, help=f"comma-separated, from {','.join(CASES)}")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument(
        "--variants", action="store_true", help="also no padding, padding by copy, torch rows"
    )
    parser.add_argument("--probe", action="store_true", help="time the logits GEMM layouts (CUDA)")
    parser.add_argument("--profile", action="store_true", help="kernel times of the chunked op (CUDA)")
    parser.add_argument("--topk", default="", help="comma-separated k for the top-k inference probe")
    parser.add_argument("--topk-case", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="CPU timing repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    names = args.cases.split(",") if args.cases else (CUDA_CASES if args.device == "cuda" else CPU_CASES)
    if args.device == "cuda":
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, dtype {dtype}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}, dtype {dtype}")
    if args.probe:
        probe_gemms(args.device, dtype)
    if args.profile:
        profile_kernels(args.device, dtype, names[0])
    if args.topk:
        topk_case = args.topk_case or names[0]
        probe_topk(args.device, dtype, [int(k) for k in args.topk.split(",")], topk_case, args.repeats)
    rows = []
    for name in names:
        rows += run_case(name, args.device, dtype, args.variants, args.repeats)
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
