"""One entry point for saved folders: detect the source layout, convert to the target layout.

    convert_checkpoint(src, dst, to="openovis")        # official 1.x/2/2.5, transformers Ovis2 or openovis in
    detect_layout(src)                                  # "official" | "official-2.5" | "hf-ovis2" | "openovis"

Official (AIDC-AI remote code) -> openovis writes a complete folder that `OvisPipeline.from_pretrained`
loads: weights, config, the tokenizer with the Ovis tokens added (the official tokenizers have none:
the official code uses placeholder ids -200 image, -300 atom, -301.. indicators), the processor
config, the official chat template with its default system prompt, and a generation config that
stops at the end of a turn. Every consent a conversion needs is a keyword (a ``--flag`` on the
command line); a refusal names what would change and the flag that accepts it.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, GenerationConfig

from openovis.builders import CLIP_MEAN, CLIP_STD
from openovis.configuration import OvisConfig
from openovis.constants import IMAGE_ATOM, INDICATOR_TOKENS_OVIS25
from openovis.convert.official import (
    BACKBONE,
    _num_indicators,
    official25_state_dict_to_openovis,
    official25_vit_config,
    official_state_dict_to_openovis,
    openovis_config_from_official,
    openovis_config_from_official25,
    openovis_state_dict_to_official,
    openovis_state_dict_to_official25,
)
from openovis.convert.ovis2_hf import (
    StateDict,
    checkpoint_state_dict,
    convert_hf_ovis2_checkpoint,
    copy_passthrough_files,
    read_safetensors,
    write_safetensors,
)
from openovis.modeling.ovis import OvisForConditionalGeneration
from openovis.options import CheckpointLayout, ConversionTarget, check_choice
from openovis.processing.image import SIGLIP_MEAN, SIGLIP_STD, ImageProcessingConfig
from openovis.processing.navit_image import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from openovis.processing.processor import OvisProcessor, add_ovis_tokens

logger = logging.getLogger(__name__)

OFFICIAL_MODEL_TYPE = "ovis"
"""``model_type`` of the official configs (architectures ``["Ovis"]``)."""
OFFICIAL_MAX_PARTITION = 9
"""The official Ovis1.6/Ovis2 ``preprocess_inputs`` default."""

# SigLIP's attention-pooling head: saved by the official Ovis1.6, never used by it (Ovis reads the
# patch features), absent from openovis's SigLIP backbone.
SIGLIP_POOLING_HEAD = (BACKBONE + "vision_model.head.", BACKBONE + "head.")

QWEN_SYSTEM_PROMPT = "You are a helpful assistant."
"""The official Ovis2 ``QwenConversationFormatter`` default system prompt."""

# The official conversation formatters as chat templates (openovis's processor renders with them).
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ raise_exception('Gemma2 (Ovis1.6) has no system prompt') }}"
    "{% else %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' }}"
    "{{ message['content'] + '<end_of_turn>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
"""Ovis1.6's ``GemmaConversationFormatter``: no system prompt (a system message is refused, as there)."""

QWEN_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + QWEN_SYSTEM_PROMPT + "<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Ovis2's ``QwenConversationFormatter`` (ChatML) with its default system prompt."""

QWEN3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' and '<think>' not in message['content'] %}"
    "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + message['content'] + '<|im_end|>\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if not enable_thinking | default(false) %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)
"""Ovis2.5's ``Qwen3ConversationFormatter`` (ChatML, no default system prompt): with thinking off (the
default) the generation prompt ends with the empty ``<think>\n\n</think>\n\n`` preface; with
``enable_thinking=True`` the model writes its own. An assistant turn without a ``<think>`` block
gets the empty one, as the official formatter does, so every turn renders as a prefix of the next."""

FORMATTER_TEMPLATES = {
    "GemmaConversationFormatter": GEMMA_TEMPLATE,
    "QwenConversationFormatter": QWEN_TEMPLATE,
    "Qwen3ConversationFormatter": QWEN3_TEMPLATE,
}
END_OF_TURN = {
    "GemmaConversationFormatter": "<end_of_turn>",
    "QwenConversationFormatter": "<|im_end|>",
    "Qwen3ConversationFormatter": "<|im_end|>",
}
"""The token each official formatter ends a turn with (generation stops there)."""
# openovis text model type -> the official formatter (for exports).
FORMATTERS = {
    "gemma2": "GemmaConversationFormatter",
    "qwen2": "QwenConversationFormatter",
    "qwen3": "Qwen3ConversationFormatter",
}


# ---- layouts ----------------------------------------------------------------------------------------
def detect_layout(folder: str | Path) -> CheckpointLayout:
    """The layout of a saved folder, read off its ``config.json``.

    ``model_type: ovis`` with ``visual_tokenizer_config`` is the official Ovis 1.x/2 layout, with
    ``vit_config`` the official Ovis2.5 one; ``ovis2`` is transformers' Ovis2; an `OvisConfig` is openovis.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a saved model folder (no config.json)")
    config = json.loads(path.read_text())
    model_type = config.get("model_type")
    if model_type == OFFICIAL_MODEL_TYPE and "visual_tokenizer_config" in config:
        return "official"
    if model_type == OFFICIAL_MODEL_TYPE and "vit_config" in config:
        return "official-2.5"
    if model_type == OvisConfig.model_type:
        return "openovis"
    if model_type == "ovis2":
        return "hf-ovis2"
    raise ValueError(
        f"{path}: unknown layout (model_type={model_type!r}); expected the official Ovis "
        "(visual_tokenizer_config or vit_config), transformers' Ovis2 (model_type ovis2) or openovis"
    )


# ---- official -> openovis ---------------------------------------------------------------------------
def _drop_pooling_head(state: StateDict, notes: list[str]) -> StateDict:
    dropped = sorted(k for k in state if k.startswith(SIGLIP_POOLING_HEAD))
    if dropped:
        notes.append(
            f"dropped {len(dropped)} tensors of SigLIP's attention-pooling head "
            f"({SIGLIP_POOLING_HEAD[0]}*): saved by the official code, never used by Ovis"
        )
    return {k: v for k, v in state.items() if k not in dropped}


def _image_stats(src: Path, vision_model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalization of the backbone: the folder's ``preprocessor_config.json``, else by backbone."""
    default = (CLIP_MEAN, CLIP_STD) if vision_model_type.startswith("aimv2") else (SIGLIP_MEAN, SIGLIP_STD)
    path = src / "preprocessor_config.json"
    if path.is_file():
        stats = json.loads(path.read_text())
        if "image_mean" in stats and "image_std" in stats:
            return tuple(stats["image_mean"]), tuple(stats["image_std"])
    return default


def _resize_vocab(
    state: StateDict, config: OvisConfig, rows: int, notes: list[str]
) -> tuple[StateDict, OvisConfig]:
    """Grows the LLM's embedding (and an untied lm_head) to ``rows``; new rows are the mean row."""
    tc = config.text_config
    old = tc.vocab_size
    if rows <= old:
        return state, config
    state = dict(state)
    for key in ("llm.model.embed_tokens.weight", "llm.lm_head.weight"):
        if key in state:
            weight = state[key]
            mean = weight.float().mean(dim=0, keepdim=True).to(weight.dtype)
            state[key] = torch.cat([weight, mean.expand(rows - old, -1)])
    tc.vocab_size = rows
    notes.append(f"resized the text vocabulary {old} -> {rows} (new rows: the mean embedding)")
    return state, config


def _write_generation_config(dst: Path, processor: OvisProcessor, formatter: str | None) -> None:
    tokenizer = processor.tokenizer
    stop = [tokenizer.convert_tokens_to_ids(END_OF_TURN[formatter])] if formatter in END_OF_TURN else []
    stop += [i for i in processor.stop_token_ids if i not in stop and i != tokenizer.unk_token_id]
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop,
        pad_token_id=processor.pad_token_id,
        do_sample=False,
    ).save_pretrained(dst)


def _official_model(
    official: dict[str, Any], state: StateDict, notes: list[str]
) -> tuple[OvisConfig, StateDict]:
    """The openovis config and state dict of an official folder's config and weights (1.x/2 or 2.5)."""
    if "vit_config" in official:  # Ovis2.5
        config = openovis_config_from_official25(official)
        head = state.get("visual_tokenizer.head.0.weight")
        if head is not None and config.visual_vocab_size - head.shape[0] != config.num_indicators:
            raise ValueError(
                f"visual_tokenizer.head.0.weight: {head.shape[0]} words with visual_vocab_size "
                f"{config.visual_vocab_size} leaves {config.visual_vocab_size - head.shape[0]} indicator rows; "
                f"Ovis2.5 has {config.num_indicators}"
            )
        return config, official25_state_dict_to_openovis(state)
    state = _drop_pooling_head(state, notes)
    config = openovis_config_from_official(official, num_indicators=_num_indicators(official, state))
    return config, official_state_dict_to_openovis(state, config.vision_config)


def _official_image_config(
    config: OvisConfig, mean: tuple[float, ...], std: tuple[float, ...], max_partition: int
) -> ImageProcessingConfig:
    """The processor's image settings for a converted official model: crops (1.x/2) or, for Ovis2.5,
    native resolution with the official ``preprocess_inputs`` pixel budget (448², 1344·1792)."""
    vc = config.vision_config
    common = {"patch_size": int(vc.patch_size), "hidden_stride": config.hidden_stride}
    common |= {"image_size": int(vc.image_size), "image_mean": mean, "image_std": std}
    if config.native_resolution:
        return ImageProcessingConfig(
            **common,
            native_resolution=True,
            min_pixels=DEFAULT_MIN_PIXELS,
            max_pixels=DEFAULT_MAX_PIXELS,
            temporal_patch_size=vc.temporal_patch_size,
        )
    return ImageProcessingConfig(**common, max_partition=max_partition)


def official_folder_to_openovis(
    src: Path, dst: Path, *, max_shard_size: str = "5GB", max_partition: int = OFFICIAL_MAX_PARTITION
) -> list[str]:
    """Official Ovis 1.x/2/2.5 folder -> a complete openovis folder; returns notes for the log."""
    notes: list[str] = []
    official = json.loads((src / "config.json").read_text())
    config, state = _official_model(official, read_safetensors(src), notes)

    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    added = add_ovis_tokens(tokenizer, config.indicator_tokens, chatml=False)
    formatter = official.get("conversation_formatter_class")
    template = FORMATTER_TEMPLATES.get(formatter)
    if template is None and not tokenizer.chat_template:
        raise ValueError(
            f"conversation_formatter_class={formatter!r}: no chat template known for it; "
            f"known: {sorted(FORMATTER_TEMPLATES)}"
        )
    if template is not None:
        tokenizer.chat_template = template
    atom_id = tokenizer.convert_tokens_to_ids(IMAGE_ATOM)
    indicator_ids = tokenizer.convert_tokens_to_ids(list(config.indicator_tokens))
    spare = config.text_config.vocab_size - max(atom_id, *indicator_ids) - 1
    where = "in spare embedding rows" if spare >= 0 else "beyond the embedding rows"
    notes.append(
        f"added {added} tokens to the tokenizer ({where}): {IMAGE_ATOM}={atom_id}, indicators {indicator_ids}"
        if added
        else f"the tokenizer already has {IMAGE_ATOM}={atom_id} and indicators {indicator_ids}"
    )
    state, config = _resize_vocab(state, config, max(len(tokenizer), config.text_config.vocab_size), notes)
    config.image_atom_id = atom_id
    config.indicator_token_ids = list(indicator_ids)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config.text_config, key, None)
        if value is not None:
            setattr(config, key, value)
    state = checkpoint_state_dict(OvisForConditionalGeneration, config, state)

    mean, std = _image_stats(src, config.vision_config.model_type)
    image_config = _official_image_config(config, mean, std, max_partition)
    processor = OvisProcessor(tokenizer, image_config, config.indicator_tokens, chat_format="template")
    processor._check_model_ids(config)

    dst.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(dst)
    write_safetensors(state, dst, max_shard_size)
    processor.save_pretrained(dst)
    _write_generation_config(dst, processor, formatter)
    images = (
        f"native resolution, {image_config.min_pixels} to {image_config.max_pixels} pixels"
        if image_config.native_resolution
        else f"crop {image_config.image_size}px, max_partition {max_partition}"
    )
    notes.append(f"processor: {images}, mean {list(mean)}, std {list(std)}; chat template of {formatter}")
    return notes


# ---- openovis -> official ---------------------------------------------------------------------------
def _official_backbone_config(config: OvisConfig) -> dict[str, Any]:
    vc = config.vision_config
    if vc.model_type != "aimv2_vision_model":
        return vc.to_dict()
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels")
    fields += ("image_size", "patch_size", "rms_norm_eps", "attention_dropout")
    return {
        "model_type": "aimv2",
        **{f: getattr(vc, f) for f in fields},
        "qkv_bias": vc.qkv_bias,
        "use_bias": vc.mlp_bias,
        "projection_dropout": 0.0,
    }


def official_config_from_openovis(config: OvisConfig) -> dict[str, Any]:
    """The official ``config.json`` (as a dict) of an openovis config (the Ovis2.5 form for a NaViT model)."""
    vc, tc = config.vision_config, config.text_config
    if config.native_resolution:
        return {
            "architectures": ["Ovis"],
            "model_type": "ovis",
            "conversation_formatter_class": FORMATTERS.get(tc.model_type),
            "hidden_size": tc.hidden_size,
            "llm_config": tc.to_dict(),
            "visual_vocab_size": config.visual_vocab_size,
            "vit_config": official25_vit_config(vc),
        }
    kind = "aimv2" if vc.model_type == "aimv2_vision_model" else vc.model_type.split("_")[0]
    return {
        "architectures": ["Ovis"],
        "model_type": "ovis",
        "conversation_formatter_class": FORMATTERS.get(tc.model_type),
        "disable_tie_weight": not getattr(tc, "tie_word_embeddings", False),
        "hidden_size": tc.hidden_size,
        "multimodal_max_length": 8192,
        "llm_config": tc.to_dict(),
        "visual_tokenizer_config": {
            "model_type": f"{kind}_visual_tokenizer",
            "vocab_size": config.visual_vocab_size,
            "hidden_stride": config.hidden_stride,
            "tokenize_function": config.tokenize_function,
            "tau": 1.0,
            "depths": None,
            "drop_cls_token": False,
            "backbone_config": _official_backbone_config(config),
        },
    }


def check_official_compatible(config: OvisConfig, *, accept_pre_norm: bool = False) -> None:
    """Raises ``ValueError`` naming every field the official Ovis code cannot express."""
    problems = []
    if config.connector != "vet":
        problems.append(f"connector={config.connector!r}: the official Ovis has only the VET")
    if config.tokenize_temperature != 1.0:
        problems.append(f"tokenize_temperature={config.tokenize_temperature}: the official code has none")
    if config.head_norm_eps != 1e-5:
        problems.append(f"head_norm_eps={config.head_norm_eps}: the official head LayerNorm uses 1e-5")
    if config.native_resolution and tuple(config.indicator_tokens) != INDICATOR_TOKENS_OVIS25:
        problems.append(
            f"indicator_tokens={config.indicator_tokens!r}: the official Ovis2.5 has 4 (image, video)"
        )
    if config.native_resolution and config.tokenize_function != "softmax":
        problems.append(f"tokenize_function={config.tokenize_function!r}: the official Ovis2.5 uses softmax")
    if config.backbone_feature == "post_norm" and not accept_pre_norm:
        problems.append(
            "backbone_feature='post_norm': the official code reads the encoder before its final norm; "
            "pass accept_pre_norm=True (--accept-pre-norm) to export anyway (different logits)"
        )
    if problems:
        raise ValueError("cannot express this model in the official Ovis layout:\n  " + "\n  ".join(problems))


def openovis_folder_to_official(
    src: Path, dst: Path, *, accept_pre_norm: bool = False, max_shard_size: str = "5GB"
) -> list[str]:
    """openovis folder -> official-layout folder (weights, config; tokenizer and processor files copied)."""
    config = OvisConfig.from_pretrained(src)
    check_official_compatible(config, accept_pre_norm=accept_pre_norm)
    state = checkpoint_state_dict(OvisForConditionalGeneration, config, read_safetensors(src))
    if config.native_resolution:
        official = openovis_state_dict_to_official25(state)
    else:
        official = openovis_state_dict_to_official(state, config.vision_config)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(official_config_from_openovis(config), indent=2) + "\n")
    write_safetensors(official, dst, max_shard_size)
    copy_passthrough_files(src, dst)
    processor_file = src / "processor_config.json"
    if processor_file.exists():
        shutil.copy2(processor_file, dst / processor_file.name)
        image = json.loads(processor_file.read_text()).get("image_processing", {})
        if "image_mean" in image:  # what the official code reads its normalization from
            side = image.get("image_size")
            stats = {"image_mean": image["image_mean"], "image_std": image["image_std"]}
            if not image.get("native_resolution"):  # the NaViT resizes each image itself
                stats |= {"size": {"height": side, "width": side}} if side else {}
            (dst / "preprocessor_config.json").write_text(json.dumps(stats, indent=2) + "\n")
    notes = [
        "wrote the official layout; the tokenizer keeps the Ovis tokens (the official code ignores them)"
    ]
    if config.vision_config.model_type.startswith("siglip"):
        notes.append("SigLIP's attention-pooling head is not written (the official code does not use it)")
    return notes


# ---- one entry point --------------------------------------------------------------------------------
def convert_checkpoint(
    src_dir: str | Path,
    dst_dir: str | Path,
    *,
    to: ConversionTarget = "openovis",
    official_numerics: bool = False,
    accept_post_norm: bool = False,
    accept_pre_norm: bool = False,
    max_shard_size: str = "5GB",
) -> list[str]:
    """Converts a saved folder of any known layout (`detect_layout`) into the ``to`` layout.

    Args:
        src_dir: Source folder.
        dst_dir: Output folder.
        to: ``openovis``, ``official`` or ``hf-ovis2``.
        official_numerics: transformers Ovis2 -> openovis: the official pre-norm features.
        accept_post_norm: -> ``hf-ovis2`` of a ``pre_norm`` model (transformers applies the final norm).
        accept_pre_norm: -> ``official`` of a ``post_norm`` model (the official code skips the final norm).
        max_shard_size: Largest safetensors shard written.

    Returns:
        Notes on what was changed (dropped tensors, added tokens, resized vocabulary, ...).
    """
    check_choice("to", to, ConversionTarget)
    src, dst = Path(src_dir), Path(dst_dir)
    layout = detect_layout(src)
    if layout == to or (layout == "official-2.5" and to == "official"):
        raise ValueError(f"{src}: already in the {to} layout")
    if layout != "openovis" and to != "openovis":  # through openovis
        with tempfile.TemporaryDirectory() as tmp:
            notes = convert_checkpoint(
                src, tmp, to="openovis", official_numerics=official_numerics, max_shard_size=max_shard_size
            )
            return notes + convert_checkpoint(
                tmp,
                dst,
                to=to,
                accept_post_norm=accept_post_norm,
                accept_pre_norm=accept_pre_norm,
                max_shard_size=max_shard_size,
            )
    if layout in ("official", "official-2.5"):
        notes = official_folder_to_openovis(src, dst, max_shard_size=max_shard_size)
    elif layout == "hf-ovis2":
        feature = "pre_norm" if official_numerics else "post_norm"
        convert_hf_ovis2_checkpoint(
            src, dst, "hf_to_openovis", backbone_feature=feature, max_shard_size=max_shard_size
        )
        notes = [f"backbone_feature={feature}", *hf_ovis2_processor(src, dst)]
    elif to == "official":
        notes = openovis_folder_to_official(
            src, dst, accept_pre_norm=accept_pre_norm, max_shard_size=max_shard_size
        )
    else:  # openovis -> hf-ovis2
        convert_hf_ovis2_checkpoint(
            src, dst, "openovis_to_hf", accept_post_norm=accept_post_norm, max_shard_size=max_shard_size
        )
        notes = []
    for note in notes:
        logger.info(note)
    return notes


def hf_ovis2_processor(src: Path, dst: Path) -> list[str]:
    """Writes the openovis processor of a folder converted from transformers' Ovis2; returns notes.

    The source's tokenizer (it already holds ``<IMG_ATOM>`` and the five indicators) and its chat
    template (else the official Ovis2 one, Qwen's with the default system prompt), its normalization
    (else CLIP's, as AIMv2's), and the official crop grid with at most the source's ``max_patches``
    crops. Crops are letterboxed as in the official Ovis2; transformers' processor stretches them
    (docs/conversion.md). A source without a tokenizer gets no processor, and a note saying so.
    """
    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if not any((src / name).is_file() for name in files):
        return ["no tokenizer in the source folder: no processor written (pass one to OvisProcessor)"]
    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    config = OvisConfig.from_pretrained(dst)
    if not tokenizer.chat_template:
        tokenizer.chat_template = FORMATTER_TEMPLATES["QwenConversationFormatter"]
    stats_file = src / "preprocessor_config.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    max_partition = int(stats.get("max_patches", OFFICIAL_MAX_PARTITION))
    mean, std = _image_stats(src, config.vision_config.model_type)
    image_config = _official_image_config(config, mean, std, max_partition)
    processor = OvisProcessor(tokenizer, image_config, config.indicator_tokens, chat_format="template")
    processor._check_model_ids(config)
    processor.save_pretrained(dst)
    if not (dst / "generation_config.json").exists():
        _write_generation_config(dst, processor, "QwenConversationFormatter")
    return [
        f"processor: crop {image_config.image_size}px (letterboxed), max_partition {max_partition}, "
        f"mean {list(mean)}, std {list(std)}"
    ]


def official_placeholder_map(config: Mapping[str, Any] | OvisConfig) -> dict[int, int]:
    """Official placeholder ids (-300 atom, -301.. indicators) -> the converted model's token ids."""
    atom = config["image_atom_id"] if isinstance(config, Mapping) else config.image_atom_id
    ids = config["indicator_token_ids"] if isinstance(config, Mapping) else config.indicator_token_ids
    return {-300: atom, **{-301 - i: t for i, t in enumerate(ids)}}
