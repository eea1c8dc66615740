"""The SigLIP2 NaViT vision encoder of Ovis2.5: native-resolution images packed into one sequence.

Notation: N packed patch rows (all images/frames together), d width, H heads, p patch size,
s = ``hidden_stride`` (merge unit s x s patches), T = ``temporal_patch_size``, C channels.

    pixel_values [N, C*T*p*p], grid_thw [n, 3]     (openovis.processing.navit_image)
      -> patch embedding (Conv2d or Linear)                              [N, d]
      -> + learned position grid, bicubic-resized to each (h, w)         [N, d]
      -> rows reordered into attention windows (merge units stay whole)
      -> L pre-norm blocks; block i attends within its window, or within its frame if
         i is in ``fullatt_block_indexes`` (None: every block within its frame); optional 2-D RoPE
      -> rows put back in input order                                     features [N, d]

Rows arrive in merge-unit order (each s*s consecutive rows are one visual token), so Ovis joins
features by a plain reshape ``[N, d] -> [N/s², s²·d]`` (:func:`merge_units`). The features are the
last block's output; ``post_layernorm`` is kept for checkpoint compatibility but not applied
(``feature="post_norm"`` applies it). Attention is variable-length: every frame (full attention) or
window is its own sequence. ``flash_attn_varlen_func`` is used when installed and the inputs are
fp16/bf16 on CUDA; otherwise segments are padded to a batch and run through SDPA with a key mask.

Module names equal the official ``Siglip2NavitModel``'s, so the official checkpoint's
``visual_tokenizer.vit.*`` tensors load without renaming once that prefix is stripped
(:func:`official_vit_state_dict`). Written from the behaviour of the official code (AIDC-AI/Ovis,
``ovis/model/vit/modeling_siglip2_navit.py``) and checked against its outputs
(tests/modeling/test_navit.py). Beyond it: ``temporal_patch_size`` > 1 works here (the patch
embedding takes C*T input channels; the official one takes C and cannot run T > 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN

from openovis.configuration import NavitConfig

try:  # optional
    from flash_attn import flash_attn_varlen_func as _flash_varlen
except Exception:  # pragma: no cover - not installed on CPU machines
    _flash_varlen = None


# --------------------------------------------------------------------------- layout helpers


def merge_unit_permutation(t: int, h: int, w: int, s: int) -> torch.Tensor:
    """Row-major index (t, y, x) of every row in merge-unit order: ``[t*h*w]``."""
    idx = torch.arange(t * h * w).view(t, h // s, s, w // s, s)
    return idx.permute(0, 1, 3, 2, 4).reshape(-1)


def merge_units(features: torch.Tensor, hidden_stride: int) -> torch.Tensor:
    """``[N, d]`` rows in merge-unit order -> ``[N / s², s²·d]`` visual-token features."""
    n, d = features.shape
    return features.reshape(n // (hidden_stride * hidden_stride), hidden_stride * hidden_stride * d)


def window_order(grid_thw: torch.Tensor, window_units: int) -> tuple[torch.Tensor, list[int]]:
    """Merge units reordered window by window, and the window lengths in merge units.

    Returns ``order`` (``order[k]`` = the input merge unit at window position k) and the length of
    every non-empty window, frames in order, windows row by row, units row by row inside a window.
    """
    order, lengths, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        uh, uw = h, w  # in merge units (the caller divides by hidden_stride)
        idx = torch.arange(t * uh * uw).view(t, uh, uw)
        nh, nw = -(-uh // window_units), -(-uw // window_units)
        pad = (0, nw * window_units - uw, 0, nh * window_units - uh)
        idx = F.pad(idx, pad, value=-1).view(t, nh, window_units, nw, window_units)
        idx = idx.permute(0, 1, 3, 2, 4).reshape(t * nh * nw, window_units * window_units)
        valid = idx >= 0
        order.append(idx[valid] + offset)
        lengths.extend(n for n in valid.sum(1).tolist() if n > 0)
        offset += t * uh * uw
    return torch.cat(order), lengths


# --------------------------------------------------------------------------- attention


def varlen_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int], scale: float
) -> torch.Tensor:
    """Softmax attention within consecutive segments of ``[N, H, Dh]`` rows; returns ``[N, H, Dh]``."""
    n = q.shape[0]
    if _flash_varlen is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        cu = torch.tensor([0] + lengths, device=q.device, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        m = max(lengths)
        return _flash_varlen(q, k, v, cu, cu, m, m, softmax_scale=scale)
    if len(lengths) == 1:
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], scale=scale
        )
        return out[0].transpose(0, 1)
    # pad the segments into a batch [S, H, Lmax, Dh]; mask padded keys
    lens = torch.tensor(lengths, device=q.device)
    starts = torch.cumsum(lens, 0) - lens
    lmax = int(lens.max())
    pos = torch.arange(lmax, device=q.device)
    valid = pos[None, :] < lens[:, None]  # [S, Lmax]
    gather = (starts[:, None] + pos[None, :]).clamp(max=n - 1)  # [S, Lmax]

    def batch(x: torch.Tensor) -> torch.Tensor:
        return x[gather].permute(0, 2, 1, 3)  # [S, H, Lmax, Dh]

    out = F.scaled_dot_product_attention(
        batch(q), batch(k), batch(v), attn_mask=valid[:, None, None, :], scale=scale
    )
    return out.permute(0, 2, 1, 3)[valid]  # [N, H, Dh], segments are contiguous and in order


def rotate_half_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE over the whole head: x ``[N, H, Dh]``, cos/sin ``[N, Dh/2]``; fp32 inside."""
    xf = x.float()
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos[:, None, :].float(), sin[:, None, :].float()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


# --------------------------------------------------------------------------- modules


class NavitEmbeddings(nn.Module):
    def __init__(self, config: NavitConfig):
        super().__init__()
        self.config = config
        d, p, c, tp = config.hidden_size, config.patch_size, config.num_channels, config.temporal_patch_size
        if config.num_patches > 0:  # SigLIP2 NaFlex: a linear layer on flattened patches
            self.patch_embedding = nn.Linear(c * tp * p * p, d)
            grid = int(config.num_patches**0.5)
        else:
            self.patch_embedding = nn.Conv2d(c * tp, d, kernel_size=p, stride=p)
            grid = config.image_size // p
        self.position_embedding_size = grid
        if config.preserve_original_pe:
            self.position_embedding = nn.Embedding(grid * grid, d)

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        w = self.patch_embedding.weight
        if isinstance(self.patch_embedding, nn.Linear):
            x = self.patch_embedding(pixel_values.to(w.dtype))
        else:
            p = cfg.patch_size
            x = self.patch_embedding(pixel_values.to(w.dtype).view(-1, w.shape[1], p, p)).view(
                -1, cfg.hidden_size
            )
        if not cfg.preserve_original_pe:
            return x
        g, s = self.position_embedding_size, cfg.hidden_stride
        table = self.position_embedding.weight.view(g, g, -1).permute(2, 0, 1)[None]  # [1, d, g, g]
        pieces = []
        for t, h, wd in grid_thw.tolist():
            pe = F.interpolate(table, size=(h, wd), mode="bicubic", align_corners=False)[0]  # [d, h, w]
            pe = pe.flatten(1).t()  # [h*w, d], row-major
            pieces.append(pe[merge_unit_permutation(1, h, wd, s)].repeat(t, 1))
        return x + torch.cat(pieces).to(x.dtype)


class NavitAttention(nn.Module):
    def __init__(self, config: NavitConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = d // self.num_heads
        if self.head_dim * self.num_heads != d:
            raise ValueError(f"hidden_size {d} is not divisible by num_attention_heads {self.num_heads}")
        self.scale = self.head_dim**-0.5
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(
        self, x: torch.Tensor, lengths: list[int], rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> torch.Tensor:
        n = x.shape[0]
        q = self.q_proj(x).view(n, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(n, self.num_heads, self.head_dim)
        v = self.v_proj(x).view(n, self.num_heads, self.head_dim)
        if rope is not None:
            q, k = rotate_half_rope(q, *rope), rotate_half_rope(k, *rope)
        return self.out_proj(varlen_attention(q, k, v, lengths, self.scale).reshape(n, -1))


class NavitMLP(nn.Module):
    def __init__(self, config: NavitConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class NavitEncoderLayer(nn.Module):
    def __init__(self, config: NavitConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = NavitAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = NavitMLP(config)

    def forward(self, x: torch.Tensor, lengths: list[int], rope) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), lengths, rope)
        return x + self.mlp(self.layer_norm2(x))


class NavitEncoder(nn.Module):
    def __init__(self, config: NavitConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([NavitEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def rope_angles(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """Per row (merge-unit order): [y·f, x·f] angles, ``[N, head_dim / 2]``."""
        s = self.config.hidden_stride
        pos = []
        for t, h, w in grid_thw.tolist():
            yx = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).view(
                h * w, 2
            )
            pos.append(yx[merge_unit_permutation(1, h, w, s)].repeat(t, 1))
        # computed here, not kept as a buffer: a model loaded from_pretrained (built on the meta
        # device) would hold an uninitialized non-persistent buffer
        cfg = self.config
        rope_dim = cfg.hidden_size // cfg.num_attention_heads // 2  # per axis: head_dim / 4 frequencies
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, rope_dim, 2, dtype=torch.float) / rope_dim))
        pos = torch.cat(pos)
        return (pos[:, :, None].float() * inv_freq[None, None, :]).flatten(1)  # [N, 2 * f]

    def forward(self, x: torch.Tensor, grid_thw: torch.Tensor, output_hidden_states: bool = False):
        cfg = self.config
        s, unit = cfg.hidden_stride, cfg.hidden_stride**2
        n = x.shape[0]
        full = cfg.full_attention_blocks
        frame_lengths = [h * w for t, h, w in grid_thw.tolist() for _ in range(t)]
        order = None
        window_lengths = frame_lengths
        if full is not None:
            window_units = cfg.window_size // s // cfg.patch_size
            if window_units < 1:
                raise ValueError(
                    f"window_size {cfg.window_size} is smaller than one merge unit ({s * cfg.patch_size} px)"
                )
            units = grid_thw.clone()
            units[:, 1:] //= s
            order, lengths = window_order(units, window_units)
            order = order.to(x.device)
            window_lengths = [m * unit for m in lengths]
        rope = None
        if cfg.use_rope:
            ang = self.rope_angles(grid_thw).to(x.device)
            if order is not None:
                ang = ang.view(n // unit, unit, -1)[order].view(n, -1)
            rope = (ang.cos(), ang.sin())
        if order is not None:
            x = x.view(n // unit, unit, -1)[order].view(n, -1)
            inverse = torch.argsort(order)

        def restore(h: torch.Tensor) -> torch.Tensor:
            return h if order is None else h.view(n // unit, unit, -1)[inverse].view(n, -1)

        states = []
        for i, layer in enumerate(self.layers):
            lengths = frame_lengths if full is None or i in full else window_lengths
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, lengths, rope, use_reentrant=False)
            else:
                x = layer(x, lengths, rope)
            if output_hidden_states:
                states.append(restore(x))
        return restore(x), states


class NavitTransformer(nn.Module):
    def __init__(self, config: NavitConfig):
        super().__init__()
        self.config = config
        self.embeddings = NavitEmbeddings(config)
        self.encoder = NavitEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class NavitModel(PreTrainedModel):
    """The encoder. ``forward(pixel_values, grid_thw)`` returns features ``[N, d]`` in input row order."""

    config_class = NavitConfig
    main_input_name = "pixel_values"
    base_model_prefix = "navit"
    supports_gradient_checkpointing = True
    _no_split_modules = ["NavitEmbeddings", "NavitEncoderLayer"]

    def __init__(self, config: NavitConfig):
        super().__init__(config)
        self.vision_model = NavitTransformer(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=1 / math.sqrt(module.weight[0].numel()))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=1 / math.sqrt(module.weight.shape[1]))
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None) -> None:
        self.vision_model.encoder.gradient_checkpointing = enable

    def forward(
        self,
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor,
        feature: str = "pre_norm",
        output_hidden_states: bool = False,
    ):
        """Args: ``pixel_values [N, C*T*p*p]``, ``grid_thw [n, 3]`` (t, h, w in patches).

        Returns ``features [N, d]`` (the last block's output, or after ``post_layernorm`` with
        ``feature="post_norm"``), and with ``output_hidden_states`` also the list of every block's
        output.
        """
        if feature not in ("pre_norm", "post_norm"):
            raise ValueError(f"feature: 'pre_norm' or 'post_norm', got {feature!r}")
        grid_thw = grid_thw.to(torch.long).cpu()
        expected = int(grid_thw.prod(-1).sum())
        if pixel_values.shape[0] != expected:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} rows, grid_thw describes {expected}")
        s = self.config.hidden_stride
        if bool(((grid_thw[:, 1:] % s) != 0).any()):
            raise ValueError(
                f"grid_thw heights and widths must be multiples of hidden_stride {s}: {grid_thw.tolist()}"
            )
        vm = self.vision_model
        x = vm.embeddings(pixel_values, grid_thw)
        x, states = vm.encoder(x, grid_thw, output_hidden_states)
        if feature == "post_norm":
            x = vm.post_layernorm(x)
        return (x, states) if output_hidden_states else x


def official_vit_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "visual_tokenizer.vit."
) -> dict:
    """The ``NavitModel`` state dict inside an official Ovis2.5 state dict: the keys under ``prefix``
    with it stripped (no other renaming: the module names are the official ones)."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
