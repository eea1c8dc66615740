"""The Triton row kernels against the torch row ops, and the whole chunked op with them.

On a machine without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, in a
fresh process), so their arithmetic is checked wherever ``triton`` is installed
(``pip install -e .[triton]``); the compiled kernels are checked by the ``gpu`` tests of test_vet.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from openovis.ops import vet  # noqa: E402
from openovis.ops.vet import reference_vet  # noqa: E402

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() or INTERPRETED), reason="runs on CUDA, or in the interpreter (below)"
)


@pytest.mark.skipif(torch.cuda.is_available() or INTERPRETED, reason="the kernel tests run directly")
def test_kernels_in_the_triton_interpreter():
    """Runs this file's kernel tests in a fresh process with TRITON_INTERPRET=1 (read when triton is
    imported, which happened here already)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def rows_inputs(c: int, h: int, width: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = (2 * torch.randn(c, width, generator=g)).to(DEVICE, dtype)
    gamma = (1 + 0.2 * torch.randn(h, generator=g)).to(DEVICE)
    beta = (0.2 * torch.randn(h, generator=g)).to(DEVICE)
    return z, gamma, beta


@kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize(("h", "width"), [(300, 384), (4100, 4224)])  # 4100: two row blocks
def test_forward_rows_match_torch(dtype, hard, h, width):
    from openovis.ops import vet_triton

    z, gamma, beta = rows_inputs(5, h, width, dtype)
    p_torch = torch.full_like(z, float("nan"))
    p_triton = torch.full_like(z, float("nan"))
    ours = vet_triton.forward_rows(z.clone(), h, gamma, beta, 1e-5, 1 / 0.7, p_triton, hard)
    ref = vet.torch_forward_rows(z.clone(), h, gamma, beta, 1e-5, 1 / 0.7, p_torch, hard)
    for name, a, b in zip(("mean", "rstd", "lse"), ours[:3], ref[:3], strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-5, msg=name)
    if hard:
        assert torch.equal(ours[3], ref[3])
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    torch.testing.assert_close(p_triton.float(), p_torch.float(), rtol=tol, atol=tol)
    assert torch.equal(p_triton[:, h:], torch.zeros_like(p_triton[:, h:]))  # padding written as 0


@kernels
@pytest.mark.parametrize("hard", [False, True])
def test_backward_rows_match_torch(hard):
    from openovis.ops import vet_triton

    h, width, c = 300, 384, 37  # 37 rows: two row tiles, the second partial
    z, gamma, beta = rows_inputs(c, h, width, torch.float32, seed=1)
    mean, rstd, lse, amax = vet.torch_forward_rows(z.clone(), h, gamma, beta, 1e-5, 2.0, None, hard)
    dp = torch.randn(c, width, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    z_a, dp_a, z_b, dp_b = z.clone(), dp.clone(), z.clone(), dp.clone()
    ours = vet_triton.backward_rows(z_a, dp_a, h, gamma, beta, mean, rstd, lse, 2.0, amax)
    ref = vet.torch_backward_rows(z_b, dp_b, h, gamma, beta, mean, rstd, lse, 2.0, amax)
    torch.testing.assert_close(z_a, z_b, rtol=1e-5, atol=1e-6)  # dL/dz
    torch.testing.assert_close(dp_a, dp_b, rtol=1e-5, atol=1e-6)  # p (or the one-hot)
    for a, b in zip(ours, ref, strict=True):  # dγ, dβ
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@kernels
@pytest.mark.parametrize("tokenize", ["softmax", "st_argmax"])
def test_chunked_op_with_triton_rows_matches_the_reference(monkeypatch, tokenize):
    from openovis.ops import vet_triton

    monkeypatch.setattr(vet, "_row_kernels", lambda choice, device, tok: vet_triton)
    g = torch.Generator().manual_seed(3)
    h, n = 251, 5
    leaves = [
        torch.randn(40, 24, generator=g),
        torch.randn(h, 24, generator=g) / 24**0.5,
        1 + 0.2 * torch.randn(h, generator=g),
        0.2 * torch.randn(h, generator=g),
        torch.randn(h + n, 16, generator=g),
    ]
    dout = torch.randn(40, 16, generator=g).to(DEVICE)
    results = []
    for fn in (reference_vet, lambda *a, **k: vet.vet_embed(*a, impl="chunked", memory_budget_mb=0.05, **k)):
        inputs = [t.to(DEVICE).requires_grad_() for t in leaves]
        out = fn(*inputs, num_indicators=n, tokenize=tokenize, temperature=0.8)
        out.backward(dout)
        results.append([out.detach()] + [t.grad for t in inputs])
    for name, a, b in zip(("out", "x", "W", "gamma", "beta", "E"), results[1], results[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
