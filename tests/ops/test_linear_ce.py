"""The chunked linear + cross-entropy op against ``F.cross_entropy(h @ W.T)``: loss and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from openovis.ops.linear_ce import IGNORE_INDEX, liger_available, linear_cross_entropy


def make_inputs(n=53, d=24, v=301, ignore_frac=0.4, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g)
    weight = torch.randn(v, d, generator=g) / d**0.5
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < ignore_frac] = IGNORE_INDEX
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (hidden, weight)]
    return leaves[0], leaves[1], targets.to(device)


def expected(hidden, weight, targets, reduction="mean"):
    """The plain formula: full logits, fp32, ``F.cross_entropy``."""
    logits = (hidden @ weight.T).float()  # [N, V]
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction=reduction)


def loss_and_grads(fn, hidden, weight, targets, **kw):
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets, **kw)
    loss.backward()
    return loss.detach(), hidden.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("budget_mb", [0.01, 64.0])  # many chunks of 2 rows; one chunk
def test_matches_cross_entropy_fp32(reduction, budget_mb):
    hidden, weight, targets = make_inputs()
    want = loss_and_grads(expected, hidden, weight, targets, reduction=reduction)
    got = loss_and_grads(
        linear_cross_entropy,
        hidden,
        weight,
        targets,
        reduction=reduction,
        impl="chunked",
        memory_budget_mb=budget_mb,
    )
    for name, a, b in zip(["loss", "dh", "dW"], got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


def test_gradcheck_fp64():
    hidden, weight, targets = make_inputs(n=9, d=5, v=13, dtype=torch.float64)
    fn = lambda h, w: linear_cross_entropy(h, w, targets, impl="chunked", memory_budget_mb=1e-4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (hidden, weight))


def test_leading_dims_and_reference_impl():
    hidden, weight, targets = make_inputs(n=60)
    h3, t3 = hidden.detach().reshape(3, 20, -1).requires_grad_(), targets.reshape(3, 20)
    want = loss_and_grads(expected, hidden, weight, targets)
    for impl in ("chunked", "reference"):
        got = loss_and_grads(linear_cross_entropy, h3, weight, t3, impl=impl)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1].reshape(60, -1), want[1])
        torch.testing.assert_close(got[2], want[2])


def test_deterministic_and_no_targets():
    hidden, weight, targets = make_inputs()
    a = loss_and_grads(linear_cross_entropy, hidden, weight, targets, impl="chunked", memory_budget_mb=0.01)
    b = loss_and_grads(linear_cross_entropy, hidden, weight, targets, impl="chunked", memory_budget_mb=0.01)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    none = torch.full_like(targets, IGNORE_INDEX)
    loss, dh, dw = loss_and_grads(linear_cross_entropy, hidden, weight, none, impl="chunked")
    assert loss.item() == 0.0 and not dh.any() and not dw.any()


def test_bf16_within_reference_noise():
    hidden, weight, targets = make_inputs(n=200, d=64, v=2000, ignore_frac=0.2)
    exact = loss_and_grads(
        expected,
        hidden.detach().double().requires_grad_(),
        weight.detach().double().requires_grad_(),
        targets,
    )
    low = [hidden.detach().bfloat16().requires_grad_(), weight.detach().bfloat16().requires_grad_()]
    ref = loss_and_grads(expected, *low, targets)
    ours = loss_and_grads(linear_cross_entropy, *low, targets, impl="chunked", memory_budget_mb=0.5)
    for name, o, r, e in zip(["loss", "dh", "dW"], ours, ref, exact, strict=True):
        err_o = float((o.double() - e).norm() / e.norm())
        err_r = float((r.double() - e).norm() / e.norm())
        assert err_o <= 2.0 * err_r + 1e-3, f"{name}: ours {err_o:.2e} vs reference {err_r:.2e}"


def test_unknown_impl_and_liger_without_it():
    hidden, weight, targets = make_inputs()
    with pytest.raises(ValueError, match="loss impl"):
        linear_cross_entropy(hidden, weight, targets, impl="fast")
    if not liger_available(hidden.device):
        with pytest.raises(ValueError, match="liger"):
            linear_cross_entropy(hidden, weight, targets, impl="liger")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["chunked", "liger"])
def test_cuda_matches_cross_entropy(impl):
    if impl == "liger" and not liger_available(torch.device("cuda")):
        pytest.skip("liger-kernel not installed")
    torch.backends.cuda.matmul.allow_tf32 = False
    hidden, weight, targets = make_inputs(n=500, d=64, v=5003, device="cuda")
    want = loss_and_grads(expected, hidden, weight, targets)
    got = loss_and_grads(linear_cross_entropy, hidden, weight, targets, impl=impl, memory_budget_mb=1.0)
    for name, a, b in zip(["loss", "dh", "dW"], got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
