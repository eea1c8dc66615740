"""The reference VET, every step materialized: ``pad(tokenize(LN(x Wᵀ) / τ), n) @ E`` (DESIGN §1).

The one definition of the tokenize maths: the model's ``vet_impl="reference"`` path runs
`reference_vet`, and the chunked op in `openovis.ops.vet` draws the same Gumbel noise
(`gumbel_noise`) and is tested against it. Notation as in `openovis.ops.vet`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from openovis.options import TokenizeFunction, check_choice

#: Rows per Gumbel noise block: noise for rows [i·R, (i+1)·R) comes from its own seeded generator.
NOISE_BLOCK_ROWS = 64


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 inputs, fp64 for fp64 inputs (so gradcheck sees an fp64 function)."""
    return torch.promote_types(dtype, torch.float32)


# ---- Gumbel noise ---------------------------------------------------------------------------------


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 62-bit seed for `gumbel_noise`, drawn from ``generator`` (default: torch's global CPU RNG)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(0, 2**62, (), generator=generator, device=device))


def gumbel_noise(seed: int, start: int, stop: int, width: int, device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise ``-log(Exp(1))`` for token rows ``[start, stop)``: ``[stop - start, width]`` fp32.

    Row block ``b`` (``NOISE_BLOCK_ROWS`` rows) comes from a generator seeded with ``seed + b``, so the
    noise of a row depends only on (seed, row): the reference draws all rows at once, the chunked op
    draws each chunk's rows in the forward and draws them again in the backward, and all agree.
    """
    first, last = start // NOISE_BLOCK_ROWS, -(-stop // NOISE_BLOCK_ROWS)
    noise = torch.empty((last - first) * NOISE_BLOCK_ROWS, width, device=device)  # [blocks·R, width]
    for i, block in enumerate(range(first, last)):
        gen = torch.Generator(device=device)
        gen.manual_seed((seed + block) % 2**63)
        noise[i * NOISE_BLOCK_ROWS : (i + 1) * NOISE_BLOCK_ROWS].exponential_(generator=gen)
    offset = start - first * NOISE_BLOCK_ROWS
    return noise[offset : offset + stop - start].log_().neg_()  # [stop - start, width]


# ---- the reference ----------------------------------------------------------------------------------


def tokenize_logits(
    logits: torch.Tensor,
    function: TokenizeFunction,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Head logits ``[..., H]`` -> distributions over the H visual words ``[..., H]`` (module docstring).

    Computed in fp32 (fp64 for fp64 logits). ``gumbel_argmax`` draws its noise with `gumbel_noise`
    from a seed taken from ``generator`` (default: torch's global CPU RNG), row by row over the
    flattened leading dimensions, exactly as the chunked op does.
    """
    check_choice("tokenize", function, TokenizeFunction)
    h = logits.shape[-1]
    logits = logits.to(_compute_dtype(logits.dtype))  # [..., H]
    if function == "gumbel_argmax":
        rows = logits.numel() // h
        noise = gumbel_noise(draw_seed(generator), 0, rows, h, logits.device)  # [N, H]
        logits = logits + noise.to(logits.dtype).view_as(logits)
    soft = (logits / temperature).softmax(dim=-1)  # [..., H]
    if function == "softmax":
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return hard - soft.detach() + soft  # straight-through: forward hard, gradient of soft


def reference_probs(
    x: torch.Tensor,
    head_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    *,
    num_indicators: int,
    tokenize: TokenizeFunction = "softmax",
    temperature: float = 1.0,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Official visual-word distributions: Linear, LayerNorm, fp32 tokenize, n zero indicator columns.

    Args:
        x: Features ``[..., F]``.
        head_weight: ``[K - n, F]``, the bias-free head Linear's weight.
        ln_weight, ln_bias: LayerNorm γ, β ``[K - n]``.
        num_indicators: n.
        tokenize: See the module docstring.
        temperature: τ; the LayerNorm output is divided by it before the softmax.
        eps: LayerNorm epsilon.
        generator: Source of the Gumbel seed (``gumbel_argmax`` only).

    Returns:
        ``[..., K]`` probabilities in fp32 (fp64 for fp64 inputs); the last n columns are zero.
    """
    h = head_weight.shape[0]
    logits = F.layer_norm(F.linear(x, head_weight), (h,), ln_weight, ln_bias, eps)  # [..., H]
    probs = tokenize_logits(logits, tokenize, temperature, generator)  # [..., H]
    return F.pad(probs, (0, num_indicators))  # [..., K]


def reference_vet(
    x: torch.Tensor,
    head_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    table: torch.Tensor,
    *,
    num_indicators: int,
    tokenize: TokenizeFunction = "softmax",
    temperature: float = 1.0,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Official visual embeddings: `reference_probs` cast to the table's dtype, ``@ table`` -> ``[..., D]``."""
    probs = reference_probs(
        x,
        head_weight,
        ln_weight,
        ln_bias,
        num_indicators=num_indicators,
        tokenize=tokenize,
        temperature=temperature,
        eps=eps,
        generator=generator,
    )  # [..., K]
    return probs.to(table.dtype) @ table  # [..., K] @ [K, D] -> [..., D]
