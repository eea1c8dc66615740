"""Linear + cross-entropy as one memory-efficient op: ``CE(h Wᵀ, y)`` without the ``[N, V]`` logits.

Notation: N tokens (leading dims flattened), D LLM width, V text vocabulary, c rows per chunk.

    h [N, D] ── h Wᵀ ──> z [N, V] ── fp32 ──> loss_i = logsumexp(z_i) − z_i[y_i]   (y_i ≠ ignore_index)

`reference_linear_cross_entropy` is what a transformers causal LM does (``lm_head`` over every
position, logits upcast to fp32, ``F.cross_entropy``): it materializes and saves ``[N, V]`` logits, in
the model dtype and again in fp32 (for Qwen2.5's V = 151936 and N = 3072 tokens: 1.9 GB in bf16 +
3.7 GB in fp32, and as much again for their gradient). `linear_cross_entropy` runs `_ChunkedLinearCE`,
on the pattern of `openovis.ops.vet`: rows whose target is ``ignore_index`` are dropped first (in
instruction tuning most positions are prompt or image tokens, and they need no logits at all), then
c rows at a time the forward computes the chunk's logits, their log-sum-exp and the target logit and
keeps only those two numbers per row; the backward recomputes each chunk's logits and forms
``dz = softmax(z) − onehot(y)`` in place. Memory: O(N·D) plus one chunk's ``[c, V]`` buffers plus an
fp32 accumulator for dW. Deterministic (no atomics; dW accumulates chunk by chunk in a fixed order).

On CUDA with Liger-Kernel installed, ``impl="liger"`` (or ``auto``) uses its fused linear
cross-entropy instead (one Triton kernel per chunk, gradients computed in the forward).
"""

from __future__ import annotations

import logging
import math
from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F

from openovis.constants import IGNORE_INDEX
from openovis.ops.vet import _addmm_acc
from openovis.ops.vet_reference import _compute_dtype
from openovis.options import LossImpl, check_choice

logger = logging.getLogger(__name__)

#: Default working-set budget of one chunk's logits, in MiB (fp32 logits + their model-dtype copy).
DEFAULT_BUDGET_MB = {"cuda": 512.0, "cpu": 64.0}


def reference_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    reduction: Literal["sum", "mean"] = "mean",
) -> torch.Tensor:
    """``F.cross_entropy((h Wᵀ).float(), y)`` as transformers' ``ForCausalLMLoss`` computes it.

    Args:
        hidden: ``[..., D]``.
        weight: ``[V, D]`` (the ``lm_head`` weight).
        targets: ``[...]`` token ids, ``ignore_index`` where no loss is taken (already shifted).
        reduction: ``sum`` or ``mean`` over the non-ignored targets.
    """
    logits = F.linear(hidden, weight).float()  # [..., V]
    return F.cross_entropy(
        logits.reshape(-1, weight.shape[0]),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction=reduction,
    )


def chunk_rows(n: int, vocab: int, device: torch.device, budget_mb: float | None) -> int:
    """Rows per chunk so that a chunk's ``[c, V]`` buffers (about 12 bytes per element) fit ``budget_mb``."""
    budget = budget_mb if budget_mb is not None else DEFAULT_BUDGET_MB.get(device.type, 64.0)
    rows = max(1, int(budget * 2**20) // (vocab * 12))
    chunks = max(1, math.ceil(n / rows))
    return max(1, math.ceil(n / chunks))  # even chunks


class _ChunkedLinearCE(torch.autograd.Function):
    """``h [N, D], W [V, D], y [N] -> Σ_i (lse_i − z_i[y_i])`` (a scalar sum; every y_i is a real target).

    Per chunk of c rows:
        forward   z = h Wᵀ [c, V] (fp32) -> lse [c], z[y] [c]
        backward  z = h Wᵀ -> dz = (exp(z − lse) − onehot(y)) · g -> dh = dz W, dW += dzᵀ h (fp32)
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, rows: int):
        n, cdt = hidden.shape[0], _compute_dtype(hidden.dtype)  # fp32 (fp64 for fp64 inputs)
        lse = torch.empty(n, dtype=cdt, device=hidden.device)
        target_logit = torch.empty(n, dtype=cdt, device=hidden.device)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            z = (hidden[r0:r1] @ weight.t()).to(cdt)  # [c, D] @ [D, V] -> [c, V]
            lse[r0:r1] = torch.logsumexp(z, dim=-1)
            target_logit[r0:r1] = z.gather(1, targets[r0:r1, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.rows = rows
        return (lse - target_logit).sum()

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        n, rows = hidden.shape[0], ctx.rows
        dh = torch.empty_like(hidden) if need_h else None
        cdt = lse.dtype
        dw = torch.zeros(weight.shape, dtype=cdt, device=weight.device) if need_w else None
        scale = grad.to(cdt)
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            z = (hidden[r0:r1] @ weight.t()).to(cdt)  # [c, V]
            dz = z.sub_(lse[r0:r1, None]).exp_()  # [c, V] softmax
            dz[torch.arange(r1 - r0, device=dz.device), targets[r0:r1]] -= 1.0  # − onehot(y)
            dz.mul_(scale)
            dz = dz.to(hidden.dtype)  # [c, V] dL/dz, in the GEMMs' dtype
            if need_h:
                torch.mm(dz, weight, out=dh[r0:r1])  # [c, V] @ [V, D]
            if need_w:
                _addmm_acc(dw, dz.t(), hidden[r0:r1])  # [V, c] @ [c, D], accumulated in fp32
        return dh, dw.to(weight.dtype) if need_w else None, None, None


@cache
def _liger_loss_class():
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss


def liger_available(device: torch.device) -> bool:
    """Whether Liger-Kernel's fused linear cross-entropy can run on ``device`` (CUDA, package installed)."""
    return device.type == "cuda" and _liger_loss_class() is not None


def _select_impl(impl: LossImpl, device: torch.device) -> str:
    check_choice("loss impl", impl, LossImpl)
    if impl == "auto":
        return "liger" if liger_available(device) else "chunked"
    if impl == "liger" and not liger_available(device):
        raise ValueError("loss impl 'liger': needs CUDA and `pip install liger-kernel`")
    return impl


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    reduction: Literal["sum", "mean"] = "mean",
    impl: LossImpl = "auto",
    memory_budget_mb: float | None = None,
) -> torch.Tensor:
    """``CE(h Wᵀ, y)`` without materializing the logits (except with ``impl="reference"``).

    Args:
        hidden: ``[..., D]`` final hidden states.
        weight: ``[V, D]`` output-embedding weight.
        targets: ``[...]`` target ids, already shifted; ``ignore_index`` where no loss is taken.
        ignore_index: Target id that takes no loss.
        reduction: ``sum`` or ``mean`` over the non-ignored targets (mean of none is 0, not NaN).
        impl: ``reference`` | ``chunked`` (`_ChunkedLinearCE`) | ``liger`` (CUDA, Liger-Kernel) |
            ``auto`` (liger where available, else chunked).
        memory_budget_mb: Working set of one chunk (chunked only; default ``DEFAULT_BUDGET_MB``).

    Returns:
        A scalar fp32 loss.
    """
    impl = _select_impl(impl, hidden.device)
    if impl == "reference":
        return reference_linear_cross_entropy(
            hidden, weight, targets, ignore_index=ignore_index, reduction=reduction
        )
    h = hidden.reshape(-1, hidden.shape[-1])  # [N, D]
    y = targets.reshape(-1).to(h.device)  # [N]
    keep = (y != ignore_index).nonzero().squeeze(1)  # [M] rows that take a loss
    h, y = h.index_select(0, keep), y.index_select(0, keep)  # [M, D], [M]
    if torch.is_autocast_enabled(h.device.type):  # the GEMMs run in the autocast dtype, as lm_head's would
        dtype = torch.get_autocast_dtype(h.device.type)
        h, weight = h.to(dtype), weight.to(dtype)
    elif h.dtype != weight.dtype:
        h = h.to(weight.dtype)
    if h.shape[0] == 0:
        total = (h.sum() + weight.sum()) * 0.0  # keeps the graph connected
    elif impl == "liger":
        loss_fn = _liger_loss_class()(ignore_index=ignore_index, reduction="sum")
        total = loss_fn(weight, h, y).float()
    else:
        rows = chunk_rows(h.shape[0], weight.shape[0], h.device, memory_budget_mb)
        with torch.autocast(h.device.type, enabled=False):
            total = _ChunkedLinearCE.apply(h.contiguous(), weight, y, rows)
    if reduction == "sum":
        return total
    return total / max(int(keep.numel()), 1)
