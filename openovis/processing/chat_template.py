"""transformers' multimodal chat messages -> Ovis messages and their images.

transformers (and the ``image-text-to-text`` pipeline) write a user turn as a list of parts::

    {"role": "user", "content": [{"type": "image", "image": <PIL | path>}, {"type": "text", "text": "What?"}]}

An image part becomes the ``<image>`` placeholder at its place in the text; its image (under ``image``,
``path`` or ``url``, a PIL image or a local path) is collected in order. Plain string content (with
``<image>`` placeholders written in it) passes through unchanged. :func:`multimodal_template` makes a
string-content chat template accept part lists, for tools that render a processor's ``chat_template``
themselves; :data:`CHATML_TEMPLATE` is :func:`openovis.processing.conversation.render_chatml` so wrapped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from openovis.constants import IMAGE_PLACEHOLDER

_FLATTEN_PARTS = (
    "{%- set ns = namespace(messages=[]) -%}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set ns.messages = ns.messages + [message] -%}"
    "{%- else -%}{%- set text = namespace(value='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set text.value = text.value + '" + IMAGE_PLACEHOLDER + "' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set text.value = text.value + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set ns.messages = ns.messages + [{'role': message['role'], 'content': text.value}] -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- set messages = ns.messages -%}"
)

_CHATML = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def multimodal_template(template: str) -> str:
    """Wraps a chat template written for string contents so that it also takes part-list contents.

    A prologue rewrites each part-list content into a string (image parts -> ``<image>``) before the
    original template runs, so the rendering of string contents is unchanged.
    """
    return _FLATTEN_PARTS + template


CHATML_TEMPLATE = multimodal_template(_CHATML)
"""ChatML for string or multimodal-part content; no default system prompt (as ``render_chatml``)."""

_IMAGE_KEYS = ("image", "path", "url")


def split_multimodal(messages: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Turns part-list contents into strings with ``<image>`` placeholders; collects the images.

    Args:
        messages: Role/content (or LLaVA from/value) turns; contents are strings or part lists.

    Returns:
        The messages with string contents, and the images found in image parts, in order. An image
        part without an image (``{"type": "image"}``) contributes a placeholder only; its image must
        then be given separately.

    Raises:
        ValueError: An unknown part type, a text part without text, or a URL that is not a local path.
    """
    out: list[Any] = []
    images: list[Any] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str) or content is None or not isinstance(content, Sequence):
            out.append(message)
            continue
        pieces = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"message {i}: a text part needs a 'text' string")
                pieces.append(part["text"])
            elif kind == "image":
                pieces.append(IMAGE_PLACEHOLDER)
                found = next((part[k] for k in _IMAGE_KEYS if part.get(k) is not None), None)
                if found is not None:
                    images.append(_local_image(found, i))
            else:
                raise ValueError(f"message {i}: unsupported content part {kind!r} (use 'text' or 'image')")
        out.append({**message, "content": "".join(pieces)})
    return out, images


def _local_image(value: Any, index: int) -> Image.Image | str | os.PathLike:
    if isinstance(value, (Image.Image, os.PathLike)):
        return value
    if isinstance(value, str) and "://" not in value and not value.startswith("data:"):
        return value
    raise ValueError(
        f"message {index}: images must be PIL images or local paths (the processor fetches nothing); got {str(value)[:60]!r}"
    )
