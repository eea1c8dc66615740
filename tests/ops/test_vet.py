"""The chunked VET op against the official formulation (`reference_vet`), values and gradients."""

from __future__ import annotations

import logging

import pytest
import torch

from openovis.ops import vet
from openovis.ops.vet import reference_probs, reference_vet, vet_embed, vet_embed_topk

TOKENIZE = ["softmax", "st_argmax", "gumbel_argmax"]
PARAMS = ["x", "head", "gamma", "beta", "table"]


def make_inputs(lead=(37,), f=24, k=70, n=5, d=16, dtype=torch.float32, device="cpu"):
    """Random leaf tensors ``x [*lead, F]``, head ``[K-n, F]``, γ, β ``[K-n]``, table ``[K, D]``."""
    h = k - n
    tensors = [
        torch.randn(*lead, f),
        torch.randn(h, f) / f**0.5,
        1 + 0.2 * torch.randn(h),
        0.2 * torch.randn(h),
        torch.randn(k, d),
    ]
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]


def run(fn, inputs, dout, **kwargs):
    """Output and the gradients of all inputs, for ``fn(*inputs, **kwargs).backward(dout)``."""
    for t in inputs:
        t.grad = None
    out = fn(*inputs, **kwargs)
    out.backward(dout)
    return [out.detach()] + [t.grad.detach().clone() for t in inputs]


def chunked(*args, **kwargs):
    return vet_embed(*args, impl="chunked", **kwargs)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


# budget 0.02 MiB with Hp = 128: 13 rows per chunk for the fp32 torch path, so 37 rows = 13 + 12 + 12
SMALL_BUDGET = 0.02


@pytest.mark.parametrize("tokenize", TOKENIZE)
@pytest.mark.parametrize("lead", [(37,), (3, 11)])
def test_fp32_matches_reference(tokenize, lead):
    inputs = make_inputs(lead=lead)
    dout = torch.randn(*lead, 16)
    kw = dict(num_indicators=5, tokenize=tokenize, temperature=0.7)
    ref = run(reference_vet, inputs, dout, generator=torch.Generator().manual_seed(1), **kw)
    ours = run(
        chunked, inputs, dout, generator=torch.Generator().manual_seed(1), memory_budget_mb=SMALL_BUDGET, **kw
    )
    assert ours[0].shape == (*lead, 16)
    for name, a, b in zip(["out", *PARAMS], ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def test_chunks_that_do_not_divide_n():
    n, h = 37, 65
    width = vet.padded_width(h, 128)
    rows = vet.chunk_rows(n, width, torch.float32, torch.device("cpu"), False, SMALL_BUDGET)
    assert n % rows != 0 and rows < n


@pytest.mark.parametrize("tokenize", TOKENIZE)
def test_fp64_matches_reference_tightly(tokenize):
    inputs = make_inputs(k=133, n=2, dtype=torch.float64)
    dout = torch.randn(37, 16, dtype=torch.float64)
    kw = dict(num_indicators=2, tokenize=tokenize, temperature=1.3)
    ref = run(reference_vet, inputs, dout, generator=torch.Generator().manual_seed(4), **kw)
    ours = run(chunked, inputs, dout, generator=torch.Generator().manual_seed(4), memory_budget_mb=0.03, **kw)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bf16_error_is_within_reference_bf16_noise():
    """Both bf16 results against fp64: the op's error is at most a small factor of the reference's."""
    inputs = make_inputs(lead=(64,), f=48, k=261, n=5, d=32)
    dout = torch.randn(64, 32)
    kw = dict(num_indicators=5, temperature=0.5)
    exact = run(reference_vet, [t.detach().double().requires_grad_() for t in inputs], dout.double(), **kw)
    low = [t.detach().bfloat16().requires_grad_() for t in inputs]
    ref = run(reference_vet, low, dout.bfloat16(), **kw)
    ours = run(chunked, low, dout.bfloat16(), memory_budget_mb=0.05, **kw)
    for name, o, r, e in zip(["out", *PARAMS], ours, ref, exact, strict=True):
        assert o.dtype == torch.bfloat16
        err_ours, err_ref = rel_err(o, e), rel_err(r, e)
        assert err_ours <= 2.0 * err_ref + 1e-3, f"{name}: ours {err_ours:.2e} vs reference {err_ref:.2e}"


def test_gradcheck_float64():
    inputs = make_inputs(lead=(7,), f=5, k=13, n=2, d=3, dtype=torch.float64)

    def fn(*args):
        return vet_embed(
            *args, num_indicators=2, temperature=0.8, impl="chunked", memory_budget_mb=1e-4, pad_to=4
        )

    assert torch.autograd.gradcheck(fn, inputs)


def test_backward_is_deterministic():
    inputs = make_inputs(lead=(50,), k=300)
    dout = torch.randn(50, 16)
    first = run(chunked, inputs, dout, num_indicators=5, memory_budget_mb=0.05)
    second = run(chunked, inputs, dout, num_indicators=5, memory_budget_mb=0.05)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_padding_is_masked(monkeypatch):
    """Padded columns never leak: the result is the same for any padding, even with NaN-filled buffers."""
    monkeypatch.setattr(
        vet, "_empty_rows", lambda r, w, dt, dev: torch.full((r, w), float("nan"), dtype=dt, device=dev)
    )
    inputs = make_inputs(lead=(21,), k=100, n=3, dtype=torch.float64)
    dout = torch.randn(21, 16, dtype=torch.float64)
    results = []
    for pad_to in (1, 4, 16, 128, 256):  # 4: Hp = K, so p @ E runs over the padded width
        results.append(run(chunked, inputs, dout, num_indicators=3, pad_to=pad_to, memory_budget_mb=0.05))
    for other in results[1:]:
        for a, b in zip(other, results[0], strict=True):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tokenize", ["st_argmax", "gumbel_argmax"])
def test_hard_forward_is_a_table_row(tokenize):
    x, w, g, b, table = make_inputs(k=300, n=5)
    kw = dict(num_indicators=5, tokenize=tokenize)
    probs = reference_probs(x, w, g, b, generator=torch.Generator().manual_seed(2), **kw)
    out = chunked(x, w, g, b, table, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(out, table[probs.argmax(dim=-1)])


def test_gumbel_noise_does_not_depend_on_chunking():
    inputs = make_inputs(lead=(150,), k=90)
    outs = [
        chunked(
            *inputs,
            num_indicators=5,
            tokenize="gumbel_argmax",
            generator=torch.Generator().manual_seed(7),
            memory_budget_mb=budget,
        )
        for budget in (0.01, 0.3, 64)
    ]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    a, b = (
        vet.gumbel_noise(5, 10, 140, 9, torch.device("cpu")),
        vet.gumbel_noise(5, 0, 150, 9, torch.device("cpu")),
    )
    assert torch.equal(a, b[10:140])


@pytest.mark.parametrize("frozen", [("head", "gamma", "beta"), ("table",), ("x", "table")])
def test_partial_requires_grad(frozen):
    inputs = make_inputs(lead=(19,))
    for name, t in zip(PARAMS, inputs, strict=True):
        t.requires_grad_(name not in frozen)
    dout = torch.randn(19, 16)
    live = [t for t in inputs if t.requires_grad]
    ref = torch.autograd.grad(reference_vet(*inputs, num_indicators=5), live, dout)
    ours = torch.autograd.grad(chunked(*inputs, num_indicators=5, memory_budget_mb=SMALL_BUDGET), live, dout)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_saves_only_inputs_and_row_statistics():
    inputs = make_inputs(lead=(40,), k=260)
    own = {t.untyped_storage().data_ptr() for t in inputs}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked(*inputs, num_indicators=5)
    assert sum(saved.values()) <= 40 * 3 * 4  # LN mean, 1/std, log-sum-exp per token


def test_auto_selects_chunked_and_falls_back_with_a_logged_reason(caplog):
    inputs = make_inputs(lead=(9,))
    out = vet_embed(*inputs, num_indicators=5)
    assert "ChunkedVet" in type(out.grad_fn).__name__
    x, w, g, b, table = (t.detach() for t in inputs)
    with caplog.at_level(logging.INFO, logger="openovis.ops.vet"):
        vet._logged.clear()
        for _ in range(2):
            batched = torch.func.vmap(lambda xi: vet_embed(xi, w, g, b, table, num_indicators=5))(x)
    torch.testing.assert_close(batched, reference_vet(x, w, g, b, table, num_indicators=5))
    assert sum("uses the reference" in r.message for r in caplog.records) == 1
    forced = vet_embed(*inputs, num_indicators=5, impl="reference")
    assert "ChunkedVet" not in type(forced.grad_fn).__name__


def test_meta_tensors_use_the_reference():
    x, w, g, b, table = make_inputs(lead=(2, 5), device="meta")
    assert vet_embed(x, w, g, b, table, num_indicators=5).shape == (2, 5, 16)


def test_invalid_arguments_raise():
    inputs = make_inputs()
    with pytest.raises(ValueError, match="tokenize"):
        vet_embed(*inputs, num_indicators=5, tokenize="argmax")
    with pytest.raises(ValueError, match="impl"):
        vet_embed(*inputs, num_indicators=5, impl="fast")
    with pytest.raises(ValueError, match="shapes"):
        vet_embed(*inputs, num_indicators=4)
    with pytest.raises(ValueError, match="triton"):
        vet_embed(*inputs, num_indicators=5, row_kernels="triton")


def test_empty_input():
    x, w, g, b, table = make_inputs()
    out = vet_embed(x[:0], w, g, b, table, num_indicators=5)
    assert out.shape == (0, 16)


def test_cpu_autocast_runs_gemms_in_bf16():
    inputs = make_inputs(lead=(12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = vet_embed(*inputs, num_indicators=5)
        ref = reference_vet(*inputs, num_indicators=5)
    assert ours.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(ours.float(), ref.float(), rtol=3e-2, atol=3e-2)
    ours.float().sum().backward()
    assert inputs[1].grad.dtype == torch.float32


def test_topk_is_exact_at_full_width_and_close_for_peaked_rows():
    x, w, g, b, table = (t.detach() for t in make_inputs(k=70, n=5))
    exact = reference_vet(x, w, g, b, table, num_indicators=5, temperature=0.3)
    full = vet_embed_topk(x, w, g, b, table, num_indicators=5, k=65, temperature=0.3)
    torch.testing.assert_close(full, exact, rtol=1e-5, atol=1e-5)
    approx = vet_embed_topk(x, w, g, b, table, num_indicators=5, k=16, temperature=0.3)
    assert rel_err(approx, exact) < 0.05


# ---- CUDA (Triton row kernels) -------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("tokenize", TOKENIZE)
@pytest.mark.parametrize("row_kernels", ["auto", "torch"])
def test_cuda_fp32_matches_reference(tokenize, row_kernels):
    torch.backends.cuda.matmul.allow_tf32 = False
    inputs = make_inputs(lead=(300,), f=64, k=5000, n=5, d=48, device="cuda")
    dout = torch.randn(300, 48, device="cuda")
    kw = dict(num_indicators=5, tokenize=tokenize, temperature=0.7)
    gen = lambda: torch.Generator("cuda").manual_seed(3)  # noqa: E731
    ref = run(reference_vet, inputs, dout, generator=gen(), **kw)
    ours = run(chunked, inputs, dout, generator=gen(), memory_budget_mb=1.0, row_kernels=row_kernels, **kw)
    for name, a, b in zip(["out", *PARAMS], ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("k,n", [(65536, 5), (131072, 2)])
def test_cuda_bf16_wide_rows_within_reference_noise(k, n):
    inputs = make_inputs(lead=(256,), f=128, k=k, n=n, d=64, device="cuda")
    dout = torch.randn(256, 64, device="cuda")
    exact = run(
        reference_vet, [t.detach().double().requires_grad_() for t in inputs], dout.double(), num_indicators=n
    )
    low = [t.detach().bfloat16().requires_grad_() for t in inputs]
    ref = run(reference_vet, low, dout.bfloat16(), num_indicators=n)
    ours = run(chunked, low, dout.bfloat16(), num_indicators=n, memory_budget_mb=16)
    again = run(chunked, low, dout.bfloat16(), num_indicators=n, memory_budget_mb=16)
    for name, o, r, e, o2 in zip(["out", *PARAMS], ours, ref, exact, again, strict=True):
        assert torch.equal(o, o2), f"{name}: not deterministic"
        err_ours, err_ref = rel_err(o, e), rel_err(r, e)
        assert err_ours <= 2.0 * err_ref + 1e-3, f"{name}: ours {err_ours:.2e} vs reference {err_ref:.2e}"


@pytest.mark.gpu
@cuda
def test_cuda_fp32_accumulating_gemm():
    acc = torch.randn(300, 70, device="cuda")
    a, b = torch.randn(300, 50, device="cuda").bfloat16(), torch.randn(50, 70, device="cuda").bfloat16()
    expected = acc + a.float() @ b.float()
    vet._addmm_acc(acc, a, b)
    torch.testing.assert_close(acc, expected, rtol=1e-5, atol=1e-4)
