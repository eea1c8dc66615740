"""Inference: a model folder (``save_pretrained`` model + processor) as a small chat pipeline.

    pipe = OvisPipeline.from_pretrained("runs/tiny-shapes/stage3-qa/final")
    pipe.chat("What color is the circle?", images=["shape.png"])            # one shot
    history = pipe.new_conversation(); pipe.chat("...", images=[...], history=history)  # multi-turn
    pipe.generate_batch(conversations, images, max_new_tokens=8)            # batched greedy answers

Batches are left-padded so every prompt ends at the last column; generation is greedy by default
and stops at the end-of-turn token. A prompt longer than the processor's ``max_length`` (default:
the LLM's ``max_position_embeddings``) less ``max_new_tokens`` is refused before any image is
decoded or the model is run (``SkipSample``, reason ``sequence too long``).

Loading (:func:`load_model`) verifies the folder's ``manifest.json`` first (see
:mod:`openovis.integrity`) and turns a damaged file into one :class:`CheckpointError` line.

and stops at the end-of-turn token. ``compile=True`` answers ``chat`` with a static KV cache and a
``torch.compile``-d decode step (:mod:`openovis.generation`); greedy answers are the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from openovis.constants import IMAGE_PLACEHOLDER, THINK_END
from openovis.integrity import CheckpointError, verify_folder


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    folder: str | Path,
    dtype: torch.dtype | None = None,
    verify: bool = True,
    config_overrides: dict[str, Any] | None = None,
) -> Any:
    """Loads an `OvisForConditionalGeneration` saved with ``save_pretrained``, checking it first.

    The one loading path of inference, evaluation, chat and resumed training.

    Args:
        folder: The model folder.
        dtype: Parameter dtype (None: as saved).
        verify: Check the files against the folder's manifest (sha256) before loading.
        config_overrides: Config values that replace the saved ones (e.g. ``vet_impl``).

    Raises:
        FileNotFoundError: Not a model folder.
        CheckpointError: A file is missing, truncated or corrupted (the message names it).
    """
    from safetensors import SafetensorError

    from openovis.modeling.ovis import OvisForConditionalGeneration

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json)")
    if verify:
        verify_folder(folder)
    kwargs = ({} if dtype is None else {"dtype": dtype}) | dict(config_overrides or {})
    try:
        return OvisForConditionalGeneration.from_pretrained(folder, **kwargs)
    except (SafetensorError, OSError, EOFError) as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{folder}: cannot load the model ({detail})") from err


def resolve_user_image(image: Any, image_root: str | Path | None) -> Any:
    """A path given by a user, resolved inside ``image_root`` when one is given (PIL images pass).

    Raises:
        SkipSample: PATH_ESCAPE for an absolute path, ``..`` or a symlink leaving the root.
    """
    if image_root is None or not isinstance(image, (str, Path)):
        return image
    from openovis.processing.image import resolve_image_path

    return resolve_image_path(image_root, str(image))


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
        compile: Answer ``chat`` through a static KV cache with a compiled decode step.
        max_cache_len: Static cache length (prompt + answer), with ``compile``.
    """

    def __init__(self, model: Any, processor: Any, compile: bool = False, max_cache_len: int = 2048):
        self.model = model.eval()
        self.processor = processor
        self.fast = None
        if compile:
            from openovis.generation import TokenStreamer

            self.fast = TokenStreamer.for_processor(
                self.model, processor, cache="static", compile=True, max_cache_len=max_cache_len
            )

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        verify: bool = True,
        compile: bool = False,
    ) -> OvisPipeline:
        """Loads a folder written by training (model + processor), onto ``device`` (None/auto: CUDA if present).

        Raises:
            FileNotFoundError: Not a model folder.
            CheckpointError: A damaged file (``verify`` checks the manifest's sha256 first).
        """
        from openovis.processing.processor import OvisProcessor

        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder} is not a saved model folder (no config.json)")
        device = default_device() if device in (None, "auto") else torch.device(device)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = load_model(folder, dtype, verify=verify).to(device)
        return cls(model, OvisProcessor.from_pretrained(folder), compile=compile)

    def prompt_limit(self, max_new_tokens: int) -> int | None:
        """Longest prompt in tokens: the processor's ``max_length`` (else the LLM's
        ``max_position_embeddings``) less room for ``max_new_tokens``; None when neither is known."""
        from openovis.processing.processor import model_max_length

        limit = self.processor.max_length or model_max_length(self.model.config)
        if limit is None:
            return None
        if max_new_tokens >= limit:
            raise ValueError(
                f"max_new_tokens: {max_new_tokens} leaves no room for a prompt in max_length {limit}"
            )
        return limit - max_new_tokens

    def prepare(
        self,
        conversation: Any,
        images: Sequence[Any] | None,
        max_new_tokens: int,
        thinking: bool | None = None,
    ) -> dict[str, Any]:
        """Processes one generation prompt (validated, length-checked, images decoded).

        ``thinking``: the chat template's ``enable_thinking`` (None: its default; Ovis2.5: off).

        Raises:
            SkipSample: The prompt is unusable (reason and detail say why), before the model runs.
        """
        limit = self.prompt_limit(max_new_tokens)
        return self.processor(conversation, images, mode="generate", max_length=limit, thinking=thinking)

    def generate_prepared(
        self,
        samples: Sequence[dict[str, Any]],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        **kwargs: Any,
    ) -> list[str]:
        """Answers prompts already processed by :meth:`prepare` (left-padded into one batch)."""
        from openovis.processing.collator import OvisCollator, model_inputs

        inputs = model_inputs(OvisCollator(self.processor.pad_token_id, "left")(list(samples)))
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        if inputs.get("pixel_values") is not None:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**inputs, **self._generate_kwargs(max_new_tokens, do_sample, **kwargs))
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]

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
        thinking: bool | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Answers a batch of prompts (each a string or a conversation ending with a user turn).

        Raises:
            SkipSample: A prompt is unusable (every prompt is processed before the model runs).
        """
        per_sample = images if images is not None else [None] * len(conversations)
        if len(per_sample) != len(conversations):
            raise ValueError(f"images: {len(per_sample)} image lists for {len(conversations)} prompts")
        samples = [
            self.prepare(c, imgs, max_new_tokens, thinking)
            for c, imgs in zip(conversations, per_sample, strict=True)
        ]
        return self.generate_prepared(samples, max_new_tokens, do_sample, **kwargs)

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
        thinking: bool | None = None,
        thinking_budget: int | None = None,
        **kwargs: Any,
    ) -> str:
        """Answers one question; with ``history`` the turn (and its answer) is appended to it.

        Images given here are added to the conversation; a ``<image>`` placeholder is put in front of
        the question for each image the question does not already place. ``thinking`` switches the
        chat template's thinking mode (Ovis2.5; None: the template's default, off).
        ``thinking_budget`` (with ``thinking=True``) caps the thinking phase: after that many tokens
        without ``</think>`` the block is closed and the answer generated with what is left of
        ``max_new_tokens``.
        """
        if thinking_budget is not None and (thinking is not True or thinking_budget < 1):
            raise ValueError("thinking_budget: a positive number of tokens, and only with thinking=True")
        history = history if history is not None else Conversation()
        images = list(images or [])
        missing = len(images) - question.count(IMAGE_PLACEHOLDER)
        if missing > 0:
            question = f"{IMAGE_PLACEHOLDER}\n" * missing + question
        messages = [*history.messages, {"role": "user", "content": question}]
        all_images = [*history.images, *images]
        # Processed before the history changes: a bad image or prompt leaves the conversation as it was.
        sample = self.prepare(messages, all_images or None, max_new_tokens, thinking)
        history.messages.append(messages[-1])
        history.images.extend(images)
        inputs = {
            "input_ids": sample["input_ids"][None].to(self.device),
            "attention_mask": sample["attention_mask"][None].to(self.device),
        }
        if sample["pixel_values"] is not None:
            inputs["pixel_values"] = sample["pixel_values"].to(self.device, self.model.dtype)
        if sample.get("grid_thw") is not None:
            inputs["grid_thw"] = sample["grid_thw"]
        if thinking_budget is not None:
            new = self._think_then_answer(
                inputs, thinking_budget, max_new_tokens, do_sample, streamer, **kwargs
            )
        elif self.fast is not None and not do_sample and not kwargs:
            new = self._fast_answer(inputs, max_new_tokens, streamer)
        else:
            out = self.model.generate(
                **inputs, streamer=streamer, **self._generate_kwargs(max_new_tokens, do_sample, **kwargs)
            )
            new = out[0, inputs["input_ids"].shape[1] :]
        answer = self.processor.tokenizer.decode(new, skip_special_tokens=True)
        answer = answer.strip()
        history.messages.append({"role": "assistant", "content": answer})
        return answer

    def _think_then_answer(
        self,
        inputs: dict[str, Any],
        budget: int,
        max_new_tokens: int,
        do_sample: bool,
        streamer: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Generates a thinking phase of at most ``budget`` tokens (stopping at ``</think>``), closes
        the block if the model did not, then the answer; returns all new ids ``[n]``."""
        tokenizer = self.processor.tokenizer
        end_think = tokenizer.convert_tokens_to_ids(THINK_END)
        if end_think is None or end_think == tokenizer.unk_token_id:
            raise ValueError(f"thinking_budget: the tokenizer has no {THINK_END} token")
        length = inputs["input_ids"].shape[1]
        first = self._generate_kwargs(min(budget, max_new_tokens), do_sample, **kwargs)
        first["eos_token_id"] = [*first["eos_token_id"], end_think]
        thought = self.model.generate(**inputs, streamer=streamer, **first)[0, length:]
        stopped = thought.numel() > 0 and int(thought[-1]) in first["eos_token_id"]
        if stopped and int(thought[-1]) != end_think:  # the model ended its turn while thinking
            return thought
        if not stopped:  # the budget ran out: close the block as the template writes it
            close = tokenizer.encode(f"\n{THINK_END}\n\n", add_special_tokens=False)
            thought = torch.cat([thought, torch.tensor(close, device=thought.device)])
        left = max_new_tokens - thought.numel()
        if left <= 0:
            return thought
        ids = torch.cat([inputs["input_ids"][0], thought])[None]  # [1, L + n]
        if streamer is not None and hasattr(streamer, "next_tokens_are_prompt"):
            streamer.next_tokens_are_prompt = True  # TextStreamer: do not print the prompt again
        rest = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        answer = self.model.generate(
            **rest, streamer=streamer, **self._generate_kwargs(left, do_sample, **kwargs)
        )[0, ids.shape[1] :]
        return torch.cat([thought, answer])

    def _fast_answer(self, inputs: dict[str, Any], max_new_tokens: int, streamer: Any) -> list[int]:
        """Greedy answer through the static-cache, compiled decoder (``compile=True``)."""
        from openovis.generation import SamplingParams

        tokens = []
        if streamer is not None:
            streamer.put(
                inputs["input_ids"].cpu()
            )  # as generate does: the prompt first (skip_prompt drops it)
        for token in self.fast.stream(
            inputs["input_ids"],
            inputs.get("pixel_values"),
            SamplingParams(max_new_tokens=max_new_tokens),
            inputs.get("grid_thw"),
        ):
            tokens.append(token)
            if streamer is not None:
                streamer.put(torch.tensor([token]))
        if streamer is not None:
            streamer.end()
        return tokens
