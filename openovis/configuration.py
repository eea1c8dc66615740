"""`OvisConfig`: what is saved with an Ovis model.

An Ovis model is any transformers vision encoder (``vision_config``) and any transformers causal LM
(``text_config``) joined by a visual tokenizer head and a visual embedding table (VET) of
``visual_vocab_size`` rows (DESIGN §1), or, for the paper's ablation, by an MLP projector.

Every field is validated on construction; an invalid value raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

from openovis.constants import IMAGE_ATOM, INDICATOR_TOKENS_OVIS2
from openovis.options import CONNECTORS, BackboneFeature, LossImpl, TokenizeFunction, VetImpl, check_choice


class NavitConfig(PretrainedConfig):
    """Configuration of :class:`NavitModel`; fields and defaults as the official ``Siglip2NavitConfig``.

    ``fullatt_block_indexes`` may be a list of ints or the official ``"7|15|23"`` string; ``None``
    means every block attends over its whole frame (no window attention). ``window_size`` is in
    pixels: a window is ``window_size // hidden_stride // patch_size`` merge units a side.
    """

    model_type = "openovis_navit"

    def __init__(
        self,
        hidden_size: int = 1024,
        intermediate_size: int = 4096,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        num_channels: int = 3,
        num_patches: int = -1,
        image_size: int = 512,
        patch_size: int = 16,
        hidden_act: str = "gelu_pytorch_tanh",
        layer_norm_eps: float = 1e-6,
        attention_dropout: float = 0.0,
        hidden_stride: int = 2,
        window_size: int = 112,
        fullatt_block_indexes: Any = None,
        temporal_patch_size: int = 1,
        preserve_original_pe: bool = True,
        use_rope: bool = True,
        rope_theta: float = 10000.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_channels = num_channels
        self.num_patches = num_patches
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.attention_dropout = attention_dropout
        self.hidden_stride = hidden_stride
        self.window_size = window_size
        self.fullatt_block_indexes = fullatt_block_indexes
        self.temporal_patch_size = temporal_patch_size
        self.preserve_original_pe = preserve_original_pe
        self.use_rope = use_rope
        self.rope_theta = rope_theta

    @property
    def full_attention_blocks(self) -> list[int] | None:
        v = self.fullatt_block_indexes
        if v is None:
            return None
        if isinstance(v, str):
            return [int(i) for i in v.split("|") if i.strip()]
        return [int(i) for i in v]

    @classmethod
    def from_official(cls, vit_config: Mapping[str, Any]) -> NavitConfig:
        """From the official ``vit_config`` dict (``model_type: siglip2_navit``) of an Ovis2.5 config.json."""
        keys = cls().to_dict().keys()
        return cls(**{k: v for k, v in vit_config.items() if k in keys and k not in ("model_type",)})


AutoConfig.register(NavitConfig.model_type, NavitConfig, exist_ok=True)


def _sub_config(value: Any, field: str) -> PretrainedConfig | None:
    """Turns a dict (as read from config.json) into the transformers config class it names."""
    if value is None or isinstance(value, PretrainedConfig):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{field}: expected a transformers config or a dict, got {type(value).__name__}")
    model_type = value.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{field}.model_type: unknown transformers model type {model_type!r}")
    kwargs = {k: v for k, v in value.items() if k != "model_type"}
    return CONFIG_MAPPING[model_type](**kwargs)


class OvisConfig(PretrainedConfig):
    """Configuration of `OvisForConditionalGeneration`.

    Args:
        vision_config: Config of the vision backbone (CLIP, SigLIP, SigLIP2, AIMv2, ... any transformers
            vision model, or `NavitConfig` for Ovis2.5's native-resolution encoder), or a dict with its
            ``model_type``.
        text_config: Config of the causal LM (Llama, Qwen2/3, Gemma, ...), or a dict with its ``model_type``.
        visual_vocab_size: K, rows of the VET, including the ``len(indicator_tokens)`` indicator rows.
        hidden_stride: s; each s×s block of neighbouring patch features is concatenated into one visual token.
        indicator_tokens: Indicator token strings in VET-row order; indicator i is VET row ``K - n + i``.
        tokenize_function: How head logits become a distribution over visual words.
        tokenize_temperature: Softmax temperature τ (logits are divided by τ).
        connector: A registered connector (`openovis.options.CONNECTORS`): ``vet`` (Ovis), ``mlp`` (the
            LLaVA-style projector baseline of the paper's ablation), or one a user registers.
        mlp_hidden_size: Hidden width of the MLP connector (default: the LLM width).
        vet_impl: Which implementation computes ``softmax(LN(xW)) @ E`` (see `openovis.ops.vet`).
        loss_impl: How a forward with labels computes the LM loss: ``reference`` (the LLM's own, with
            logits), or without ``[tokens, vocab]`` logits (``chunked`` | ``liger`` | ``auto``, see
            `openovis.ops.linear_ce`; the output's ``logits`` are then None).
        backbone_feature: ``pre_norm`` takes the encoder's last hidden state before any final norm (official
            Ovis); ``post_norm`` applies it (transformers' Ovis2).
        head_norm_eps: LayerNorm epsilon of the visual head.
        vte_init_std: Std of the VET's normal initialization (LM-embedding scale works best from scratch).
        mlp_out_init_std: Std of the normal initialization of the MLP connector's output layer (None: the
            LLM's ``initializer_range``); lower it to start the visual tokens at the text embeddings' scale.
        image_atom_id: Text-vocabulary id of ``<IMG_ATOM>``, the position of one visual token.
        indicator_token_ids: Text-vocabulary ids of ``indicator_tokens``, same order.
        image_atom_token: The atom token string.
    """

    model_type = "openovis"
    sub_configs = {"vision_config": PretrainedConfig, "text_config": PretrainedConfig}

    def __init__(
        self,
        vision_config: PretrainedConfig | dict | None = None,
        text_config: PretrainedConfig | dict | None = None,
        visual_vocab_size: int = 65536,
        hidden_stride: int = 2,
        indicator_tokens: list[str] | tuple[str, ...] = INDICATOR_TOKENS_OVIS2,
        tokenize_function: TokenizeFunction = "softmax",
        tokenize_temperature: float = 1.0,
        connector: str = "vet",
        mlp_hidden_size: int | None = None,
        vet_impl: VetImpl = "auto",
        loss_impl: LossImpl = "reference",
        backbone_feature: BackboneFeature = "pre_norm",
        head_norm_eps: float = 1e-5,
        vte_init_std: float = 0.02,
        mlp_out_init_std: float | None = None,
        image_atom_id: int | None = None,
        indicator_token_ids: list[int] | tuple[int, ...] | None = None,
        image_atom_token: str = IMAGE_ATOM,
        **kwargs: Any,
    ) -> None:
        self.vision_config = _sub_config(vision_config, "vision_config")
        self.text_config = _sub_config(text_config, "text_config")
        self.visual_vocab_size = visual_vocab_size
        self.hidden_stride = hidden_stride
        self.indicator_tokens = list(indicator_tokens)
        self.tokenize_function = tokenize_function
        self.tokenize_temperature = tokenize_temperature
        self.connector = connector
        self.mlp_hidden_size = mlp_hidden_size
        self.vet_impl = vet_impl
        self.loss_impl = loss_impl
        self.backbone_feature = backbone_feature
        self.head_norm_eps = head_norm_eps
        self.vte_init_std = vte_init_std
        self.mlp_out_init_std = mlp_out_init_std
        self.image_atom_id = image_atom_id
        self.indicator_token_ids = list(indicator_token_ids) if indicator_token_ids is not None else None
        self.image_atom_token = image_atom_token
        kwargs.setdefault("tie_word_embeddings", False)  # the LLM ties its own embeddings, if it does
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        check_choice("tokenize_function", self.tokenize_function, TokenizeFunction)
        check_choice("vet_impl", self.vet_impl, VetImpl)
        check_choice("loss_impl", self.loss_impl, LossImpl)
        check_choice("backbone_feature", self.backbone_feature, BackboneFeature)
        if self.connector not in CONNECTORS:
            raise ValueError(
                f"connector: must be a registered connector {tuple(CONNECTORS)}, got {self.connector!r}"
            )
        n = len(self.indicator_tokens)
        if not isinstance(self.hidden_stride, int) or self.hidden_stride < 1:
            raise ValueError(f"hidden_stride: must be an integer >= 1, got {self.hidden_stride!r}")
        if not isinstance(self.visual_vocab_size, int) or self.visual_vocab_size <= n:
            raise ValueError(
                f"visual_vocab_size: must be an integer > the {n} indicator tokens, got {self.visual_vocab_size!r}"
            )
        if n < 2 or len(set(self.indicator_tokens)) != n:
            raise ValueError(
                f"indicator_tokens: need at least 2 distinct tokens, got {self.indicator_tokens!r}"
            )
        if not self.tokenize_temperature > 0:
            raise ValueError(f"tokenize_temperature: must be > 0, got {self.tokenize_temperature!r}")
        if not self.head_norm_eps > 0:
            raise ValueError(f"head_norm_eps: must be > 0, got {self.head_norm_eps!r}")
        if not self.vte_init_std > 0:
            raise ValueError(f"vte_init_std: must be > 0, got {self.vte_init_std!r}")
        if self.mlp_hidden_size is not None and self.mlp_hidden_size < 1:
            raise ValueError(f"mlp_hidden_size: must be >= 1, got {self.mlp_hidden_size!r}")
        if self.indicator_token_ids is not None and len(self.indicator_token_ids) != n:
            raise ValueError(
                f"indicator_token_ids: expected {n} ids (one per indicator token), got {self.indicator_token_ids!r}"
            )
        ids = [self.image_atom_id, *(self.indicator_token_ids or [])]
        vocab = getattr(self.text_config, "vocab_size", None)
        for i in ids:
            if i is not None and (i < 0 or (vocab is not None and i >= vocab)):
                raise ValueError(
                    f"image_atom_id/indicator_token_ids: id {i} is outside the text vocabulary [0, {vocab})"
                )
        native_stride = getattr(self.vision_config, "hidden_stride", None) if self.native_resolution else None
        if native_stride is not None and native_stride != self.hidden_stride:
            raise ValueError(
                f"hidden_stride: {self.hidden_stride} differs from vision_config.hidden_stride {native_stride} "
                "(the NaViT encoder orders its rows in hidden_stride x hidden_stride merge units)"
            )
        for field in ("image_size", "patch_size", "hidden_size"):
            if self.vision_config is not None and not hasattr(self.vision_config, field):
                raise ValueError(f"vision_config.{field}: missing; the vision backbone config must define it")

    # ---- derived sizes -------------------------------------------------------------------------------
    @property
    def num_indicators(self) -> int:
        """n, the number of indicator tokens (the last n rows of the VET)."""
        return len(self.indicator_tokens)

    @property
    def native_resolution(self) -> bool:
        """Whether the backbone is the packed NaViT encoder (Ovis2.5): images at their own size,
        ``pixel_values [N, C*T*p*p]`` rows with ``grid_thw [n, 3]``, instead of square crops."""
        return getattr(self.vision_config, "model_type", None) == NavitConfig.model_type

    @property
    def crop_size(self) -> int:
        """S, the side of one square crop in pixels."""
        return _as_int(self.vision_config.image_size)

    @property
    def patch_size(self) -> int:
        """The backbone's patch side in pixels."""
        return _as_int(self.vision_config.patch_size)

    @property
    def patch_grid(self) -> int:
        """g, patches per side of one crop."""
        return self.crop_size // self.patch_size

    @property
    def visual_tokens_per_crop(self) -> int:
        """T = ceil(patch_grid / s)²: visual tokens the model produces for one crop."""
        return math.ceil(self.patch_grid / self.hidden_stride) ** 2

    @property
    def visual_feature_size(self) -> int:
        """d·s²: width of one merged visual feature (the head's input)."""
        return self.vision_config.hidden_size * self.hidden_stride**2

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        for key in ("vision_config", "text_config"):
            sub = getattr(self, key)
            out[key] = sub.to_dict() if sub is not None else None
        return out


def _as_int(value: int | list[int] | tuple[int, ...]) -> int:
    """Vision configs store image/patch size as an int or a (h, w) pair; Ovis crops are square."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"vision_config: non-square sizes are not supported, got {value!r}")
        return int(value[0])
    return int(value)
