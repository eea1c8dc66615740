"""Special tokens and fixed ids shared by the model, the processor and the data pipeline.

Token layout of one image (DESIGN §2, the transformers-Ovis2 / official Ovis2 order)::

    <IMG_START> atoms(crop 0) <IMG_GRID> [atoms(crop 1) <IMG_COL> atoms(crop 2) ... <IMG_ROW> ...] <IMG_END>

Crop 0 is the whole image when the grid is 1×1, else the global thumbnail followed by the grid crops.
Indicator i is VET row ``K - n + i`` (n = number of indicators).
"""

IMAGE_PLACEHOLDER = "<image>"
"""What a user writes in text where an image goes; the processor expands it."""

IMAGE_ATOM = "<IMG_ATOM>"
"""One text position per visual token; the model writes a visual embedding there."""

INDICATOR_TOKENS_OVIS2 = ("<IMG_START>", "<IMG_GRID>", "<IMG_COL>", "<IMG_ROW>", "<IMG_END>")
"""Ovis2 indicators in VET-row order (n = 5)."""

INDICATOR_TOKENS_OVIS25 = ("<IMG_START>", "<IMG_END>", "<VID_START>", "<VID_END>")
"""Ovis2.5 indicators (n = 4): an image is ``<IMG_START> atoms <IMG_END>`` at its native resolution;
the video pair is reserved (VET rows, as in the official code)."""

INDICATOR_TOKENS_OVIS1 = ("<IMG_START>", "<IMG_END>")
"""Ovis 1.0 indicators (n = 2): one square-padded image, start and end."""

THINK_END = "</think>"
"""Closes the thinking block of Qwen3-style chat templates (Ovis2.5)."""

IGNORE_INDEX = -100
"""Label value ignored by the loss."""

CAPTION_TEMPLATE = "<image>'s caption: "
"""Stage-1 caption prompt, as in the paper."""

# Chat (ChatML) tokens used when the LLM's tokenizer has no chat template of its own.
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|endoftext|>"
