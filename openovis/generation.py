"""One-sequence token streaming for chat and serving: prefill once, then one token at a time.

    prefill: input_ids [1, L] (+ pixel_values [C, 3, S, S]) -> embed_inputs (visual embeddings, once)
             -> LLM over [1, L, D] into the KV cache -> logits of the last position [1, V]
    decode:  token [1, 1] -> text embedding (indicator ids take the connector's rows) -> LLM, one position

The cache is transformers' ``DynamicCache`` (default) or a ``StaticCache`` of fixed length, allocated
once per :class:`TokenStreamer` and reset between sequences; with a static cache the decode step can be
``torch.compile``-d (shapes never change, so it compiles once). Greedy decoding gives the same tokens
as ``model.generate`` with the same stop and suppressed ids (tested). Image tokens (placeholder, atom,
indicators) are never sampled: a model that emitted one would have no image to put there.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import DynamicCache, StaticCache

CacheKind = Literal["dynamic", "static"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token.

    Attributes:
        max_new_tokens: Most tokens to generate (stop tokens not counted).
        temperature: 0 is greedy; otherwise logits are divided by it before sampling.
        top_p: Nucleus sampling: keep the smallest set of tokens whose probability reaches ``top_p``.
        seed: Seed of this sequence's sampling generator (None: nondeterministic).
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens: must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from last-position logits ``[V]``."""
    if params.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)  # [V]
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


class TokenStreamer:
    """Generates the answer to one prompt at a time, yielding token ids as they are chosen.

    Args:
        model: An ``OvisForConditionalGeneration`` (eval mode).
        stop_ids: Ids that end the answer (not yielded).
        suppress_ids: Ids never generated (e.g. the image tokens).
        cache: ``"dynamic"`` or ``"static"``.
        compile: ``torch.compile`` the decode step (static cache only). It compiles on the first
            sequence (measured on 2 busy CPU cores: minutes with inductor; seconds on a GPU).
        max_cache_len: Length of the static cache: prompt plus answer must fit.
        compile_backend: ``torch.compile`` backend (``"inductor"``; tests use ``"aot_eager"``).
    """

    def __init__(
        self,
        model: Any,
        stop_ids: Sequence[int],
        suppress_ids: Sequence[int] = (),
        cache: CacheKind = "dynamic",
        compile: bool = False,
        max_cache_len: int = 2048,
        compile_backend: str = "inductor",
    ) -> None:
        if cache not in ("dynamic", "static"):
            raise ValueError(f"cache: must be 'dynamic' or 'static', got {cache!r}")
        if compile and cache != "static":
            raise ValueError("compile: needs cache='static' (a dynamic cache changes shape every step)")
        self.model = model
        self.llm = model.llm
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.suppress = torch.tensor(sorted(set(suppress_ids)), dtype=torch.long)
        self.cache_kind = cache
        self.max_cache_len = max_cache_len
        self._static = (
            StaticCache(config=self.llm.config, max_cache_len=max_cache_len) if cache == "static" else None
        )
        # The LLM's KV-cache argument: ``cache`` from transformers 5.2x, ``past_key_values`` before.
        params = inspect.signature(self.llm.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._step: Callable[..., torch.Tensor] = self._decode_step
        if compile:
            self._step = torch.compile(self._decode_step, dynamic=False, backend=compile_backend)

    @classmethod
    def for_processor(cls, model: Any, processor: Any, **kwargs: Any) -> TokenStreamer:
        """A streamer that stops where the processor's chat format ends a turn and never emits image tokens."""
        image_ids = [processor.placeholder_id, processor.atom_token_id, *processor.indicator_token_ids]
        return cls(model, processor.stop_token_ids, image_ids, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _embed_token(self, token: torch.Tensor) -> torch.Tensor:
        """``[1, 1]`` ids -> ``[1, 1, D]``: as ``embed_inputs`` with no image (indicators take their rows).

        ``embed_inputs`` itself counts atom tokens with a host sync, which would break the compiled graph.
        """
        embeds = self.model.get_input_embeddings()(token)  # [1, 1, D]
        rows = self.model.connector.indicator_embeddings()  # [n, D], or None: indicators keep text embeddings
        ids = self.model.config.indicator_token_ids
        if rows is not None and ids is not None:
            rows = rows.to(embeds.dtype)  # [n, D]
            for i, token_id in enumerate(ids):
                embeds = torch.where((token == token_id).unsqueeze(-1), rows[i], embeds)
        return embeds

    def _decode_step(self, token: torch.Tensor, position: torch.Tensor, cache: Any) -> torch.Tensor:
        """One decode position: ``token [1, 1]`` at ``position [1, 1]`` -> next-token logits ``[V]``."""
        out = self.llm(
            inputs_embeds=self._embed_token(token),
            position_ids=position,
            use_cache=True,
            **{self._cache_arg: cache},
        )
        return out.logits[0, -1]

    def _mask(self, logits: torch.Tensor) -> torch.Tensor:
        if len(self.suppress):
            logits = logits.clone()
            logits[self.suppress.to(logits.device)] = float("-inf")
        return logits

    @torch.inference_mode()
    def stream(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        params: SamplingParams,
        grid_thw: torch.Tensor | None = None,
    ) -> Iterator[int]:
        """Yields the answer's token ids; closing the iterator early stops generation.

        Args:
            input_ids: The prompt, ``[L]`` or ``[1, L]``.
            pixel_values: Its crops ``[C, 3, S, S]`` or None.
            params: Sampling parameters.
            grid_thw: NaViT models: the images' ``[n, 3]`` grids (``pixel_values`` are then packed rows).

        Raises:
            ValueError: With a static cache, prompt plus ``max_new_tokens`` exceed ``max_cache_len``.
        """
        ids = input_ids.reshape(1, -1).to(self.device)  # [1, L]
        length = ids.shape[1]
        if self._static is not None:
            if length + params.max_new_tokens > self.max_cache_len:
                raise ValueError(
                    f"{length} prompt tokens + max_new_tokens {params.max_new_tokens} exceed the static cache "
                    f"({self.max_cache_len})"
                )
            self._static.reset()
            cache: Any = self._static
        else:
            cache = DynamicCache(config=self.llm.config)
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device, self.model.dtype)
        embeds = self.model.embed_inputs(
            ids, pixel_values, grid_thw=grid_thw
        )  # [1, L, D]: visual embeddings, once
        positions = torch.arange(length, device=self.device)[None]  # [1, L]
        out = self.llm(
            inputs_embeds=embeds, position_ids=positions, use_cache=True, **{self._cache_arg: cache}
        )
        logits = out.logits[0, -1]
        for step in range(params.max_new_tokens):
            token = pick_token(self._mask(logits), params, generator)
            if token in self.stop_ids:
                return
            yield token
            if step + 1 == params.max_new_tokens:
                return
            position = torch.tensor([[length + step]], device=self.device)  # [1, 1]
            logits = self._step(torch.tensor([[token]], device=self.device), position, cache)

    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        params: SamplingParams,
        grid_thw: torch.Tensor | None = None,
    ) -> list[int]:
        """All of :meth:`stream` as a list."""
        return list(self.stream(input_ids, pixel_values, params, grid_thw))
