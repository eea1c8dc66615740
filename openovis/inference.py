"""Inference: a model folder (``save_pretrained`` model + processor) as a small chat pipeline.

    pipe = OvisPipeline.from_pretrained("runs/tiny-shapes/stage3-qa/final")
    pipe.chat("What color is the circle?", images=["shape.png"])            # one shot
    history = pipe.new_conversation(); pipe.chat("...", images=[...], history=history)  # multi-turn
    pipe.generate_batch(conversations, images, max_new_tokens=8)            # batched greedy answers

Batches are left-padded so every prompt ends at the last column; generation is greedy by default
and stops at the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from openovis.constants import IMAGE_PLACEHOLDER


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Conversation:
    """A running multi-turn chat: messages so far and the images their placeholders refer to."""

    messages: list[dict[str, str]] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)


class OvisPipeline:
    """A model and its processor, ready to answer questions about images.

    Args:
        model: An `OvisForConditionalGeneration`.
        processor: The matching `OvisProcessor`.
    """

    def __init__(self, model: Any, processor: Any):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> OvisPipeline:
        """Loads a folder written by training (model + processor), onto ``device`` (None/auto: CUDA if present)."""
        from openovis.modeling.ovis import OvisForConditionalGeneration
        from openovis.processing.processor import OvisProcessor

        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json)")
        device = default_device() if device in (None, "auto") else torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = OvisForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device)
        return cls(model, OvisProcessor.from_pretrained(folder))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _generate_kwargs(self, max_new_tokens: int, do_sample: bool, **kwargs: Any) -> dict[str, Any]:
        stop = list(self.processor.stop_token_ids)
        return {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "eos_token_id": stop,
            "pad_token_id": self.processor.pad_token_id,
            **kwargs,
        }

    @torch.inference_mode()
    def generate_batch(
        self,
        conversations: Sequence[Any],
        images: Sequence[Sequence[Any] | None] | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Answers a batch of prompts (each a string or a conversation ending with a user turn)."""
        inputs = self.processor.batch(list(conversations), images, mode="generate")
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        if inputs.get("pixel_values") is not None:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**inputs, **self._generate_kwargs(max_new_tokens, do_sample, **kwargs))
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def new_conversation(self) -> Conversation:
        return Conversation()

    @torch.inference_mode()
    def chat(
        self,
        question: str,
        images: Sequence[Any] | None = None,
        history: Conversation | None = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        streamer: Any = None,
        **kwargs: Any,
    ) -> str:
        """Answers one question; with ``history`` the turn (and its answer) is appended to it.

        Images given here are added to the conversation; a ``<image>`` placeholder is put in front of
        the question for each image the question does not already place.
        """
        history = history if history is not None else Conversation()
        images = list(images or [])
        missing = len(images) - question.count(IMAGE_PLACEHOLDER)
        if missing > 0:
            question = f"{IMAGE_PLACEHOLDER}\n" * missing + question
        history.messages.append({"role": "user", "content": question})
        history.images.extend(images)
        sample = self.processor(history.messages, history.images or None, mode="generate")
        inputs = {
            "input_ids": sample["input_ids"][None].to(self.device),
            "attention_mask": sample["attention_mask"][None].to(self.device),
        }
        if sample["pixel_values"] is not None:
            inputs["pixel_values"] = sample["pixel_values"].to(self.device, self.model.dtype)
        out = self.model.generate(
            **inputs, streamer=streamer, **self._generate_kwargs(max_new_tokens, do_sample, **kwargs)
        )
        answer = self.processor.tokenizer.decode(
            out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        answer = answer.strip()
        history.messages.append({"role": "assistant", "content": answer})
        return answer
