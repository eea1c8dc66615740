"""Conversations -> token ids and labels, with exact label masks.

Records come as LLaVA/Ovis turns (``{"from": "human"|"gpt"|"system", "value": ...}``) or as
role/content messages (``{"role": "user"|"assistant"|"system", "content": str | parts}``); both
normalize to :class:`Message`. A chat format is a *renderer* ``render(messages, add_generation_prompt)
-> str``: the tokenizer's own chat template when it has one, else ChatML (``constants.IM_START`` /
``IM_END``). Turn-by-turn rendering gives exact supervision::

    render(m[:i])  ->  render(m[:i], gen=True)  ->  render(m[:i+1])      (m[i] an assistant turn)
                       '-- header, label -100 --'  '-- content + end, labelled --'

In a labelled piece, the labels run up to and including its last special token (the end-of-turn
token, ``<|im_end|>`` for ChatML, which is what generation stops on); anything the template puts
after it (ChatML's ``"\\n"``) is not supervised, because a model that stops at the end token never
emits it. Each ``<image>`` placeholder (one special token) is expanded into the image's layout
tokens after tokenization, so the text around it tokenizes exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from openovis.constants import CAPTION_TEMPLATE, IGNORE_INDEX, IM_END, IM_START, IMAGE_PLACEHOLDER
from openovis.skips import SkipReason, SkipSample

Role = Literal["system", "user", "assistant"]
Mode = Literal["train", "generate", "caption"]
RenderFn = Callable[[Sequence["Message"], bool], str]

ROLE_ALIASES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
}
"""Accepted speaker names (LLaVA ``from`` and chat ``role`` values), lower-cased."""


@dataclass(frozen=True)
class Message:
    """One normalized turn.

    Attributes:
        role: ``system``, ``user`` or ``assistant``.
        content: The text; images appear as ``<image>`` placeholders.
    """

    role: Role
    content: str


@dataclass
class TokenSequence:
    """Token ids with their labels (``IGNORE_INDEX`` where not supervised) and image spans.

    Attributes:
        ids: Token ids.
        labels: Same length as ``ids``.
        image_spans: ``[start, end)`` of each image's layout tokens, in order (after expansion).
    """

    ids: list[int]
    labels: list[int]
    image_spans: list[tuple[int, int]]

    @property
    def num_supervised(self) -> int:
        """Tokens that carry a label."""
        return sum(label != IGNORE_INDEX for label in self.labels)


# --------------------------------------------------------------------------- normalization


def check_text(text: Any, where: str) -> str:
    """Returns ``text`` if it is a string that is valid Unicode (encodable as UTF-8).

    Files read with ``errors="surrogateescape"`` keep undecodable bytes as lone surrogates, and JSON
    may contain escaped lone surrogates; both fail here.

    Raises:
        SkipSample: MALFORMED_RECORD (not a string) or INVALID_TEXT.
    """
    if not isinstance(text, str):
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"{where}: expected text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise SkipSample(SkipReason.INVALID_TEXT, f"{where}: {err.reason}") from err
    return text


def _content_text(content: Any, where: str) -> str:
    """A turn's content as text: a string, or a list of ``{"type": "text"|"image", ...}`` parts."""
    if isinstance(content, str):
        return check_text(content, where)
    if isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        pieces = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "image":
                pieces.append(IMAGE_PLACEHOLDER)
            elif kind == "text":
                pieces.append(check_text(part.get("text"), where))
            else:
                raise SkipSample(SkipReason.MALFORMED_RECORD, f"{where}: bad content part {part!r:.80}")
        return "".join(pieces)
    raise SkipSample(SkipReason.MALFORMED_RECORD, f"{where}: content of type {type(content).__name__}")


def _normalize_turn(turn: Any, index: int) -> Message:
    """One LLaVA-style or role/content turn -> :class:`Message`."""
    if isinstance(turn, Message):
        return turn
    where = f"turn {index}"
    if not isinstance(turn, Mapping):
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"{where}: not an object")
    if "from" in turn:
        speaker, content = turn.get("from"), turn.get("value")
    elif "role" in turn:
        speaker, content = turn.get("role"), turn.get("content")
    else:
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"{where}: needs 'from'/'value' or 'role'/'content'")
    if content is None:
        raise SkipSample(SkipReason.MALFORMED_RECORD, f"{where}: no content")
    role = ROLE_ALIASES.get(speaker.lower()) if isinstance(speaker, str) else None
    if role is None:
        raise SkipSample(SkipReason.UNKNOWN_ROLE, f"{where}: {speaker!r:.40}")
    return Message(role, _content_text(content, where))


def normalize_messages(turns: Any) -> list[Message]:
    """Normalizes a conversation (a list of turns in either style) into messages.

    Raises:
        SkipSample: EMPTY_CONVERSATION, MALFORMED_RECORD, UNKNOWN_ROLE or INVALID_TEXT.
    """
    if isinstance(turns, (str, bytes)) or not isinstance(turns, Sequence):
        raise SkipSample(
            SkipReason.MALFORMED_RECORD, f"conversation must be a list, got {type(turns).__name__}"
        )
    if not turns:
        raise SkipSample(SkipReason.EMPTY_CONVERSATION, "no turns")
    return [_normalize_turn(turn, i) for i, turn in enumerate(turns)]


def check_turn_order(messages: Sequence[Message], mode: Mode) -> None:
    """An optional leading system turn, then user/assistant alternating from user.

    Training conversations end with an assistant turn; generation prompts end with a user turn.

    Raises:
        SkipSample: EMPTY_CONVERSATION or BAD_TURN_ORDER.
    """
    body = messages[1:] if messages and messages[0].role == "system" else messages
    if not body:
        raise SkipSample(SkipReason.EMPTY_CONVERSATION, "no user or assistant turn")
    for i, msg in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg.role != expected:
            raise SkipSample(SkipReason.BAD_TURN_ORDER, f"turn {i}: expected {expected}, got {msg.role}")
    last = body[-1].role
    if mode == "train" and last != "assistant":
        raise SkipSample(SkipReason.BAD_TURN_ORDER, "a training conversation must end with an assistant turn")
    if mode == "generate" and last != "user":
        raise SkipSample(SkipReason.BAD_TURN_ORDER, "a generation prompt must end with a user turn")


# --------------------------------------------------------------------------- chat formats


def render_chatml(messages: Sequence[Message], add_generation_prompt: bool) -> str:
    """ChatML: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn; no default system prompt."""
    text = "".join(f"{IM_START}{m.role}\n{m.content}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


class TemplateRenderer:
    """A renderer using the tokenizer's own chat template (a class, not a closure, so it pickles
    into DataLoader workers started with ``spawn``).

    Args:
        tokenizer: A transformers tokenizer with a ``chat_template``.
        template_kwargs: Variables the template reads (e.g. ``enable_thinking`` of Qwen3 templates).
    """

    def __init__(self, tokenizer: Any, **template_kwargs: Any) -> None:
        self.tokenizer = tokenizer
        self.template_kwargs = template_kwargs

    def __call__(self, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        if not messages:
            return ""
        chat = [{"role": m.role, "content": m.content} for m in messages]
        return self.tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=add_generation_prompt, **self.template_kwargs
        )


@dataclass(frozen=True)
class _Piece:
    """A rendered stretch of text: the role it belongs to and whether it is supervised."""

    text: str
    role: Role
    supervised: bool


def _delta(before: str, after: str) -> str:
    """The text ``after`` adds to ``before``; a template that rewrites earlier turns is an error."""
    if not after.startswith(before):
        raise ValueError(
            "chat template is not prefix-consistent (rendering a longer conversation changed the text "
            "of earlier turns), so exact per-turn labels are impossible; use chat_format='chatml'"
        )
    return after[len(before) :]


def chat_pieces(messages: Sequence[Message], render: RenderFn, add_generation_prompt: bool) -> list[_Piece]:
    """Renders a conversation turn by turn into supervised and unsupervised pieces."""
    pieces: list[_Piece] = []
    prev = ""
    for i, msg in enumerate(messages):
        if msg.role == "assistant":
            head = render(messages[:i], True)
            pieces.append(_Piece(_delta(prev, head), "assistant", False))
            full = render(messages[: i + 1], False)
            pieces.append(_Piece(_delta(head, full), "assistant", True))
        else:
            full = render(messages[: i + 1], False)
            pieces.append(_Piece(_delta(prev, full), msg.role, False))
        prev = full
    if add_generation_prompt:
        pieces.append(_Piece(_delta(prev, render(messages, True)), "assistant", False))
    return pieces


# --------------------------------------------------------------------------- tokenization


@dataclass(frozen=True)
class TokenIds:
    """The ids the encoder needs from the tokenizer.

    Attributes:
        placeholder: Id of ``<image>``.
        reserved: Ids that must never come from text (the atom and the indicators).
        special: All special ids; the last one in a supervised piece ends its labels.
        bos_prefix: What the tokenizer puts before text by default (e.g. ``[bos]``), used by the
            ChatML and caption formats (a chat template writes its own).
        eos: End-of-sequence id, appended to captions.
    """

    placeholder: int
    reserved: frozenset[int]
    special: frozenset[int]
    bos_prefix: tuple[int, ...]
    eos: int | None


class ConversationEncoder:
    """Tokenizes conversations and captions with exact labels (images not yet expanded).

    Args:
        tokenizer: A transformers tokenizer with the Ovis special tokens added.
        render: The chat renderer (:func:`render_chatml` or a :class:`TemplateRenderer`).
        token_ids: Ids looked up once from the tokenizer.
        prepend_bos: Prepend ``token_ids.bos_prefix`` to chats (True for ChatML, False for templates).
        caption_template: Prompt before a caption; must contain one ``<image>``.
    """

    def __init__(
        self,
        tokenizer: Any,
        render: RenderFn,
        token_ids: TokenIds,
        prepend_bos: bool,
        caption_template: str = CAPTION_TEMPLATE,
    ) -> None:
        self.tokenizer = tokenizer
        self.render = render
        self.ids = token_ids
        self.prepend_bos = prepend_bos
        self.caption_template = caption_template

    def _encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if self.ids.reserved.intersection(ids):
            raise SkipSample(SkipReason.RESERVED_TOKEN, "text contains an image atom or indicator token")
        return ids

    def _supervised_labels(self, ids: list[int]) -> list[int]:
        """Labels for a supervised piece: up to and including its last special token."""
        end = len(ids)
        for j in range(len(ids) - 1, -1, -1):
            if ids[j] in self.ids.special:
                end = j + 1
                break
        return ids[:end] + [IGNORE_INDEX] * (len(ids) - end)

    def encode_chat(
        self, messages: Sequence[Message], mode: Mode, thinking: bool | None = None
    ) -> TokenSequence:
        """Token ids and labels of a conversation (``mode`` ``"train"`` or ``"generate"``).

        ``thinking`` sets the chat template's ``enable_thinking`` (None: the template's default);
        with Qwen3-style templates it decides whether the generation prompt leaves the model its own
        ``<think>`` block or closes an empty one.

        Raises:
            SkipSample: Bad turn order, a placeholder outside a user turn, or reserved tokens in text.
            ValueError: ``thinking`` with the ChatML format (it has no thinking switch).
        """
        check_turn_order(messages, mode)
        render = self.render
        if thinking is not None:
            if not isinstance(render, TemplateRenderer):
                raise ValueError(
                    "thinking: only a chat template (chat_format='template') can switch thinking"
                )
            render = TemplateRenderer(
                render.tokenizer, **{**render.template_kwargs, "enable_thinking": thinking}
            )
        generate = mode == "generate"
        ids = list(self.ids.bos_prefix) if self.prepend_bos else []
        labels = [IGNORE_INDEX] * len(ids)
        for piece in chat_pieces(messages, render, add_generation_prompt=generate):
            piece_ids = self._encode(piece.text)
            if piece.role != "user" and self.ids.placeholder in piece_ids:
                raise SkipSample(
                    SkipReason.PLACEHOLDER_MISMATCH, f"{IMAGE_PLACEHOLDER} in a {piece.role} turn"
                )
            ids += piece_ids
            supervised = piece.supervised and not generate
            labels += self._supervised_labels(piece_ids) if supervised else [IGNORE_INDEX] * len(piece_ids)
        return TokenSequence(ids, labels, [])

    def encode_caption(self, caption: str, *, with_caption: bool = True) -> TokenSequence:
        """``caption_template`` then the caption and eos; labels on the caption and eos only.

        Args:
            caption: The caption text.
            with_caption: False gives the prompt alone (no labels), for caption generation.
        """
        prompt = list(self.ids.bos_prefix) + self._encode(self.caption_template)
        if not with_caption:
            return TokenSequence(prompt, [IGNORE_INDEX] * len(prompt), [])
        if self.ids.eos is None:
            raise ValueError("eos_token: the tokenizer has no eos token, which caption mode appends")
        target = self._encode(check_text(caption, "caption")) + [self.ids.eos]
        if self.ids.placeholder in target:
            raise SkipSample(SkipReason.PLACEHOLDER_MISMATCH, f"{IMAGE_PLACEHOLDER} inside a caption")
        return TokenSequence(prompt + target, [IGNORE_INDEX] * len(prompt) + target, [])


# --------------------------------------------------------------------------- images and length


def expand_images(seq: TokenSequence, placeholder_id: int, layouts: Sequence[Sequence[int]]) -> TokenSequence:
    """Replaces the k-th ``<image>`` id with the k-th image's layout ids (labels -100).

    Raises:
        SkipSample: PLACEHOLDER_MISMATCH when the placeholder count differs from the image count.
    """
    positions = [i for i, t in enumerate(seq.ids) if t == placeholder_id]
    if len(positions) != len(layouts):
        raise SkipSample(
            SkipReason.PLACEHOLDER_MISMATCH,
            f"{len(positions)} {IMAGE_PLACEHOLDER} placeholders, {len(layouts)} images",
        )
    ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    prev = 0
    for pos, layout in zip(positions, layouts, strict=True):
        ids += seq.ids[prev:pos]
        labels += seq.labels[prev:pos]
        spans.append((len(ids), len(ids) + len(layout)))
        ids += layout
        labels += [IGNORE_INDEX] * len(layout)
        prev = pos + 1
    ids += seq.ids[prev:]
    labels += seq.labels[prev:]
    return TokenSequence(ids, labels, spans)


def truncate(seq: TokenSequence, max_length: int, supervised: bool) -> TokenSequence:
    """Cuts the sequence to ``max_length`` from the right without cutting an image span.

    If the cut falls inside an image's span, the whole image is cut (the caller drops its crops:
    the returned ``image_spans`` lists the images kept). A generation prompt is never cut.

    Raises:
        SkipSample: IMAGES_TOO_LONG (the images alone do not fit), TOO_LONG (a generation prompt
            that does not fit), NO_SUPERVISED_TOKENS (nothing supervised left).
    """
    image_tokens = sum(end - start for start, end in seq.image_spans)
    if image_tokens > max_length:
        raise SkipSample(SkipReason.IMAGES_TOO_LONG, f"{image_tokens} image tokens > max_length {max_length}")
    if len(seq.ids) > max_length and not supervised:
        raise SkipSample(SkipReason.TOO_LONG, f"{len(seq.ids)} tokens > max_length {max_length}")
    cut = min(len(seq.ids), max_length)
    for start, end in seq.image_spans:
        if start < cut < end:
            cut = start
    out = TokenSequence(seq.ids[:cut], seq.labels[:cut], [s for s in seq.image_spans if s[1] <= cut])
    if supervised and out.num_supervised == 0:
        why = "truncation to max_length removed every supervised token" if cut < len(seq.ids) else "no labels"
        raise SkipSample(SkipReason.NO_SUPERVISED_TOKENS, why)
    return out
