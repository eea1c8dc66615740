"""The visual embedding as one memory-efficient op: ``pad(tokenize(LN(x Wᵀ) / τ), n) @ E``.

Notation: N visual tokens (leading dims flattened), F = d·s² feature width, K visual vocabulary size,
n indicator rows, H = K − n head width, Hp = H rounded up to ``pad_to`` (the width of the op's
buffers), D LLM width, c rows per chunk.

    x [N, F] ── x Wᵀ ──> z [N, H] ── LayerNorm(γ, β, eps) ──> y [N, H] ── /τ, softmax (fp32) ──> p [N, H]
    p ── pad n zero columns ──> [N, K] ── @ E [K, D] ──> out [N, D]      (= p @ E[:H]: indicators are 0)

`reference_vet` is the official formulation (DESIGN §1): every step materialized over [N, K] and saved
for backward by autograd. `vet_embed` runs `_ChunkedVet`, which processes c tokens at a time and saves
only x and four numbers per token (LN mean and 1/std, the softmax's log-sum-exp, the argmax), then
recomputes a chunk's logits in the backward (DESIGN §7). Its memory is O(N·(F + D)) plus one chunk's
buffers, plus fp32 accumulators for the parameter gradients; see docs/vet-op.md.

Tokenize functions (τ = temperature), `tokenize_logits` (the model's ``vet_impl="reference"`` path runs
`reference_vet`, so this module is the one definition of the maths):
    softmax        p = softmax(y / τ)
    st_argmax      forward one-hot(argmax y) (so out = E[argmax]), backward the gradient of softmax(y / τ)
    gumbel_argmax  forward one-hot(argmax (y + g)), backward the gradient of softmax((y + g) / τ),
                   g ~ Gumbel(0, 1) drawn by `gumbel_noise` (as torch's ``F.gumbel_softmax(hard=True)``,
                   and as the official code, τ divides the noisy logits)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import torch
import torch.nn.functional as F

from openovis.ops.vet_reference import (  # noqa: F401 (re-exported: the op's public reference)
    NOISE_BLOCK_ROWS,
    _compute_dtype,
    draw_seed,
    gumbel_noise,
    reference_probs,
    reference_vet,
    tokenize_logits,
)
from openovis.options import RowKernels, TokenizeFunction, VetImpl, check_choice

logger = logging.getLogger(__name__)

#: Default per-chunk working-set budget of the chunked op, in MiB.
DEFAULT_BUDGET_MB = {"cuda": 256.0, "cpu": 64.0}

_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.info(message)


# ---- row ops in torch (CPU, and CUDA without Triton) ----------------------------------------------


def _empty_rows(rows: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A chunk buffer ``[rows, width]``; uninitialized, since every read column is written first."""
    return torch.empty(rows, width, dtype=dtype, device=device)


def torch_forward_rows(
    z: torch.Tensor,
    h: int,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float,
    inv_tau: float,
    p_out: torch.Tensor | None,
    want_argmax: bool,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """LayerNorm + softmax over the first h columns of a chunk of logits.

    Args:
        z: ``[c, Hp]`` logits; columns ``h:`` are padding and are never read.
        gamma, beta: ``[h]`` in the compute dtype.
        p_out: ``[c, Hp]`` buffer for the probabilities (may be ``z``), padding set to 0; None: skip.
        noise: ``[c, h]`` Gumbel noise added to the LayerNorm output.

    Returns:
        Per-row LN mean, 1/std, log-sum-exp of the softmax input, and its argmax (or None), each ``[c]``.
    """
    y, mean, rstd = torch.native_layer_norm(z[:, :h].to(gamma.dtype), [h], gamma, beta, eps)  # [c, h]
    if noise is not None:
        y.add_(noise)
    y.mul_(inv_tau)
    lse = torch.logsumexp(y, dim=-1)  # [c]
    amax = y.argmax(dim=-1) if want_argmax else None
    if p_out is not None:
        p_out[:, :h].copy_(y.sub_(lse[:, None]).exp_())  # [c, h] softmax
        p_out[:, h:].zero_()
    return mean.view(-1), rstd.view(-1), lse, amax


def torch_backward_rows(
    z: torch.Tensor,
    dp: torch.Tensor,
    h: int,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    lse: torch.Tensor,
    inv_tau: float,
    amax: torch.Tensor | None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax + LayerNorm backward on a chunk, in place.

    Args:
        z: ``[c, Hp]`` recomputed logits; overwritten with dL/dz (padding 0).
        dp: ``[c, Hp]`` dL/dp = dout @ Eᵀ; overwritten with the probabilities the forward multiplied
            by E (the softmax, or the one-hot of ``amax``), for dE = pᵀ dout.
        mean, rstd, lse: ``[c]`` statistics saved by the forward.

    Returns:
        This chunk's dγ and dβ ``[h]`` in the compute dtype.
    """
    cdt = gamma.dtype
    zhat = torch.sub(z[:, :h].to(cdt), mean[:, None]).mul_(rstd[:, None])  # [c, h]
    p = torch.addcmul(beta, zhat, gamma)  # [c, h] LayerNorm output y
    if noise is not None:
        p.add_(noise)
    p.mul_(inv_tau).sub_(lse[:, None]).exp_()  # [c, h] softmax, bit-equal to the forward's
    dy = dp[:, :h].to(cdt, copy=True)  # [c, h] dL/dp
    s = torch.einsum("ij,ij->i", p, dy)  # [c] Σ_k p dp
    dy.sub_(s[:, None]).mul_(p).mul_(inv_tau)  # [c, h] dL/dy (y = LayerNorm output)
    if amax is None:
        dp[:, :h].copy_(p)
    else:
        dp[:, :h].zero_().scatter_(1, amax[:, None], 1.0)
    dp[:, h:].zero_()
    dgamma = torch.mul(dy, zhat, out=p).sum(dim=0)  # [h]
    dbeta = dy.sum(dim=0)  # [h]
    dzhat = dy.mul_(gamma)  # [c, h]
    a = dzhat.mean(dim=-1, keepdim=True)  # [c, 1]
    b = torch.mul(dzhat, zhat, out=p).mean(dim=-1, keepdim=True)  # [c, 1]
    dz = dzhat.sub_(a).sub_(zhat.mul_(b)).mul_(rstd[:, None])  # [c, h] dL/dz
    z[:, :h].copy_(dz)
    z[:, h:].zero_()
    return dgamma, dbeta


# ---- the chunked autograd Function ----------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """Everything the chunked op needs besides tensors (shapes are read from the tensors)."""

    num_indicators: int
    hard: bool  # st_argmax / gumbel_argmax: the forward multiplies E by a one-hot
    inv_tau: float
    eps: float
    chunk_rows: int
    width: int  # Hp, the buffers' row length
    seed: int | None  # gumbel_argmax only
    triton: ModuleType | None  # openovis.ops.vet_triton when its row kernels run, else None


class _Rows:
    """Dispatches a chunk's row ops to the Triton kernels or to torch (Gumbel noise: torch only)."""

    def __init__(self, spec: _Spec, h: int, device: torch.device):
        self.spec, self.h, self.device = spec, h, device

    def noise(self, r0: int, r1: int) -> torch.Tensor | None:
        if self.spec.seed is None:
            return None
        return gumbel_noise(self.spec.seed, r0, r1, self.h, self.device)  # [c, h]

    def forward(self, z, gamma, beta, p_out, r0, r1):
        s = self.spec
        if s.triton is not None:
            return s.triton.forward_rows(z, self.h, gamma, beta, s.eps, s.inv_tau, p_out, s.hard)
        noise = self.noise(r0, r1)
        return torch_forward_rows(z, self.h, gamma, beta, s.eps, s.inv_tau, p_out, s.hard, noise)

    def backward(self, z, dp, gamma, beta, mean, rstd, lse, amax, r0, r1):
        s = self.spec
        if s.triton is not None:
            return s.triton.backward_rows(z, dp, self.h, gamma, beta, mean, rstd, lse, s.inv_tau, amax)
        noise = self.noise(r0, r1)
        return torch_backward_rows(z, dp, self.h, gamma, beta, mean, rstd, lse, s.inv_tau, amax, noise)


def _padded_weight(weight: torch.Tensor, width: int) -> torch.Tensor:
    """W with zero rows appended up to ``width`` ``[Hp, F]``; their logits come out exactly 0.

    A copy of W per call that lets every GEMM of the op run at an aligned width: DESIGN §7 reports
    cuBLAS at 100-280 TFLOP/s for the official odd widths (65531) against ~790 at aligned ones
    (`benchmarks/vet_op.py --probe` measures it on the machine at hand). Nothing is copied if H = Hp.
    """
    if weight.shape[0] == width:
        return weight
    return F.pad(weight, (0, 0, 0, width - weight.shape[0]))


def _table_width(h: int, width: int, k: int) -> int:
    """Columns of p that multiply E: Hp while the padding fits in E's (indicator) rows, else H.

    The padded columns of p are exactly 0, so they add nothing to ``p @ E`` or to dE's indicator rows.
    """
    return width if width <= k else h


_addmm_dtype_ok = True


def _addmm_acc(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` with acc in fp32 and a, b possibly bf16/fp16, never materializing ``a @ b``
    at full size: cuBLAS's fp32-output GEMM on CUDA, else row blocks of at most 64 MiB."""
    global _addmm_dtype_ok
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
        return
    if acc.is_cuda and _addmm_dtype_ok:
        try:
            torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
            return
        except (RuntimeError, TypeError) as err:  # older torch: no fp32-output GEMM
            _addmm_dtype_ok = False
            _log_once(f"vet: fp32-output GEMM unavailable ({err}); accumulating in row blocks")
    step = max(1, (64 << 20) // (b.shape[1] * a.element_size()))
    for i in range(0, a.shape[0], step):
        acc[i : i + step].add_(a[i : i + step] @ b)


class _ChunkedVet(torch.autograd.Function):
    """``[N, F] -> [N, D]``; saves x and per-row statistics, recomputes each chunk's logits in backward.

    Per chunk of c rows, with Wp = W padded to Hp rows and We = `_table_width` columns of p:
        forward   z = x Wpᵀ [c, Hp] -> row stats, p (in place of z) -> out = p[:, :We] @ E[:We]
        backward  z = x Wpᵀ, dp = dout E[:We]ᵀ -> row kernels: z := dL/dz, dp := p
                  dx = dz Wp,  dW += dzᵀ x (fp32),  dE[:We] += pᵀ dout (fp32),  dγ, dβ += column sums
    """

    @staticmethod
    def forward(ctx, x, weight, ln_weight, ln_bias, table, spec: _Spec):
        n, h, d = x.shape[0], weight.shape[0], table.shape[1]
        we = _table_width(h, spec.width, table.shape[0])
        cdt = _compute_dtype(weight.dtype)
        gamma, beta = ln_weight.to(cdt).contiguous(), ln_bias.to(cdt).contiguous()
        rows_op = _Rows(spec, h, x.device)
        stats = torch.empty(3, n, dtype=cdt, device=x.device)  # LN mean, LN 1/std, log-sum-exp
        amax = torch.empty(n, dtype=torch.long, device=x.device) if spec.hard else None
        out = torch.empty(n, d, dtype=table.dtype, device=x.device)
        rows = min(spec.chunk_rows, n)
        zbuf = _empty_rows(rows, spec.width, weight.dtype, x.device)
        pbuf = zbuf if table.dtype == weight.dtype else _empty_rows(rows, spec.width, table.dtype, x.device)
        w_pad = _padded_weight(weight, spec.width)  # [Hp, F]
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            z, p = zbuf[: r1 - r0], pbuf[: r1 - r0]
            torch.mm(x[r0:r1], w_pad.t(), out=z)  # [c, F] @ [F, Hp]
            mean, rstd, lse, idx = rows_op.forward(z, gamma, beta, None if spec.hard else p, r0, r1)
            stats[0, r0:r1], stats[1, r0:r1], stats[2, r0:r1] = mean, rstd, lse
            if spec.hard:
                amax[r0:r1] = idx
                torch.index_select(table, 0, idx, out=out[r0:r1])  # one-hot @ E = E[argmax]
            else:
                torch.mm(p[:, :we], table[:we], out=out[r0:r1])  # [c, We] @ [We, D] -> [c, D]
        ctx.save_for_backward(x, weight, ln_weight, ln_bias, table, stats, amax)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, ln_weight, ln_bias, table, stats, amax = ctx.saved_tensors
        spec: _Spec = ctx.spec
        need_x, need_w, need_g, need_b, need_e = ctx.needs_input_grad[:5]
        n, h = x.shape[0], weight.shape[0]
        we = _table_width(h, spec.width, table.shape[0])
        cdt = _compute_dtype(weight.dtype)
        gamma, beta = ln_weight.to(cdt).contiguous(), ln_bias.to(cdt).contiguous()
        dout = dout.contiguous()
        rows_op = _Rows(spec, h, x.device)
        need_rows = need_x or need_w or need_g or need_b
        dx = torch.empty_like(x) if need_x else None
        dw = torch.zeros(spec.width, x.shape[1], dtype=cdt, device=x.device) if need_w else None  # [Hp, F]
        dg = torch.zeros(h, dtype=cdt, device=x.device)
        db = torch.zeros(h, dtype=cdt, device=x.device)
        de = torch.zeros(table.shape, dtype=_compute_dtype(table.dtype), device=x.device) if need_e else None
        rows = min(spec.chunk_rows, n)
        zbuf = _empty_rows(rows, spec.width, weight.dtype, x.device)
        pbuf = _empty_rows(rows, spec.width, table.dtype, x.device)
        w_pad = _padded_weight(weight, spec.width)  # [Hp, F]
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            z, p = zbuf[: r1 - r0], pbuf[: r1 - r0]
            mean, rstd, lse = stats[0, r0:r1], stats[1, r0:r1], stats[2, r0:r1]
            idx = amax[r0:r1] if spec.hard else None
            if need_rows or not spec.hard:
                torch.mm(x[r0:r1], w_pad.t(), out=z)  # [c, F] @ [F, Hp]
            if need_rows:
                torch.mm(dout[r0:r1], table[:we].t(), out=p[:, :we])  # [c, D] @ [D, We]: dL/dp
                g_c, b_c = rows_op.backward(z, p, gamma, beta, mean, rstd, lse, idx, r0, r1)
                dg += g_c
                db += b_c
                if need_x:
                    torch.mm(z, w_pad, out=dx[r0:r1])  # [c, Hp] @ [Hp, F]
                if need_w:
                    _addmm_acc(dw, z.t(), x[r0:r1])  # [Hp, c] @ [c, F]
            elif spec.hard:
                p.zero_().scatter_(1, idx[:, None], 1.0)
            else:
                rows_op.forward(z, gamma, beta, p, r0, r1)
            if need_e:
                _addmm_acc(de[:we], p[:, :we].t(), dout[r0:r1])  # [We, c] @ [c, D]
        del zbuf, pbuf, w_pad
        return (
            dx,
            dw[:h].to(weight.dtype) if need_w else None,
            dg.to(ln_weight.dtype) if need_g else None,
            db.to(ln_bias.dtype) if need_b else None,
            de.to(table.dtype) if need_e else None,
            None,
        )


# ---- public entry points --------------------------------------------------------------------------


def padded_width(h: int, pad_to: int) -> int:
    """H rounded up to a multiple of ``pad_to`` (cuBLAS runs odd widths such as 65531 several times slower)."""
    return h if pad_to <= 1 else -(-h // pad_to) * pad_to


def chunk_rows(
    n: int, width: int, dtype: torch.dtype, device: torch.device, triton: bool, budget_mb: float | None
) -> int:
    """Rows per chunk so that one chunk's buffers take about ``budget_mb`` MiB.

    Bytes per element of a chunk: two ``dtype`` buffers (logits and dL/dp) with the Triton row kernels;
    with torch row ops also about three fp32 temporaries. Chunks are then evened out over N.
    """
    budget = budget_mb if budget_mb is not None else DEFAULT_BUDGET_MB.get(device.type, 64.0)
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_element = 2 * itemsize + (0 if triton else 3 * _compute_dtype(dtype).itemsize)
    rows = max(1, int(budget * 2**20) // (width * per_element))
    chunks = max(1, math.ceil(n / rows))
    return max(1, math.ceil(n / chunks))


@cache
def _triton_module() -> ModuleType | None:
    try:
        from openovis.ops import vet_triton
    except ImportError as err:
        _log_once(f"vet: Triton row kernels unavailable ({err}); using torch row ops")
        return None
    return vet_triton


def _select_impl(impl: VetImpl, x: torch.Tensor) -> str:
    """``impl`` unless ``auto``; ``auto`` takes the chunked op wherever it applies, logging why not."""
    if impl != "auto":
        return impl
    reason = None
    if x.device.type == "meta":
        reason = "meta tensors"
    elif torch._C._functorch.is_functorch_wrapped_tensor(x):
        reason = "a torch.func transform (the chunked op has no vmap/jvp rule)"
    elif torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        reason = "tracing/export (the chunk loop would be frozen into the graph for one N)"
    if reason is None:
        return "chunked"
    _log_once(f"vet: impl='auto' uses the reference: {reason}")
    return "reference"


def _row_kernels(choice: RowKernels, device: torch.device, tokenize: TokenizeFunction) -> ModuleType | None:
    if choice == "torch" or device.type != "cuda":
        if choice == "triton":
            raise ValueError("row_kernels='triton' needs CUDA tensors")
        return None
    if tokenize == "gumbel_argmax":
        if choice == "triton":
            raise ValueError("row_kernels='triton' does not draw Gumbel noise; use 'auto' or 'torch'")
        _log_once("vet: gumbel_argmax runs torch row ops (the Triton kernels draw no noise)")
        return None
    module = _triton_module()
    if module is None and choice == "triton":
        raise ValueError("row_kernels='triton': triton is not importable")
    return module


def vet_embed(
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
    impl: VetImpl = "auto",
    memory_budget_mb: float | None = None,
    generator: torch.Generator | None = None,
    pad_to: int = 128,
    row_kernels: RowKernels = "auto",
) -> torch.Tensor:
    """Visual embeddings ``pad(tokenize(LN(x Wᵀ) / τ), n) @ E``, by default with the chunked op.

    Args:
        x: Features ``[..., F]``.
        head_weight: ``[K - n, F]`` head Linear weight (official shape; any padding is internal).
        ln_weight, ln_bias: LayerNorm γ, β ``[K - n]``.
        table: The VET ``[K, D]``.
        num_indicators: n, the trailing VET rows that visual tokens never mix.
        tokenize: ``softmax`` | ``st_argmax`` | ``gumbel_argmax`` (module docstring).
        temperature: τ, dividing the LayerNorm output before the softmax.
        eps: LayerNorm epsilon.
        impl: ``reference`` (`reference_vet`), ``chunked`` (`_ChunkedVet`), or ``auto`` (chunked wherever
            it applies: not under torch.func transforms, tracing or on meta tensors).
        memory_budget_mb: Working set of one chunk in MiB (default ``DEFAULT_BUDGET_MB`` per device).
        generator: Source of the Gumbel seed; the noise is a function of (seed, token row), see
            `gumbel_noise`, so the backward regenerates it without storing it.
        pad_to: Round the head width up to a multiple of this inside the op (1: no padding).
        row_kernels: LayerNorm/softmax row ops: Triton kernels on CUDA when importable (``auto``) or torch.

    Returns:
        ``[..., D]`` in the table's dtype.
    """
    check_choice("impl", impl, VetImpl)
    check_choice("tokenize", tokenize, TokenizeFunction)
    check_choice("row_kernels", row_kernels, RowKernels)
    h, f = head_weight.shape
    if h + num_indicators != table.shape[0] or x.shape[-1] != f:
        raise ValueError(
            f"vet shapes: x {tuple(x.shape)}, head {tuple(head_weight.shape)}, table {tuple(table.shape)}, "
            f"n={num_indicators}: need x [..., F], head [K-n, F], table [K, D]"
        )
    kwargs = dict(num_indicators=num_indicators, tokenize=tokenize, temperature=temperature, eps=eps)
    if _select_impl(impl, x) == "reference":
        return reference_vet(x, head_weight, ln_weight, ln_bias, table, generator=generator, **kwargs)

    device = x.device
    if torch.is_autocast_enabled(device.type):  # the op's GEMMs run in the autocast dtype
        dtype = torch.get_autocast_dtype(device.type)
        x, head_weight, table = x.to(dtype), head_weight.to(dtype), table.to(dtype)
    x2 = x.reshape(-1, f).to(head_weight.dtype)  # [N, F]
    if x2.shape[0] == 0:
        return x2.new_zeros(*x.shape[:-1], table.shape[1], dtype=table.dtype)
    triton = _row_kernels(row_kernels, device, tokenize)
    width = padded_width(h, pad_to)
    spec = _Spec(
        num_indicators=num_indicators,
        hard=tokenize != "softmax",
        inv_tau=1.0 / temperature,
        eps=eps,
        chunk_rows=chunk_rows(
            x2.shape[0], width, head_weight.dtype, device, triton is not None, memory_budget_mb
        ),
        width=width,
        seed=draw_seed(generator) if tokenize == "gumbel_argmax" else None,
        triton=triton,
    )
    with torch.autocast(device.type, enabled=False):
        out = _ChunkedVet.apply(x2.contiguous(), head_weight, ln_weight, ln_bias, table, spec)  # [N, D]
    return out if x.dim() == 2 else out.reshape(*x.shape[:-1], table.shape[1])


@torch.no_grad()
def vet_embed_topk(
    x: torch.Tensor,
    head_weight: torch.Tensor,
    ln_weight: torch.Tensor,
    ln_bias: torch.Tensor,
    table: torch.Tensor,
    *,
    num_indicators: int,
    k: int,
    temperature: float = 1.0,
    eps: float = 1e-5,
    memory_budget_mb: float | None = None,
) -> torch.Tensor:
    """Opt-in, NON-exact inference: each token mixes only the E rows of its k largest logits.

    The softmax is taken over those k logits and ``embedding_bag`` sums k rows of E, so the second GEMM
    (N·H·D) becomes a gather (N·k·D). Exact when ``k = K - n``; for smaller k the error depends on how
    peaked the trained distributions are, so measure it on a trained model before using it (DESIGN §7).
    No gradients. Arguments as `vet_embed`; returns ``[..., D]``.
    """
    h, f = head_weight.shape
    if not 1 <= k <= h:
        raise ValueError(f"k: must be in [1, {h}], got {k}")
    if h + num_indicators != table.shape[0] or x.shape[-1] != f:
        raise ValueError(
            f"vet shapes: x {tuple(x.shape)}, head {tuple(head_weight.shape)}, table {tuple(table.shape)}"
        )
    x2 = x.reshape(-1, f).to(head_weight.dtype)  # [N, F]
    cdt = _compute_dtype(head_weight.dtype)
    gamma, beta = ln_weight.to(cdt), ln_bias.to(cdt)
    width = padded_width(h, 128)
    rows = chunk_rows(max(1, x2.shape[0]), width, head_weight.dtype, x.device, False, memory_budget_mb)
    out = torch.empty(x2.shape[0], table.shape[1], dtype=table.dtype, device=x.device)
    zbuf = _empty_rows(min(rows, x2.shape[0]), width, head_weight.dtype, x.device)
    w_pad = _padded_weight(head_weight, width)  # [Hp, F]
    for r0 in range(0, x2.shape[0], rows):
        r1 = min(r0 + rows, x2.shape[0])
        z = zbuf[: r1 - r0]
        torch.mm(x2[r0:r1], w_pad.t(), out=z)  # [c, F] @ [F, Hp]
        y = F.layer_norm(z[:, :h].to(cdt), (h,), gamma, beta, eps)  # [c, H]
        values, index = y.topk(k, dim=-1)  # [c, k]
        weights = (values / temperature).softmax(dim=-1)  # [c, k]
        out[r0:r1] = F.embedding_bag(index, table, per_sample_weights=weights.to(table.dtype), mode="sum")
    return out.reshape(*x.shape[:-1], table.shape[1])
