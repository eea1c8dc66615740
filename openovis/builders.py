"""Named model presets and the registry shared by the Python API and the CLI.

A preset is a plain function returning an `OvisConfig` (random weights when built), plus the image
preprocessing defaults and, for real models, the hub ids of the backbone and LLM a user may load:

    build_model("tiny")                                   # random, CPU-fast: tests and the demo
    build_model("ovis2-2b-like", scale_down=True)         # the real architecture, tiny widths
    build_model("ovis2-2b-like", vision_path=..., llm_path=..., tokenizer=tok)   # pretrained parts

Overrides: top-level `OvisConfig` fields by name; sub-config fields through ``vision={...}`` and
``text={...}`` (e.g. ``build_config("tiny", visual_vocab_size=128, text={"num_hidden_layers": 1})``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers import (
    MODEL_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.aimv2 import Aimv2VisionConfig
from transformers.models.clip import CLIPVisionConfig
from transformers.models.gemma2 import Gemma2Config
from transformers.models.llama import LlamaConfig
from transformers.models.qwen2 import Qwen2Config
from transformers.models.qwen3 import Qwen3Config
from transformers.models.siglip import SiglipVisionConfig

from openovis.configuration import NavitConfig, OvisConfig
from openovis.constants import (
    IMAGE_ATOM,
    IMAGE_PLACEHOLDER,
    INDICATOR_TOKENS_OVIS1,
    INDICATOR_TOKENS_OVIS2,
    INDICATOR_TOKENS_OVIS25,
)
from openovis.modeling.backbone import backbone_config
from openovis.modeling.ovis import OvisForConditionalGeneration

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preset:
    """A named model: its config builder and the defaults that go with it."""

    name: str
    """Registry key."""
    description: str
    """One line for `openovis models`."""
    config: Callable[[], OvisConfig]
    """Builds the full-size config."""
    image_mean: tuple[float, float, float] = HALF
    """Backbone normalization mean."""
    image_std: tuple[float, float, float] = HALF
    """Backbone normalization std."""
    max_partition: int = 9
    """Most crops per image (1 = Ovis 1.0 single square image)."""
    vision_hub_id: str | None = None
    """Where the pretrained backbone lives, for users who have it."""
    llm_hub_id: str | None = None
    """Where the pretrained LLM lives, for users who have it."""
    notes: list[str] = field(default_factory=list)
    """Known differences from the real model."""


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    if name in RENAMED_PRESETS:
        raise ValueError(
            f"preset {name!r} was replaced by {RENAMED_PRESETS[name]!r} (the real Ovis2.5 shapes, "
            "with the native-resolution NaViT instead of square crops)"
        )
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def _reserved_ids(vocab_size: int, n: int) -> dict[str, Any]:
    """Without a tokenizer: the atom and indicators take the last n+1 ids of the text vocabulary."""
    return {
        "image_atom_id": vocab_size - n - 1,
        "indicator_token_ids": list(range(vocab_size - n, vocab_size)),
    }


def _ovis(vision: PretrainedConfig, text: PretrainedConfig, **kwargs: Any) -> OvisConfig:
    n = len(kwargs.get("indicator_tokens", INDICATOR_TOKENS_OVIS2))
    ids = _reserved_ids(text.vocab_size, n)
    return OvisConfig(vision_config=backbone_config(vision), text_config=text, **{**ids, **kwargs})


# ---- presets ---------------------------------------------------------------------------------------
def tiny_config() -> OvisConfig:
    """SigLIP-style ViT 2×64 + Qwen2-style LM 2×64: ~0.3M parameters, milliseconds on a CPU."""
    vision = SiglipVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
    )
    text = Qwen2Config(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return _ovis(vision, text, visual_vocab_size=256, hidden_stride=2)


def tiny_shapes_config() -> OvisConfig:
    """The demo model, trained from scratch on Shapes World: SigLIP-style ViT 3×128 + Qwen2-style LM 3×128.

    64-px crops of 8-px patches, s = 2: 16 visual tokens per image; K = 512 visual words. The text
    vocabulary is sized by the tokenizer the recipe trains.
    """
    vision = SiglipVisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=64,
        patch_size=8,
    )
    text = Qwen2Config(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return _ovis(vision, text, visual_vocab_size=512, hidden_stride=2, mlp_hidden_size=512)


def small_shapes_config() -> OvisConfig:
    """The GPU-sized Shapes World model: SigLIP-style ViT 8×384 + Qwen2-style LM 8×512, K = 8192.

    128-px crops of 8-px patches, s = 2: 64 visual tokens per crop (the Ovis2 crop grid adds crops for
    larger images). Trained from scratch like `tiny-shapes`; the text vocabulary is sized by the
    tokenizer the recipe trains.
    """
    vision = SiglipVisionConfig(
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=6,
        image_size=128,
        patch_size=8,
    )
    text = Qwen2Config(
        vocab_size=1024,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return _ovis(vision, text, visual_vocab_size=8192, hidden_stride=2, mlp_hidden_size=8192)


def paper_ovis_8b_config() -> OvisConfig:
    """Ovis 1.0 of the paper: CLIP ViT-L/14-336 + Llama3-8B, K = 131072, s = 1, start/end indicators."""
    vision = CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )
    text = LlamaConfig(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
    )
    return _ovis(
        vision, text, visual_vocab_size=131072, hidden_stride=1, indicator_tokens=INDICATOR_TOKENS_OVIS1
    )


def ovis16_gemma2_9b_config() -> OvisConfig:
    """Ovis 1.6: SigLIP-so400m-14-384 + Gemma2-9B, K = 65536, s = 2 (196 tokens per crop)."""
    vision = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
    )
    text = Gemma2Config(
        vocab_size=256000,
        hidden_size=3584,
        intermediate_size=14336,
        num_hidden_layers=42,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
    )
    return _ovis(vision, text, visual_vocab_size=65536, hidden_stride=2)


def ovis2_2b_config() -> OvisConfig:
    """Ovis2-2B: AIMv2-huge-14-448 + Qwen2.5-1.5B, K = 65536, s = 2 (256 tokens per crop)."""
    vision = Aimv2VisionConfig(
        hidden_size=1536,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=12,
        image_size=448,
        patch_size=14,
    )
    text = Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    )
    return _ovis(vision, text, visual_vocab_size=65536, hidden_stride=2)


def _ovis25_vit() -> NavitConfig:
    """The NaViT of Ovis2.5 (both sizes): SigLIP2-so400m-patch16-512 weights in the official
    ``siglip2_navit`` module: conv patch embedding, 32x32 learned positions resized per image,
    2-D RoPE, every block attending over its whole image (``fullatt_block_indexes`` None)."""
    return NavitConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        num_channels=3,
        num_patches=-1,
        image_size=512,
        patch_size=16,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
        hidden_stride=2,
        window_size=112,
        fullatt_block_indexes=None,
        temporal_patch_size=1,
        preserve_original_pe=True,
        use_rope=True,
    )


def _ovis25(text: Qwen3Config) -> OvisConfig:
    return _ovis(
        _ovis25_vit(),
        text,
        visual_vocab_size=65536,
        hidden_stride=2,
        indicator_tokens=INDICATOR_TOKENS_OVIS25,
    )


def ovis25_9b_config() -> OvisConfig:
    """Ovis2.5-9B: the SigLIP2 NaViT (native resolution) + Qwen3-8B, K = 65536 (head K - 4), s = 2."""
    text = Qwen3Config(
        vocab_size=151936,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
    )
    return _ovis25(text)


def ovis25_2b_config() -> OvisConfig:
    """Ovis2.5-2B: the SigLIP2 NaViT (native resolution) + Qwen3-1.7B, K = 65536 (head K - 4), s = 2."""
    text = Qwen3Config(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )
    return _ovis25(text)


register(
    Preset(
        "tiny",
        "tiny random SigLIP-style ViT + Qwen2-style LM for tests and the demo",
        tiny_config,
        max_partition=1,
    )
)
register(
    Preset(
        "tiny-shapes",
        "the demo model: ViT 3x128 + LM 3x128, K=512, trained from scratch",
        tiny_shapes_config,
        max_partition=1,
    )
)
register(
    Preset(
        "small-shapes",
        "the GPU-sized Shapes World model: ViT 8x384 + LM 8x512, K=8192, 128-px crops, from scratch",
        small_shapes_config,
        max_partition=4,
    )
)
register(
    Preset(
        "paper-ovis-8b-like",
        "Ovis 1.0 (paper): CLIP ViT-L/14-336 + Llama3-8B, K=131072",
        paper_ovis_8b_config,
        CLIP_MEAN,
        CLIP_STD,
        max_partition=1,
        vision_hub_id="openai/clip-vit-large-patch14-336",
        llm_hub_id="meta-llama/Meta-Llama-3-8B-Instruct",
    )
)
register(
    Preset(
        "ovis1.6-gemma2-9b-like",
        "Ovis 1.6: SigLIP-so400m-14-384 + Gemma2-9B, K=65536",
        ovis16_gemma2_9b_config,
        vision_hub_id="google/siglip-so400m-patch14-384",
        llm_hub_id="google/gemma-2-9b-it",
    )
)
register(
    Preset(
        "ovis2-2b-like",
        "Ovis2-2B: AIMv2-huge-14-448 + Qwen2.5-1.5B, K=65536",
        ovis2_2b_config,
        CLIP_MEAN,
        CLIP_STD,
        vision_hub_id="apple/aimv2-huge-patch14-448",
        llm_hub_id="Qwen/Qwen2.5-1.5B-Instruct",
    )
)
register(
    Preset(
        "ovis2.5-9b",
        "Ovis2.5-9B: SigLIP2-so400m-16-512 NaViT (native resolution) + Qwen3-8B, K=65536",
        ovis25_9b_config,
        vision_hub_id="google/siglip2-so400m-patch16-512",
        llm_hub_id="Qwen/Qwen3-8B",
    )
)
register(
    Preset(
        "ovis2.5-2b",
        "Ovis2.5-2B: SigLIP2-so400m-16-512 NaViT (native resolution) + Qwen3-1.7B, K=65536",
        ovis25_2b_config,
        vision_hub_id="google/siglip2-so400m-patch16-512",
        llm_hub_id="Qwen/Qwen3-1.7B",
    )
)
RENAMED_PRESETS = {"ovis2.5-9b-like": "ovis2.5-9b"}
"""Old preset names -> their replacement (``ovis2.5-9b-like`` approximated the NaViT by square crops)."""


# ---- building ----------------------------------------------------------------------------------------
def _apply(sub: PretrainedConfig, overrides: dict[str, Any], where: str) -> PretrainedConfig:
    """A new sub-config with fields replaced (rebuilt, so that derived fields like ``layer_types`` follow)."""
    for key in overrides:
        if not hasattr(sub, key):
            raise ValueError(f"{where}.{key}: {type(sub).__name__} has no such field")
    fields = {**sub.to_dict(), **overrides}
    if "num_hidden_layers" in overrides:
        fields.pop("layer_types", None)
    fields.pop("model_type", None)
    return type(sub)(**fields)


def build_config(
    name: str, *, vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None, **overrides: Any
) -> OvisConfig:
    """The named preset's config with overrides applied (a new config; presets are never mutated)."""
    base = get_preset(name).config().to_dict()
    unknown = set(overrides) - set(base)
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: not an OvisConfig field")
    vc = _apply(get_preset(name).config().vision_config, vision or {}, "vision")
    tc = _apply(get_preset(name).config().text_config, text or {}, "text")
    if text and "vocab_size" in text and "image_atom_id" not in overrides:
        overrides = {**_reserved_ids(tc.vocab_size, len(base["indicator_tokens"])), **overrides}
    base.update(overrides, vision_config=vc, text_config=tc)
    base.pop("model_type", None)
    return OvisConfig(**base)


def scaled_down(config: OvisConfig) -> OvisConfig:
    """Same architecture types, tiny widths: every preset can be built and run in a test."""
    vc = _apply(
        config.vision_config,
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "vision",
    )
    vc.image_size = config.patch_size * 4
    if getattr(vc, "num_patches", -1) > 0:  # SigLIP2 NaFlex (NaViT's -1 keeps its conv patch embedding)
        vc.num_patches = 16
    small = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "vocab_size": 256,
    }
    for key, value in (("num_key_value_heads", 1), ("head_dim", 16)):
        if hasattr(config.text_config, key):
            small[key] = value
    tc = _apply(config.text_config, small, "text")
    d = config.to_dict()
    d.update(
        vision_config=vc, text_config=tc, visual_vocab_size=64, **_reserved_ids(256, config.num_indicators)
    )
    d.pop("model_type", None)
    return OvisConfig(**d)


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, config: OvisConfig) -> dict[str, Any]:
    """Adds the image placeholder, atom and indicator tokens to a tokenizer; returns their ids as config fields."""
    tokens = [IMAGE_PLACEHOLDER, IMAGE_ATOM, *config.indicator_tokens]
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": missing}, replace_extra_special_tokens=False
        )
    ids = tokenizer.convert_tokens_to_ids(tokens)
    fields: dict[str, Any] = {"image_atom_id": ids[1], "indicator_token_ids": ids[2:]}
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        if getattr(tokenizer, key, None) is not None:
            fields[key] = getattr(tokenizer, key)
    return fields


def build_model(
    name: str,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    vision_path: str | None = None,
    llm_path: str | None = None,
    scale_down: bool = False,
    vision: dict[str, Any] | None = None,
    text: dict[str, Any] | None = None,
    **overrides: Any,
) -> OvisForConditionalGeneration:
    """Builds a preset: random weights, or the pretrained backbone / LLM from hub ids or local folders.

    Args:
        name: A registered preset.
        tokenizer: The text tokenizer; its special-token ids go into the config (tokens are added when
            missing and the LLM's embeddings resized to ``len(tokenizer)``).
        vision_path: Hub id or folder of a pretrained vision model (replaces the preset's vision config).
        llm_path: Hub id or folder of a pretrained causal LM (replaces the preset's text config).
        scale_down: Tiny widths with the same architecture types (for tests).
        vision, text, overrides: Config overrides (see `build_config`).
    """
    config = build_config(name, vision=vision, text=text, **overrides)
    if scale_down:
        config = scaled_down(config)
    vision_model = load_vision_model(vision_path) if vision_path else None
    llm = AutoModelForCausalLM.from_pretrained(llm_path) if llm_path else None
    fields: dict[str, Any] = {}
    if vision_model is not None:
        fields["vision_config"] = vision_model.config
    if llm is not None:
        fields["text_config"] = llm.config
    if tokenizer is not None:
        fields.update(add_special_tokens(tokenizer, config))
        if llm is not None and len(tokenizer) > llm.get_input_embeddings().num_embeddings:
            llm.resize_token_embeddings(len(tokenizer))
            fields["text_config"] = llm.config
        elif llm is None and len(tokenizer) != config.text_config.vocab_size:
            fields["text_config"] = _apply(config.text_config, {"vocab_size": len(tokenizer)}, "text")
    if fields:
        d = config.to_dict()
        d.pop("model_type", None)
        d.update(fields)
        config = OvisConfig(**d)
    return OvisForConditionalGeneration(config, vision_model=vision_model, llm=llm)


def load_vision_model(path: str) -> PreTrainedModel:
    """Loads the vision tower of a hub id or folder: a vision model, or the vision half of CLIP/SigLIP."""
    config = AutoConfig.from_pretrained(path)
    config = backbone_config(getattr(config, "vision_config", None) or config)
    model_class = MODEL_MAPPING[type(config)]
    return model_class.from_pretrained(path, config=config)
