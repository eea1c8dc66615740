"""`OvisProcessor`: images + conversation (or caption, or prompt) -> the model's tensors for one sample.

One sample::

    input_ids       [L]  long   text ids; each image expanded to its layout (atoms + indicators)
    attention_mask  [L]  long   ones
    labels          [L]  long   IGNORE_INDEX except supervised tokens (modes "train" and "caption")
    pixel_values    [C, 3, S, S] float32 | None   crops of all images in order of appearance
    grids           list[(rows, cols)]            one per image kept

With native-resolution preprocessing (Ovis2.5, ``image_config.native_resolution``) each image is
``<IMG_START> atoms <IMG_END>`` and::

    pixel_values    [N, C*T*p*p] float32 | None   packed patch rows of all images (navit_image)
    grid_thw        [n, 3] long                   (t, h, w) in patches, one row per image kept
    grids           list[(h, w)]                  the same h, w

The k-th group of T atoms in ``input_ids`` takes crop k of ``pixel_values``. Text is validated and
tokenized before any pixel work, so bad samples are rejected cheaply, and crops are only computed
for images that survive truncation.

It is also a transformers ``ProcessorMixin`` (tokenizer + :class:`OvisImageProcessor`), registered with
``AutoProcessor`` by ``import openovis``: ``apply_chat_template`` takes transformers' multimodal
messages, and ``processor(text=..., images=..., return_tensors="pt")`` (the keyword form the
``image-text-to-text`` pipeline uses) returns a padded ``BatchFeature`` of model inputs.
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
from transformers import BatchFeature, ProcessorMixin

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
from openovis.processing.chat_template import CHATML_TEMPLATE, multimodal_template, split_multimodal
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
    check_image_pixels,
    image_crops,
    image_grid,
    load_image,
    load_image_bytes,
    to_rgb,
)
from openovis.processing.image_processor import OvisImageProcessor
from openovis.processing.layout import check_indicators, image_layout_tokens, native_layout_tokens
from openovis.processing.navit_image import NavitImageConfig, smart_resize
from openovis.processing.navit_image import process_image as navit_process_image
from openovis.skips import SkipReason, SkipSample

ChatFormat = Literal["auto", "chatml", "template"]
ImageInput = Image.Image | str | os.PathLike | bytes
TextInput = str | Sequence[Mapping[str, Any] | Message] | None

PROCESSOR_CONFIG_NAME = "processor_config.json"
# Keyword arguments transformers' loaders and pipelines pass that a local, already-built processor ignores.
_HF_LOAD_KWARGS = frozenset(
    {"trust_remote_code", "_from_auto", "_from_pipeline", "revision", "local_files_only", "cache_dir",
     "token", "force_download", "proxies", "subfolder", "use_fast", "code_revision", "user_agent"}
)  # fmt: skip
# Keyword arguments of the transformers call form that the Ovis encoding honours or safely ignores.
_HF_CALL_KWARGS = frozenset({"padding", "truncation", "add_special_tokens", "sanitize_control_tokens"})
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


class OvisProcessor(ProcessorMixin):
    """Turns images and text into model inputs, one sample (``__call__``) or a padded batch (``batch``).

    Args:
        tokenizer: A transformers tokenizer containing ``image_placeholder``, ``atom_token`` and
            ``indicator_tokens`` as single tokens (see :func:`add_ovis_tokens`).
        image_processor: Image preprocessing: an :class:`OvisImageProcessor` or its
            :class:`ImageProcessingConfig`.
        indicator_tokens: 5 (Ovis2) or 2 (Ovis 1.0, then ``max_partition`` must be 1) indicators.
        image_placeholder: What marks an image in user text.
        atom_token: One text position per visual token.
        chat_format: ``"template"`` uses the tokenizer's chat template, ``"chatml"`` the ChatML of
            ``openovis.constants``, ``"auto"`` the template when the tokenizer has one.
        max_length: Default truncation length, and the longest generation prompt (None: no limit).
            :meth:`from_model_config` defaults it to the LLM's ``max_position_embeddings``.
        caption_template: Prompt of caption mode; contains one ``image_placeholder``.
    """

    def __init__(
        self,
        tokenizer: Any,
        image_processor: OvisImageProcessor | ImageProcessingConfig,
        indicator_tokens: Sequence[str] = INDICATOR_TOKENS_OVIS2,
        *,
        image_placeholder: str = IMAGE_PLACEHOLDER,
        atom_token: str = IMAGE_ATOM,
        chat_format: ChatFormat = "auto",
        max_length: int | None = None,
        caption_template: str = CAPTION_TEMPLATE,
    ) -> None:
        if isinstance(image_processor, ImageProcessingConfig):
            image_processor = OvisImageProcessor(image_processor)
        image_config = image_processor.image_config
        check_indicators(indicator_tokens, image_config.max_partition, image_config.native_resolution)
        if chat_format not in get_args(ChatFormat):
            raise ValueError(f"chat_format: must be one of {get_args(ChatFormat)}, got {chat_format!r}")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length: must be a positive integer or None, got {max_length!r}")
        if caption_template.count(image_placeholder) != 1:
            raise ValueError(f"caption_template: must contain {image_placeholder!r} exactly once")
        self.indicator_tokens = tuple(indicator_tokens)
        self.image_placeholder = image_placeholder
        self.atom_token = atom_token
        self.max_length = max_length
        self.caption_template = caption_template
        super().__init__(tokenizer, image_processor)  # sets .tokenizer and .image_processor
        self.chat_format = self._resolve_chat_format(chat_format)
        # transformers tools render ``chat_template`` themselves; apply_chat_template below does not need it
        self.chat_template = (
            CHATML_TEMPLATE if self.chat_format == "chatml" else multimodal_template(tokenizer.chat_template)
        )
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
    def image_config(self) -> ImageProcessingConfig:
        """The image preprocessing configuration (of ``image_processor``)."""
        return self.image_processor.image_config

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

    def generation_defaults(self) -> dict[str, Any]:
        """What a model folder's ``generation_config.json`` needs from the processor: every stop id and the pad id."""
        return {"eos_token_id": self.stop_token_ids, "pad_token_id": self.pad_token_id}

    def layout_ids(self, grid: Grid) -> list[int]:
        """Token ids of one image with this grid (cached per grid)."""
        if grid not in self._layouts:
            cfg = self.image_config
            if cfg.native_resolution:
                tokens = native_layout_tokens(grid, cfg.hidden_stride, self.indicator_tokens, self.atom_token)
            else:
                tokens = image_layout_tokens(
                    grid, self.tokens_per_crop, self.indicator_tokens, self.atom_token
                )
            self._layouts[grid] = self.tokenizer.convert_tokens_to_ids(tokens)
        return self._layouts[grid]

    @property
    def navit_config(self) -> NavitImageConfig:
        """The native-resolution preprocessing of ``image_config`` (Ovis2.5)."""
        return NavitImageConfig.from_image_config(self.image_config)

    def image_grid(self, image: Image.Image) -> Grid:
        """The grid of an RGB image: its tile grid, or with native resolution its (h, w) in patches."""
        cfg = self.image_config
        if not cfg.native_resolution:
            return image_grid(image, cfg)
        nav = self.navit_config
        h, w = smart_resize(image.height, image.width, nav.factor, nav.min_pixels, nav.max_pixels)
        return (h // cfg.patch_size, w // cfg.patch_size)

    # ----------------------------------------------------------------------- one sample

    def _encode_text(self, text: TextInput, mode: Mode, thinking: bool | None = None) -> TokenSequence:
        if mode == "caption":
            if text is None:
                return self._encoder.encode_caption("", with_caption=False)
            return self._encoder.encode_caption(check_text(text, "caption"))
        if isinstance(text, str):
            if mode == "train":
                raise SkipSample(SkipReason.MALFORMED_RECORD, "train mode needs a conversation, not a string")
            return self._encoder.encode_chat([Message("user", check_text(text, "prompt"))], mode, thinking)
        return self._encoder.encode_chat(normalize_messages(text), mode, thinking)

    def _as_rgb(self, image: ImageInput) -> Image.Image:
        max_pixels = self.image_config.max_image_pixels
        if isinstance(image, Image.Image):
            check_image_pixels(image.width, image.height, max_pixels, "image")
            return to_rgb(image)
        if isinstance(image, (str, os.PathLike)):
            return load_image(image, max_pixels)
        if isinstance(image, (bytes, bytearray)):
            return load_image_bytes(bytes(image), max_pixels=max_pixels)
        raise TypeError(f"images: expected PIL images, paths or encoded bytes, got {type(image).__name__}")

    def _longest_token_chars(self) -> int:
        """Characters of the longest vocabulary entry (cached): no token covers more text than this."""
        if not hasattr(self, "_longest_token"):
            self._longest_token = max((len(t) for t in self.tokenizer.get_vocab()), default=1)
        return self._longest_token

    def check_prompt_length(self, text: TextInput, limit: int | None) -> None:
        """Refuses, before tokenizing, text that cannot fit in ``limit`` tokens whatever it says.

        Every token covers at most the longest vocabulary entry's characters, so text longer than
        ``limit`` times that (doubled for normalizers) surely has more than ``limit`` tokens.

        Raises:
            SkipSample: TOO_LONG, naming the limit.
        """
        if limit is None or text is None:
            return
        if isinstance(text, str):
            chars = len(text)
        else:
            chars = sum(len(_raw_content(m)) for m in text)
        if chars > 2 * limit * self._longest_token_chars():
            raise SkipSample(
                SkipReason.TOO_LONG,
                f"prompt of {chars:,} characters cannot fit in max_length {limit:,} tokens",
            )

    def _check_prompt_tokens(self, seq: TokenSequence, n_images: int, limit: int | None) -> None:
        """Refuses a generation prompt over ``limit`` tokens before any image is decoded.

        Counts each image at its smallest layout (one crop), so a prompt refused here can never fit.
        """
        if limit is None:
            return
        one = self.image_config.hidden_stride if self.image_config.native_resolution else 1
        smallest = n_images * (len(self.layout_ids((one, one))) - 1)  # the placeholder is replaced
        if len(seq.ids) + smallest > limit:
            raise SkipSample(
                SkipReason.TOO_LONG,
                f"prompt of {len(seq.ids) + smallest:,} tokens (at least) > max_length {limit:,}",
            )

    def __call__(
        self,
        conversation_or_text: TextInput = None,
        images: Sequence[ImageInput] | ImageInput | None = None,
        mode: Mode = "train",
        max_length: int | None = None,
        *,
        text: str | Sequence[str] | None = None,
        thinking: bool | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Processes one sample; with ``text=`` (the transformers form) a batch of rendered prompts.

        The transformers form ``processor(text=..., images=..., return_tensors="pt")`` is
        :meth:`encode_prompts`; everything below describes the Ovis form.

        Args:
            conversation_or_text: ``"train"``: a conversation (LLaVA turns, role/content dicts or messages) ending with
                an assistant turn. ``"generate"``: a conversation ending with a user turn, or a string
                (one user turn); the result ends with the assistant header. ``"caption"``: the caption
                (None: the caption prompt alone, for caption generation).
            images: The images for the ``<image>`` placeholders, in order (PIL images or paths).
            mode: ``"train"``, ``"generate"`` or ``"caption"``.
            max_length: Truncation length (default: the processor's).
            thinking: The chat template's ``enable_thinking`` (None: its default). For Ovis2.5
                (Qwen3) off closes an empty ``<think>`` block in the generation prompt, on lets the
                model think first.

        Returns:
            ``input_ids``, ``attention_mask``, ``labels`` (not in generation prompts), ``pixel_values``
            (None without images) and ``grids``; see the module docstring.

        Raises:
            SkipSample: The sample is unusable (bad conversation, placeholder mismatch, unreadable
                image, does not fit in ``max_length``).
        """
        if text is not None:
            if conversation_or_text is not None:
                raise TypeError(
                    "give the prompt text either positionally (Ovis form) or as text= (transformers form)"
                )
            return self.encode_prompts(text, images, max_length=max_length, **kwargs)
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)} (the transformers form needs text=)")
        if mode not in _MODES:
            raise ValueError(f"mode: must be one of {_MODES}, got {mode!r}")
        labelled = mode == "train" or (mode == "caption" and conversation_or_text is not None)
        limit = self.max_length if max_length is None else max_length
        if mode == "generate":
            self.check_prompt_length(conversation_or_text, limit)
        seq = self._encode_text(conversation_or_text, mode, thinking)
        return self._with_images(seq, images, labelled, max_length, check_prompt=mode == "generate")

    def _with_images(
        self,
        seq: TokenSequence,
        images: Sequence[ImageInput] | ImageInput | None,
        labelled: bool,
        max_length: int | None,
        check_prompt: bool = False,
    ) -> dict[str, Any]:
        """Expands the placeholders of ``seq`` with its images, truncates, makes crops (one sample).

        ``check_prompt`` refuses a generation prompt over the limit before any image is decoded.
        """
        limit = self.max_length if max_length is None else max_length
        if images is None:
            images = []
        elif isinstance(images, (Image.Image, str, os.PathLike, bytes, bytearray)):
            images = [images]
        if check_prompt:
            self._check_prompt_tokens(seq, len(images), limit)
        rgb = [self._as_rgb(img) for img in images]
        grids = [self.image_grid(img) for img in rgb]
        seq = expand_images(seq, self.placeholder_id, [self.layout_ids(g) for g in grids])
        seq = truncate(seq, len(seq.ids) if limit is None else limit, supervised=labelled)
        kept = len(seq.image_spans)
        out: dict[str, Any] = {
            "input_ids": torch.tensor(seq.ids, dtype=torch.long),  # [L]
            "attention_mask": torch.ones(len(seq.ids), dtype=torch.long),  # [L]
            "grids": grids[:kept],
        }
        if self.image_config.native_resolution:
            packed = [navit_process_image(img, self.navit_config) for img in rgb[:kept]]
            out["pixel_values"] = (
                torch.cat([p.pixel_values for p in packed]) if packed else None
            )  # [N, C·T·p²]
            out["grid_thw"] = torch.cat([p.grid_thw for p in packed]) if packed else None  # [n, 3]
        else:
            crops = [
                image_crops(img, grid, self.image_config)
                for img, grid in zip(rgb[:kept], grids[:kept], strict=True)
            ]
            out["pixel_values"] = torch.cat(crops) if crops else None  # [C, 3, S, S]
        if labelled:
            out["labels"] = torch.tensor(seq.labels, dtype=torch.long)  # [L]
        return out

    # ----------------------------------------------------------------------- transformers forms

    def encode_prompts(
        self,
        text: str | Sequence[str],
        images: Any = None,
        *,
        return_tensors: str | None = "pt",
        padding_side: PaddingSide | None = None,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        **kwargs: Any,
    ) -> BatchFeature:
        """Already rendered prompts (with ``<image>`` placeholders) -> padded model inputs.

        Args:
            text: One prompt or a batch of prompts.
            images: For one prompt, its images; for a batch, one list per prompt, or one flat list
                dealt out in placeholder order.
            return_tensors: ``"pt"`` (default) or None.
            padding_side: Default the tokenizer's.
            max_length: Longest prompt (default: the processor's); longer ones raise.
            add_special_tokens: Put the tokenizer's bos prefix first (ChatML format only, as
                :meth:`__call__` does; a chat template writes its own).

        Returns:
            ``input_ids [B, L]``, ``attention_mask [B, L]`` and, with images, ``pixel_values [C, 3, S, S]``.
        """
        unknown = set(kwargs) - _HF_CALL_KWARGS
        if unknown:
            raise TypeError(f"unexpected arguments: {sorted(unknown)}")
        texts = [text] if isinstance(text, str) else list(text)
        per_sample = _deal_images(texts, images, self.image_placeholder)
        bos = (
            list(self._encoder.ids.bos_prefix) if self.chat_format == "chatml" and add_special_tokens else []
        )
        samples = []
        for prompt, imgs in zip(texts, per_sample, strict=True):
            ids = self._encoder._encode(check_text(prompt, "text"))
            ids = ids if bos and ids[: len(bos)] == bos else bos + ids
            seq = TokenSequence(ids, [IGNORE_INDEX] * len(ids), [])
            samples.append(self._with_images(seq, imgs, False, max_length, check_prompt=True))
        side = padding_side or getattr(self.tokenizer, "padding_side", "right")
        batch = model_inputs(OvisCollator(self.pad_token_id, side)(samples))
        data = {k: v for k, v in batch.items() if v is not None and k != "labels"}
        return BatchFeature(data, tensor_type=return_tensors)

    def apply_chat_template(
        self,
        conversation: Sequence[Any],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        return_dict: bool = False,
        return_tensors: str | None = "pt",
        images: Sequence[ImageInput] | None = None,
        processor_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Renders (and optionally encodes) a conversation in transformers' message format.

        Contents may be strings with ``<image>`` placeholders or lists of ``{"type": "text", "text"}``
        and ``{"type": "image"[, "image" | "path" | "url": PIL or local path]}`` parts; images not
        given in the parts come from ``images``, in placeholder order. Rendering uses the processor's
        own chat format, exactly as training does. With ``tokenize=True`` and
        ``add_generation_prompt=True`` the ids are those of ``processor(messages, images, mode="generate")``.

        Returns:
            The prompt string; with ``tokenize=True`` the ``input_ids [1, L]``; with ``return_dict=True``
            a ``BatchFeature`` of ``input_ids``, ``attention_mask`` and ``pixel_values`` (with images).
        """
        if chat_template is not None:
            raise ValueError("chat_template: the Ovis processor renders with its own chat format")
        for key in ("continue_final_message", "return_assistant_tokens_mask"):
            if kwargs.pop(key, False):
                raise ValueError(f"{key}: not supported by the Ovis processor")
        if kwargs:
            raise TypeError(f"unexpected arguments: {sorted(kwargs)}")
        batched = bool(conversation) and not isinstance(conversation[0], Mapping)
        if batched and images is not None:
            raise ValueError("images: give the images inside the messages when passing several conversations")
        split = [split_multimodal(c) for c in (conversation if batched else [conversation])]
        chats = [normalize_messages(messages) for messages, _ in split]
        per_sample = [[*found, *(images or [])] or None for _, found in split]
        if not tokenize:
            rendered = [self._encoder.render(chat, add_generation_prompt) for chat in chats]
            return rendered if batched else rendered[0]
        if add_generation_prompt:  # exactly the ids of mode "generate" (left-padded when batched)
            batch = self.batch(chats, per_sample, mode="generate")
            data = {k: v for k, v in batch.items() if v is not None}
            out = BatchFeature(data, tensor_type=return_tensors)
        else:
            prompts = [self._encoder.render(chat, False) for chat in chats]
            out = self.encode_prompts(
                prompts, per_sample, return_tensors=return_tensors, **(processor_kwargs or {})
            )
        return out if return_dict else out["input_ids"]

    def batch(
        self,
        texts: Sequence[TextInput],
        images: Sequence[Sequence[ImageInput] | None] | None = None,
        mode: Mode = "generate",
        padding_side: PaddingSide | None = None,
        max_length: int | None = None,
        thinking: bool | None = None,
    ) -> dict[str, Any]:
        """Processes and pads several samples; errors raise (no skipping at inference).

        Args:
            texts: One text input per sample (see :meth:`__call__`).
            images: One list of images per sample (None: no images anywhere).
            mode: As in :meth:`__call__`.
            padding_side: Default left for ``"generate"`` (prompts end together), right otherwise.
            max_length: Truncation length (default: the processor's).
            thinking: The chat template's ``enable_thinking`` (see :meth:`__call__`).

        Returns:
            ``input_ids [B, L]``, ``attention_mask [B, L]``, ``labels [B, L]`` (when labelled) and
            ``pixel_values [sum C, 3, S, S] | None``: exactly what the model takes.
        """
        per_sample = images if images is not None else [None] * len(texts)
        if len(per_sample) != len(texts):
            raise ValueError(f"images: {len(per_sample)} image lists for {len(texts)} texts")
        samples = [
            self(t, imgs, mode, max_length, thinking=thinking)
            for t, imgs in zip(texts, per_sample, strict=True)
        ]
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

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> list[str]:
        """Writes ``processor_config.json``, ``preprocessor_config.json`` and the tokenizer files.

        ``AutoProcessor.from_pretrained`` finds the class in ``processor_config.json`` (registered by
        ``import openovis``); ``AutoImageProcessor`` reads ``preprocessor_config.json``.
        """
        if kwargs.get("push_to_hub"):
            raise ValueError("push_to_hub: save locally, then upload the folder")
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / PROCESSOR_CONFIG_NAME).write_text(
            json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        self.image_processor._processor_class = type(self).__name__
        files = list(self.image_processor.save_pretrained(path))
        files += list(self.tokenizer.save_pretrained(path))
        return [str(path / PROCESSOR_CONFIG_NAME), *map(str, files)]

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
    def from_pretrained(cls, directory: str | os.PathLike[str], **overrides: Any) -> OvisProcessor:  # type: ignore[override]
        """Loads a processor saved with :meth:`save_pretrained` (local files only, no network).

        ``overrides`` are image or processor fields; the hub arguments transformers' ``AutoProcessor``
        passes along (``trust_remote_code``, ``revision``, ...) are ignored.
        """
        from transformers import AutoTokenizer

        from_transformers = bool(overrides.get("_from_auto") or overrides.get("_from_pipeline"))
        overrides = {k: v for k, v in overrides.items() if k not in _HF_LOAD_KWARGS}
        if from_transformers:  # loaders pass their own options along (dtype, ...): keep only ours
            known = {f.name for f in dataclasses.fields(ImageProcessingConfig)} | set(_PROCESSOR_KEYS)
            overrides = {k: v for k, v in overrides.items() if k in known}

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
        if _get(config, "native_resolution", False):
            image_kwargs["native_resolution"] = True
            image_kwargs["temporal_patch_size"] = int(_get(vision, "temporal_patch_size", 1))
        image_over, proc_over = _split_overrides(overrides)
        proc_kwargs = {
            "atom_token": _get(config, "image_atom_token", IMAGE_ATOM),
            "max_length": model_max_length(config),
            **proc_over,
        }
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


def model_max_length(config: Any) -> int | None:
    """The LLM's ``max_position_embeddings`` (``config.text_config``), or None when it has none."""
    text = _get(config, "text_config", None)
    value = None if text is None else _get(text, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _raw_content(message: Any) -> str:
    """The text of one message (dict, Message or parts), for a length estimate; non-text is empty."""
    content = (
        message.get("content", message.get("value"))
        if isinstance(message, Mapping)
        else getattr(message, "content", "")
    )
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    return ""


def _deal_images(texts: Sequence[str], images: Any, placeholder: str) -> list[list[Any] | None]:
    """One image list per prompt: given per prompt (nested lists), or a flat list dealt in placeholder order."""
    if images is None:
        return [None] * len(texts)
    if isinstance(images, (Image.Image, str, os.PathLike)):
        images = [images]
    images = list(images)
    nested = all(im is None or (isinstance(im, Sequence) and not isinstance(im, str)) for im in images)
    if nested and len(images) == len(texts):
        return [list(im) if im is not None else None for im in images]
    out: list[list[Any] | None] = []
    start = 0
    for prompt in texts:
        n = prompt.count(placeholder)
        out.append(images[start : start + n] or None)
        start += n
    if start != len(images):
        raise ValueError(f"images: {len(images)} images for {start} {placeholder} placeholders in the text")
    return out


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
