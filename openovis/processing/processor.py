"""`OvisProcessor`: images + conversation (or caption, or prompt) -> the model's tensors for one sample.

One sample::

    input_ids       [L]  long   text ids; each image expanded to its layout (atoms + indicators)
    attention_mask  [L]  long   ones
    labels          [L]  long   IGNORE_INDEX except supervised tokens (modes "train" and "caption")
    pixel_values    [C, 3, S, S] float32 | None   crops of all images in order of appearance
    grids           list[(rows, cols)]            one per image kept

The k-th group of T atoms in ``input_ids`` takes crop k of ``pixel_values``. Text is validated and
tokenized before any pixel work, so bad samples are rejected cheaply, and crops are only computed
for images that survive truncation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from PIL import Image

from openovis.constants import (
    CAPTION_TEMPLATE,
    EOS_TOKEN,
    IGNORE_INDEX,
    IM_END,
    IM_START,
    IMAGE_ATOM,
    IMAGE_PLACEHOLDER,
    INDICATOR_TOKENS_OVIS2,
    PAD_TOKEN,
)
from openovis.processing.collator import OvisCollator, PaddingSide, model_inputs
from openovis.processing.conversation import (
    ConversationEncoder,
    Message,
    Mode,
    TemplateRenderer,
    TokenIds,
    TokenSequence,
    check_text,
    expand_images,
    normalize_messages,
    render_chatml,
    truncate,
)
from openovis.processing.image import (
    SIGLIP_MEAN,
    SIGLIP_STD,
    Grid,
    ImageProcessingConfig,
    image_crops,
    image_grid,
    load_image,
    to_rgb,
)
from openovis.processing.layout import check_indicators, image_layout_tokens
from openovis.skips import SkipReason, SkipSample

ChatFormat = Literal["auto", "chatml", "template"]
ImageInput = Image.Image | str | os.PathLike
TextInput = str | Sequence[Mapping[str, Any] | Message] | None

PROCESSOR_CONFIG_NAME = "processor_config.json"
_MODES = get_args(Mode)
_PROCESSOR_KEYS = (
    "indicator_tokens",
    "image_placeholder",
    "atom_token",
    "chat_format",
    "max_length",
    "caption_template",
)


def add_ovis_tokens(
    tokenizer: Any, indicator_tokens: Sequence[str] = INDICATOR_TOKENS_OVIS2, chatml: bool = True
) -> int:
    """Adds the Ovis special tokens (placeholder, atom, indicators; ChatML and pad if missing) to a tokenizer.

    The caller must resize the LLM's embedding table to ``len(tokenizer)`` afterwards.

    Returns:
        The number of tokens added.
    """
    wanted = [IMAGE_PLACEHOLDER, IMAGE_ATOM, *indicator_tokens]
    if chatml:
        wanted += [IM_START, IM_END]
    vocab = tokenizer.get_vocab()
    added = tokenizer.add_tokens([t for t in wanted if t not in vocab], special_tokens=True)
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if tokenizer.eos_token is None:
        added += tokenizer.add_special_tokens({"eos_token": EOS_TOKEN})
    return added


def _single_token_id(tokenizer: Any, token: str, field: str) -> int:
    """The id of ``token``, which must tokenize as exactly one token."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"{field}: {token!r} is not a single token of the tokenizer (got {len(ids)} ids); "
            "add the Ovis special tokens with openovis.processing.processor.add_ovis_tokens"
        )
    return int(ids[0])


def _bos_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The ids the tokenizer puts before text by default (``[bos]`` for Llama-style, none for Qwen)."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return tuple(full[:i])
    return ()


def _special_ids(tokenizer: Any) -> frozenset[int]:
    """All special token ids, including added special tokens."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    return frozenset(ids)


class OvisProcessor:
    """Turns images and text into model inputs, one sample (``__call__``) or a padded batch (``batch``).

    Args:
        tokenizer: A transformers tokenizer containing ``image_placeholder``, ``atom_token`` and
            ``indicator_tokens`` as single tokens (see :func:`add_ovis_tokens`).
        image_config: Image preprocessing.
        indicator_tokens: 5 (Ovis2) or 2 (Ovis 1.0, then ``max_partition`` must be 1) indicators.
        image_placeholder: What marks an image in user text.
        atom_token: One text position per visual token.
        chat_format: ``"template"`` uses the tokenizer's chat template, ``"chatml"`` the ChatML of
            ``openovis.constants``, ``"auto"`` the template when the tokenizer has one.
        max_length: Default truncation length (None: no limit).
        caption_template: Prompt of caption mode; contains one ``image_placeholder``.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_config: ImageProcessingConfig,
        indicator_tokens: Sequence[str] = INDICATOR_TOKENS_OVIS2,
        *,
        image_placeholder: str = IMAGE_PLACEHOLDER,
        atom_token: str = IMAGE_ATOM,
        chat_format: ChatFormat = "auto",
        max_length: int | None = None,
        caption_template: str = CAPTION_TEMPLATE,
    ) -> None:
        check_indicators(indicator_tokens, image_config.max_partition)
        if chat_format not in get_args(ChatFormat):
            raise ValueError(f"chat_format: must be one of {get_args(ChatFormat)}, got {chat_format!r}")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length: must be a positive integer or None, got {max_length!r}")
        if caption_template.count(image_placeholder) != 1:
            raise ValueError(f"caption_template: must contain {image_placeholder!r} exactly once")
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.indicator_tokens = tuple(indicator_tokens)
        self.image_placeholder = image_placeholder
        self.atom_token = atom_token
        self.max_length = max_length
        self.caption_template = caption_template
        self.chat_format = self._resolve_chat_format(chat_format)
        self.placeholder_id = _single_token_id(tokenizer, image_placeholder, "image_placeholder")
        self.atom_token_id = _single_token_id(tokenizer, atom_token, "atom_token")
        self.indicator_token_ids = tuple(
            _single_token_id(tokenizer, t, "indicator_tokens") for t in indicator_tokens
        )
        self.pad_token_id = self._find_pad_id()
        self._encoder = self._make_encoder()
        self._layouts: dict[Grid, list[int]] = {}

    # ----------------------------------------------------------------------- construction helpers

    def _resolve_chat_format(self, chat_format: ChatFormat) -> Literal["chatml", "template"]:
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if chat_format == "auto":
            return "template" if has_template else "chatml"
        if chat_format == "template" and not has_template:
            raise ValueError("chat_format: 'template' needs a tokenizer with a chat_template")
        if chat_format == "chatml":
            for token in (IM_START, IM_END):
                _single_token_id(self.tokenizer, token, "chat_format")
        return chat_format

    def _find_pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.convert_tokens_to_ids(PAD_TOKEN)):
            if candidate is not None and candidate != self.tokenizer.unk_token_id:
                return int(candidate)
        if self.tokenizer.eos_token_id is None:
            raise ValueError("pad_token: the tokenizer has neither a pad token nor an eos token to pad with")
        return int(self.tokenizer.eos_token_id)

    def _make_encoder(self) -> ConversationEncoder:
        chatml = self.chat_format == "chatml"
        ids = TokenIds(
            placeholder=self.placeholder_id,
            reserved=frozenset({self.atom_token_id, *self.indicator_token_ids}),
            special=_special_ids(self.tokenizer),
            bos_prefix=_bos_prefix(self.tokenizer),
            eos=self.tokenizer.eos_token_id,
        )
        render = render_chatml if chatml else TemplateRenderer(self.tokenizer)
        return ConversationEncoder(
            self.tokenizer, render, ids, prepend_bos=chatml, caption_template=self.caption_template
        )

    # ----------------------------------------------------------------------- properties

    @property
    def tokens_per_crop(self) -> int:
        """T, atoms per crop."""
        return self.image_config.tokens_per_crop

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids generation should stop on: the end-of-turn token that training supervises, and eos."""
        probe = [Message("user", "a"), Message("assistant", "b")]
        seq = self._encoder.encode_chat(probe, "train")
        supervised = [t for t, label in zip(seq.ids, seq.labels, strict=True) if label != IGNORE_INDEX]
        out = [supervised[-1]] if supervised and supervised[-1] in self._encoder.ids.special else []
        eos = self.tokenizer.eos_token_id
        return out + ([eos] if eos is not None and eos not in out else [])

    def layout_ids(self, grid: Grid) -> list[int]:
        """Token ids of one image with this grid (cached per grid)."""
        if grid not in self._layouts:
            tokens = image_layout_tokens(grid, self.tokens_per_crop, self.indicator_tokens, self.atom_token)
            self._layouts[grid] = self.tokenizer.convert_tokens_to_ids(tokens)
        return self._layouts[grid]

    # ----------------------------------------------------------------------- one sample

    def _encode_text(self, text: TextInput, mode: Mode) -> TokenSequence:
        if mode == "caption":
            if text is None:
                return self._encoder.encode_caption("", with_caption=False)
            return self._encoder.encode_caption(check_text(text, "caption"))
        if isinstance(text, str):
            if mode == "train":
                raise SkipSample(SkipReason.MALFORMED_RECORD, "train mode needs a conversation, not a string")
            return self._encoder.encode_chat([Message("user", check_text(text, "prompt"))], mode)
        return self._encoder.encode_chat(normalize_messages(text), mode)

    @staticmethod
    def _as_rgb(image: ImageInput) -> Image.Image:
        if isinstance(image, Image.Image):
            return to_rgb(image)
        if isinstance(image, (str, os.PathLike)):
            return load_image(image)
        raise TypeError(f"images: expected PIL images or paths, got {type(image).__name__}")

    def __call__(
        self,
        conversation_or_text: TextInput,
        images: Sequence[ImageInput] | ImageInput | None = None,
        mode: Mode = "train",
        max_length: int | None = None,
    ) -> dict[str, Any]:
        """Processes one sample.

        Args:
            conversation_or_text: ``"train"``: a conversation (LLaVA turns, role/content dicts or messages) ending with
                an assistant turn. ``"generate"``: a conversation ending with a user turn, or a string
                (one user turn); the result ends with the assistant header. ``"caption"``: the caption
                (None: the caption prompt alone, for caption generation).
            images: The images for the ``<image>`` placeholders, in order (PIL images or paths).
            mode: ``"train"``, ``"generate"`` or ``"caption"``.
            max_length: Truncation length (default: the processor's).

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` (not in generation prompts), ``pixel_values``
            (None without images) and ``grids``; see the module docstring.

        Raises:
            SkipSample: The sample is unusable (bad conversation, placeholder mismatch, unreadable
                image, does not fit in ``max_length``).
        """
        if mode not in _MODES:
            raise ValueError(f"mode: must be one of {_MODES}, got {mode!r}")
        labelled = mode == "train" or (mode == "caption" and conversation_or_text is not None)
        seq = self._encode_text(conversation_or_text, mode)
        if images is None:
            images = []
        elif isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        rgb = [self._as_rgb(img) for img in images]
        grids = [image_grid(img, self.image_config) for img in rgb]
        seq = expand_images(seq, self.placeholder_id, [self.layout_ids(g) for g in grids])
        limit = self.max_length if max_length is None else max_length
        seq = truncate(seq, len(seq.ids) if limit is None else limit, supervised=labelled)
        kept = len(seq.image_spans)
        crops = [
            image_crops(img, grid, self.image_config)
            for img, grid in zip(rgb[:kept], grids[:kept], strict=True)
        ]
        out: dict[str, Any] = {
            "input_ids": torch.tensor(seq.ids, dtype=torch.long),  # [L]
            "attention_mask": torch.ones(len(seq.ids), dtype=torch.long),  # [L]
            "pixel_values": torch.cat(crops) if crops else None,  # [C, 3, S, S]
            "grids": grids[:kept],
        }
        if labelled:
            out["labels"] = torch.tensor(seq.labels, dtype=torch.long)  # [L]
        return out

    def batch(
        self,
        texts: Sequence[TextInput],
        images: Sequence[Sequence[ImageInput] | None] | None = None,
        mode: Mode = "generate",
        padding_side: PaddingSide | None = None,
        max_length: int | None = None,
    ) -> dict[str, Any]:
        """Processes and pads several samples; errors raise (no skipping at inference).

        Args:
            texts: One text input per sample (see :meth:`__call__`).
            images: One list of images per sample (None: no images anywhere).
            mode: As in :meth:`__call__`.
            padding_side: Default left for ``"generate"`` (prompts end together), right otherwise.
            max_length: Truncation length (default: the processor's).

        Returns:
            ``input_ids [B, L]``, ``attention_mask [B, L]``, ``labels [B, L]`` (when labelled) and
            ``pixel_values [sum C, 3, S, S] | None``: exactly what the model takes.
        """
        per_sample = images if images is not None else [None] * len(texts)
        if len(per_sample) != len(texts):
            raise ValueError(f"images: {len(per_sample)} image lists for {len(texts)} texts")
        samples = [self(t, imgs, mode, max_length) for t, imgs in zip(texts, per_sample, strict=True)]
        side = padding_side or ("left" if mode == "generate" else "right")
        return model_inputs(OvisCollator(self.pad_token_id, side)(samples))

    # ----------------------------------------------------------------------- save / load

    def to_dict(self) -> dict[str, Any]:
        """The ``processor_config.json`` content."""
        return {
            "processor_class": type(self).__name__,
            "image_processing": self.image_config.to_dict(),
            "indicator_tokens": list(self.indicator_tokens),
            "image_placeholder": self.image_placeholder,
            "atom_token": self.atom_token,
            "chat_format": self.chat_format,
            "max_length": self.max_length,
            "caption_template": self.caption_template,
        }

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Writes ``processor_config.json`` and the tokenizer files into ``save_directory``."""
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / PROCESSOR_CONFIG_NAME).write_text(
            json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        self.tokenizer.save_pretrained(path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], tokenizer: Any, **overrides: Any) -> OvisProcessor:
        """Builds a processor from :meth:`to_dict` output; ``overrides`` are processor or image fields."""
        data = dict(data)
        data.pop("processor_class", None)
        image = dict(data.pop("image_processing", {}))
        for key in data:
            if key not in _PROCESSOR_KEYS:
                raise ValueError(f"{key}: unknown {PROCESSOR_CONFIG_NAME} field")
        image_over, proc_over = _split_overrides(overrides)
        image_config = ImageProcessingConfig.from_dict({**image, **image_over})
        kwargs = {**data, **proc_over}
        return cls(tokenizer, image_config, kwargs.pop("indicator_tokens", INDICATOR_TOKENS_OVIS2), **kwargs)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **overrides: Any) -> OvisProcessor:
        """Loads a processor saved with :meth:`save_pretrained` (local files only, no network)."""
        from transformers import AutoTokenizer

        path = Path(directory)
        config_file = path / PROCESSOR_CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"no {PROCESSOR_CONFIG_NAME} in {path}")
        data = json.loads(config_file.read_text(encoding="utf-8"))
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return cls.from_dict(data, tokenizer, **overrides)

    @classmethod
    def from_model_config(
        cls, config: Any, tokenizer: Any, *, image_stats: Mapping[str, Any] | None = None, **overrides: Any
    ) -> OvisProcessor:
        """Builds the processor that matches a model config.

        Reads ``config.vision_config.image_size``, ``config.vision_config.patch_size``,
        ``config.hidden_stride``, ``config.indicator_tokens`` and ``config.image_atom_token``; the
        mean/std come from ``image_stats`` (e.g. a backbone's ``preprocessor_config.json`` as a dict;
        its other keys are ignored), else SigLIP's 0.5/0.5. With 2 indicators ``max_partition``
        defaults to 1. If the config records ``image_atom_id`` / ``indicator_token_ids``, they must
        match the tokenizer.

        Args:
            config: The model config (any object with those attributes).
            tokenizer: The text tokenizer.
            image_stats: Mapping with ``image_mean`` / ``image_std``.
            **overrides: :class:`ImageProcessingConfig` fields or processor arguments.
        """
        vision = _get(config, "vision_config")
        stats = dict(image_stats or {})
        indicators = tuple(_get(config, "indicator_tokens", INDICATOR_TOKENS_OVIS2))
        image_kwargs: dict[str, Any] = {
            "image_size": _side(_get(vision, "image_size"), "vision_config.image_size"),
            "patch_size": _side(_get(vision, "patch_size"), "vision_config.patch_size"),
            "hidden_stride": int(_get(config, "hidden_stride", 1)),
            "image_mean": stats.get("image_mean", SIGLIP_MEAN),
            "image_std": stats.get("image_std", SIGLIP_STD),
        }
        if len(indicators) == 2:
            image_kwargs["max_partition"] = 1
        image_over, proc_over = _split_overrides(overrides)
        proc_kwargs = {"atom_token": _get(config, "image_atom_token", IMAGE_ATOM), **proc_over}
        processor = cls(
            tokenizer,
            ImageProcessingConfig(**{**image_kwargs, **image_over}),
            proc_kwargs.pop("indicator_tokens", indicators),
            **proc_kwargs,
        )
        processor._check_model_ids(config)
        return processor

    def _check_model_ids(self, config: Any) -> None:
        """Fails if the model config's recorded token ids disagree with this tokenizer."""
        atom_id = _get(config, "image_atom_id", None)
        if atom_id is not None and atom_id != self.atom_token_id:
            raise ValueError(f"image_atom_id: config says {atom_id}, the tokenizer says {self.atom_token_id}")
        indicator_ids = _get(config, "indicator_token_ids", None)
        if indicator_ids is not None and tuple(indicator_ids) != self.indicator_token_ids:
            raise ValueError(
                f"indicator_token_ids: config says {list(indicator_ids)}, the tokenizer says {list(self.indicator_token_ids)}"
            )


_MISSING = object()


def _get(obj: Any, name: str, default: Any = _MISSING) -> Any:
    """Attribute or mapping key ``name`` of ``obj``."""
    value = obj.get(name, _MISSING) if isinstance(obj, Mapping) else getattr(obj, name, _MISSING)
    if value is _MISSING:
        if default is _MISSING:
            raise ValueError(f"{name}: missing from the model config")
        return default
    return value


def _side(value: Any, field: str) -> int:
    """A size given as an int or a square (h, w) pair."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{field}: crops must be square, got {value!r}")
        value = value[0]
    if isinstance(value, Mapping):
        raise ValueError(f"{field}: expected an int, got {value!r}")
    return int(value)


def _split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits keyword overrides into image-config fields and processor arguments."""
    image_fields = {f.name for f in dataclasses.fields(ImageProcessingConfig)}
    image, proc = {}, {}
    for key, value in overrides.items():
        if key in image_fields:
            image[key] = value
        elif key in _PROCESSOR_KEYS:
            proc[key] = value
        else:
            raise TypeError(f"{key}: not an ImageProcessingConfig field nor an OvisProcessor argument")
    return image, proc
