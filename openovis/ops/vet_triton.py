"""Triton row kernels for the chunked VET op (CUDA only; `openovis.ops.vet` imports this lazily).

A chunk is c tokens; its buffers are ``[c, Wd]`` with Wd ≥ H (the padded width); columns ``H:`` are
padding: never read, written as 0. All arithmetic is fp32; buffers are bf16/fp16/fp32.

    forward_rows   z [c, Wd] -> LN mean, 1/std, log-sum-exp of y/τ, argmax  [c]   (+ p [c, Wd], may alias z)
                   three passes over each row: block-merged mean/variance, online max/sum-exp, write p
    backward_rows  z [c, Wd] (recomputed logits), dp [c, Wd] = dout @ Eᵀ
                   -> z := dL/dz, dp := p (or the forward's one-hot), returns dγ, dβ [H]
                   a row kernel reduces the per-row sums s = Σ p·dp, Σ dẑ, Σ dẑ·ẑ in one pass, then a tile
                   kernel writes dL/dz and p and per-tile column sums for dγ, dβ (summed by torch, so no
                   atomics: the result is the same on every run)

Rows are looped over in blocks, so any width works (131072 included).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROW_BLOCK = 2048  # columns per step of the row kernels
ROW_WARPS = 8
TILE_M, TILE_N, TILE_WARPS = 32, 256, 8  # the backward tile kernel


@triton.jit
def _ln_stats(z_row, H, eps, cols, BLOCK: tl.constexpr):
    """Mean and 1/std over the first H entries, merging per-block mean/M2 (Chan et al.) for stability."""
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, H, BLOCK):
        k = start + cols
        mask = k < H
        z = tl.load(z_row + k, mask=mask, other=0.0).to(tl.float32)
        nb = tl.minimum(H - start, BLOCK).to(tl.float32)
        mb = tl.sum(z, axis=0) / nb
        dev = tl.where(mask, z - mb, 0.0)
        delta = mb - mean
        total = count + nb
        mean = mean + delta * (nb / total)
        m2 = m2 + tl.sum(dev * dev, axis=0) + delta * delta * (count * nb / total)
        count = total
    return mean, 1.0 / tl.sqrt_rn(m2 / H + eps)


@triton.jit
def _fwd_rows_kernel(
    z_ptr, p_ptr, g_ptr, b_ptr, mean_ptr, rstd_ptr, lse_ptr, amax_ptr,
    H, Wd, stride_z, stride_p, eps, inv_tau,
    BLOCK: tl.constexpr, WRITE_P: tl.constexpr, ARGMAX: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    cols = tl.arange(0, BLOCK)
    mean, rstd = _ln_stats(z_row, H, eps, cols, BLOCK)
    # online max / sum-exp of y/τ, y = γ·ẑ + β
    m = -float("inf")
    ssum = 0.0
    best = 0
    for start in range(0, H, BLOCK):
        k = start + cols
        mask = k < H
        z = tl.load(z_row + k, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + k, mask=mask, other=0.0)
        b = tl.load(b_ptr + k, mask=mask, other=0.0)
        y = tl.where(mask, ((z - mean) * rstd * g + b) * inv_tau, -float("inf"))
        block_max = tl.max(y, axis=0)
        if ARGMAX:
            best = tl.where(block_max > m, start + tl.argmax(y, axis=0), best)
        m_new = tl.maximum(m, block_max)
        ssum = ssum * tl.exp(m - m_new) + tl.sum(tl.exp(y - m_new), axis=0)
        m = m_new
    lse = m + tl.log(ssum)
    if WRITE_P:
        p_row = p_ptr + row * stride_p
        for start in range(0, Wd, BLOCK):
            k = start + cols
            mask = k < H
            z = tl.load(z_row + k, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + k, mask=mask, other=0.0)
            b = tl.load(b_ptr + k, mask=mask, other=0.0)
            y = ((z - mean) * rstd * g + b) * inv_tau
            p = tl.where(mask, tl.exp(y - lse), 0.0)
            tl.store(p_row + k, p.to(p_ptr.dtype.element_ty), mask=k < Wd)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)
    tl.store(lse_ptr + row, lse)
    if ARGMAX:
        tl.store(amax_ptr + row, best.to(tl.int64))


@triton.jit
def _bwd_rows_kernel(
    z_ptr, dp_ptr, g_ptr, b_ptr, mean_ptr, rstd_ptr, lse_ptr, s_ptr, a_ptr, c_ptr,
    H, stride_z, stride_dp, inv_tau,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Per row: s = Σ p·dp, A = Σ dẑ, B = Σ dẑ·ẑ, with dẑ = γ·p·(dp − s)/τ expanded so one pass suffices."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * stride_z
    dp_row = dp_ptr + row * stride_dp
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    lse = tl.load(lse_ptr + row)
    cols = tl.arange(0, BLOCK)
    p_dp = tl.zeros([BLOCK], tl.float32)
    gp_dp = tl.zeros([BLOCK], tl.float32)
    gp = tl.zeros([BLOCK], tl.float32)
    gp_dp_zh = tl.zeros([BLOCK], tl.float32)
    gp_zh = tl.zeros([BLOCK], tl.float32)
    for start in range(0, H, BLOCK):
        k = start + cols
        mask = k < H
        z = tl.load(z_row + k, mask=mask, other=0.0).to(tl.float32)
        dp = tl.load(dp_row + k, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + k, mask=mask, other=0.0)
        b = tl.load(b_ptr + k, mask=mask, other=0.0)
        zhat = (z - mean) * rstd
        p = tl.where(mask, tl.exp((zhat * g + b) * inv_tau - lse), 0.0)
        gpk = g * p
        p_dp += p * dp
        gp_dp += gpk * dp
        gp += gpk
        gp_dp_zh += gpk * dp * zhat
        gp_zh += gpk * zhat
    s = tl.sum(p_dp, axis=0)
    tl.store(s_ptr + row, s)
    tl.store(a_ptr + row, (tl.sum(gp_dp, axis=0) - s * tl.sum(gp, axis=0)) * inv_tau)
    tl.store(c_ptr + row, (tl.sum(gp_dp_zh, axis=0) - s * tl.sum(gp_zh, axis=0)) * inv_tau)


@triton.jit
def _bwd_tiles_kernel(
    z_ptr, dp_ptr, g_ptr, b_ptr, mean_ptr, rstd_ptr, lse_ptr, s_ptr, a_ptr, c_ptr, amax_ptr,
    dg_ptr, db_ptr, R, H, Wd, stride_z, stride_dp, inv_tau, inv_h,
    HARD: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """dL/dz = rstd·(dẑ − A/H − ẑ·B/H) into z, p (or one-hot) into dp, column sums of dy·ẑ and dy."""
    pid_m = tl.program_id(0)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    rmask = rows < R
    hmask = cols < H
    mask = rmask[:, None] & hmask[None, :]
    store_mask = rmask[:, None] & (cols < Wd)[None, :]
    mean = tl.load(mean_ptr + rows, mask=rmask, other=0.0)[:, None]
    rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)[:, None]
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)[:, None]
    s = tl.load(s_ptr + rows, mask=rmask, other=0.0)[:, None]
    a = tl.load(a_ptr + rows, mask=rmask, other=0.0)[:, None]
    c = tl.load(c_ptr + rows, mask=rmask, other=0.0)[:, None]
    g = tl.load(g_ptr + cols, mask=hmask, other=0.0)[None, :]
    b = tl.load(b_ptr + cols, mask=hmask, other=0.0)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    z_ptrs = z_ptr + rows64 * stride_z + cols[None, :]
    dp_ptrs = dp_ptr + rows64 * stride_dp + cols[None, :]
    z = tl.load(z_ptrs, mask=mask, other=0.0).to(tl.float32)
    dp = tl.load(dp_ptrs, mask=mask, other=0.0).to(tl.float32)
    zhat = (z - mean) * rstd
    p = tl.where(mask, tl.exp((zhat * g + b) * inv_tau - lse), 0.0)
    dy = p * (dp - s) * inv_tau  # dL/dy, y = γ·ẑ + β
    dz = tl.where(mask, rstd * (dy * g - a * inv_h - zhat * (c * inv_h)), 0.0)
    tl.store(z_ptrs, dz.to(z_ptr.dtype.element_ty), mask=store_mask)
    if HARD:
        amax = tl.load(amax_ptr + rows, mask=rmask, other=-1)[:, None]
        p = tl.where(cols[None, :] == amax, 1.0, 0.0)
    tl.store(dp_ptrs, p.to(dp_ptr.dtype.element_ty), mask=store_mask)
    tl.store(dg_ptr + pid_m * H + cols, tl.sum(dy * zhat, axis=0), mask=hmask)
    tl.store(db_ptr + pid_m * H + cols, tl.sum(dy, axis=0), mask=hmask)


def forward_rows(
    z: torch.Tensor,
    h: int,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    eps: float,
    inv_tau: float,
    p_out: torch.Tensor | None,
    want_argmax: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Same contract as `openovis.ops.vet.torch_forward_rows` (gamma, beta fp32 ``[h]``)."""
    c, width = z.shape
    stats = torch.empty(3, c, dtype=torch.float32, device=z.device)  # mean, 1/std, log-sum-exp
    amax = torch.empty(c, dtype=torch.long, device=z.device) if want_argmax else stats
    p = p_out if p_out is not None else z
    _fwd_rows_kernel[(c,)](
        z, p, gamma, beta, stats[0], stats[1], stats[2], amax,
        h, width, z.stride(0), p.stride(0), eps, inv_tau,
        BLOCK=ROW_BLOCK, WRITE_P=p_out is not None, ARGMAX=want_argmax, num_warps=ROW_WARPS,
    )  # fmt: skip
    return stats[0], stats[1], stats[2], amax if want_argmax else None


def backward_rows(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `openovis.ops.vet.torch_backward_rows` (statistics fp32 ``[c]``)."""
    c, width = z.shape
    mean, rstd, lse = (t.float().contiguous() for t in (mean, rstd, lse))
    sums = torch.empty(3, c, dtype=torch.float32, device=z.device)  # s, A, B
    _bwd_rows_kernel[(c,)](
        z, dp, gamma, beta, mean, rstd, lse, sums[0], sums[1], sums[2],
        h, z.stride(0), dp.stride(0), inv_tau,
        BLOCK=ROW_BLOCK, num_warps=ROW_WARPS,
    )  # fmt: skip
    tiles_m = triton.cdiv(c, TILE_M)
    partial = torch.empty(2, tiles_m, h, dtype=torch.float32, device=z.device)  # dγ, dβ per row tile
    _bwd_tiles_kernel[(tiles_m, triton.cdiv(width, TILE_N))](
        z, dp, gamma, beta, mean, rstd, lse, sums[0], sums[1], sums[2],
        amax if amax is not None else mean, partial[0], partial[1],
        c, h, width, z.stride(0), dp.stride(0), inv_tau, 1.0 / h,
        HARD=amax is not None, BM=TILE_M, BN=TILE_N, num_warps=TILE_WARPS,
    )  # fmt: skip
    return partial[0].sum(dim=0), partial[1].sum(dim=0)
