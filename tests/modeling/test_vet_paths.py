"""The model's VET runs `openovis.ops.vet`: one definition of the tokenize maths, Gumbel noise included.

With a fixed seed, ``vet_impl="reference"`` equals `reference_vet` (and `probabilities` equals
`reference_probs`) bit for bit under all three tokenize functions; the fused op (``chunked``, and
``auto`` on CPU) draws the same noise from the same seed, so it gives the same one-hot rows, and the
same softmax up to rounding, with the same gradients, and repeats itself exactly.
"""

from __future__ import annotations

import pytest
import torch

from openovis import build_model
from openovis.ops.vet import reference_probs, reference_vet

TOKENIZE = ["softmax", "st_argmax", "gumbel_argmax"]
SEED = 7


def vet_inputs(model, pixels: torch.Tensor):
    """Merged features ``[C, T, F]`` and the VET connector's tensors, as `reference_vet` takes them."""
    features = model.visual_tokenizer.features(pixels).detach().requires_grad_()
    linear, norm = model.connector.head
    return features, linear.weight, norm.weight, norm.bias, model.connector.vte.weight


def reference_kwargs(model) -> dict:
    cfg = model.config
    return {
        "num_indicators": cfg.num_indicators,
        "tokenize": cfg.tokenize_function,
        "temperature": cfg.tokenize_temperature,
        "eps": model.connector.head[1].eps,
    }


def seeded(fn, *args, **kwargs):
    torch.manual_seed(SEED)
    return fn(*args, **kwargs)


def forward_backward(fn, inputs, dout):
    """``fn(features)``'s output and the gradients of the features and the VET's parameters."""
    for t in inputs:
        t.grad = None
    torch.manual_seed(SEED)
    out = fn(inputs[0])
    out.backward(dout)
    return [out.detach()] + [t.grad.clone() for t in inputs]


@pytest.mark.parametrize("tokenize", TOKENIZE)
def test_reference_path_is_reference_vet_exactly(tokenize):
    model = build_model("tiny", vet_impl="reference", tokenize_function=tokenize, tokenize_temperature=0.7)
    x, w, g, b, table = vet_inputs(model, torch.randn(3, 3, 64, 64))
    kw = reference_kwargs(model)
    got, want = seeded(model.connector, x), seeded(reference_vet, x, w, g, b, table, **kw)
    assert torch.equal(got, want)
    assert torch.equal(seeded(model.connector.probabilities, x), seeded(reference_probs, x, w, g, b, **kw))
    dout = torch.randn_like(want)
    ours = forward_backward(model.connector, [x, w, g, b, table], dout)
    ref = forward_backward(lambda f: reference_vet(f, w, g, b, table, **kw), [x, w, g, b, table], dout)
    for a, r in zip(ours, ref, strict=True):
        assert torch.equal(a, r)
    if tokenize == "gumbel_argmax":  # the noise is really drawn: another seed, other words
        torch.manual_seed(SEED + 1)
        assert not torch.equal(model.connector.probabilities(x), seeded(model.connector.probabilities, x))


@pytest.mark.parametrize("impl", ["chunked", "auto"])
@pytest.mark.parametrize("tokenize", TOKENIZE)
def test_fused_path_matches_the_reference_and_repeats_exactly(tokenize, impl):
    model = build_model("tiny", vet_impl=impl, tokenize_function=tokenize, tokenize_temperature=0.7)
    inputs = vet_inputs(model, torch.randn(3, 3, 64, 64))
    x, w, g, b, table = inputs
    kw = reference_kwargs(model)
    out = seeded(model.connector, x)
    assert "ChunkedVet" in type(out.grad_fn.next_functions[0][0]).__name__  # [N, D] viewed as [C, T, D]
    want = seeded(reference_vet, x, w, g, b, table, **kw)
    if tokenize == "softmax":
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    else:  # the same one-hot word per token: E[argmax] exactly
        assert torch.equal(out, want)
    dout = torch.randn_like(want)
    first = forward_backward(model.connector, inputs, dout)
    again = forward_backward(model.connector, inputs, dout)
    ref = forward_backward(lambda f: reference_vet(f, w, g, b, table, **kw), inputs, dout)
    for name, a, a2, r in zip(["out", "x", "head", "gamma", "beta", "vte"], first, again, ref, strict=True):
        assert torch.equal(a, a2), f"{name}: not deterministic"
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
