"""Statistics of the visual vocabulary: what the training monitors log and the analysis reports.

Notation: N visual tokens, K visual vocabulary size, n indicator rows (the last n rows of the VET,
never a target of the visual head), K' = K - n visual words an image can use, D LLM width.

    visual_word_probabilities(model, pixels)   [C, 3, S, S] -> [C, T, K']  (no indicator columns)
    probabilities [N, K] (or [N, K'])
      -> token_entropy, max_probability         [N]
      -> UsageAccumulator over a data set (batch by batch):
           mass per word (summed, normalised)   [K']
           argmax counts per word               [K']
           best examples per word               [e, K']
      -> effective vocabulary = exp(H(mass)), dead words, top words
    rms_row_norm(table [R, D]) = ‖E‖_F / sqrt(R)   (VET rows vs the LLM's text embeddings)

The model is reached in two places only, `visual_word_probabilities` (the model's own
``visual_probabilities``) and `visual_table`; everything else is a pure function of tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

DEAD_FRACTION = 0.01
"""A word is dead when its share of the usage mass is below this fraction of the uniform share 1/K'."""


# --------------------------------------------------------------------------- the model's side


def visual_word_probabilities(
    model: nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor | None = None
) -> torch.Tensor:
    """The visual-word distributions of crops ``[C, 3, S, S]`` -> ``[C, T, K']`` (fp32, no indicator columns).

    The model's own distributions (`OvisForConditionalGeneration.visual_probabilities`: the backbone
    features through ``model.connector.probabilities``), i.e. exactly what its VET mixes: the softmax
    for the default ``tokenize_function``, the one-hot argmax word for ``st_argmax`` and
    ``gumbel_argmax``. Gumbel noise is drawn from a fork of the global RNG, so calling this (as the
    training monitors do) never changes the random stream of a run.

    Args:
        model: An `OvisForConditionalGeneration` whose connector has a visual vocabulary (the VET).
        pixel_values: Crops as the processor makes them.
        grid_thw: With a NaViT backbone, the images' ``[n, 3]`` grids (then the result is ``[1, N/s², K']``).
    """
    with torch.random.fork_rng(devices=[]):
        probs = model.visual_probabilities(pixel_values, grid_thw)  # [C, T, K]
    return probs[..., : model.config.visual_vocab_size - model.config.num_indicators]  # [C, T, K']


def visual_table(model: nn.Module) -> torch.Tensor | None:
    """The visual embedding table ``[K, D]`` of a model whose connector has one (the VET), else None (the MLP)."""
    table = getattr(
        model.connector, "vte", None
    )  # a VET connector's table; the interface leaves tables to them
    return None if table is None else table.weight


# --------------------------------------------------------------------------- numerics


def _words(probs: torch.Tensor, num_indicators: int) -> torch.Tensor:
    """Drops the n trailing indicator columns: ``[.., K]`` -> ``[.., K']`` (a view)."""
    if num_indicators < 0 or num_indicators >= probs.shape[-1]:
        raise ValueError(f"num_indicators: must be in [0, {probs.shape[-1]}), got {num_indicators}")
    return probs[..., : probs.shape[-1] - num_indicators]


def token_entropy(probs: torch.Tensor, num_indicators: int = 0) -> torch.Tensor:
    """Entropy in nats of each distribution, with 0·log 0 = 0: ``[.., K]`` -> ``[..]``.

    Args:
        probs: Distributions over the last dimension.
        num_indicators: Trailing indicator columns to leave out.
    """
    p = _words(probs, num_indicators).double()
    return -torch.xlogy(p, p).sum(-1)


def max_probability(probs: torch.Tensor, num_indicators: int = 0) -> torch.Tensor:
    """Probability of each distribution's most probable word: ``[.., K]`` -> ``[..]``."""
    return _words(probs, num_indicators).amax(-1)


def effective_vocabulary(mass: torch.Tensor) -> float:
    """``exp(entropy)`` of a usage distribution ``[K']`` (normalised here).

    The number of equally used words that would have the same entropy: K' for uniform usage, 1 when
    all the mass is on one word.
    """
    mass = mass.double()
    total = mass.sum()
    if not total > 0:
        raise ValueError("effective_vocabulary: the usage mass is empty")
    return float(token_entropy(mass / total).exp())


def dead_words(mass: torch.Tensor, fraction: float = DEAD_FRACTION) -> torch.Tensor:
    """Boolean mask ``[K']`` of words whose share of the usage is below ``fraction / K'``.

    The threshold is relative to the uniform share, so it means the same for any K: with the default
    a dead word gets less than 1 % of what it would get if every word were used equally.
    """
    share = mass.double() / mass.double().sum()
    return share < fraction / mass.numel()


def top_words(mass: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k words with the most usage mass, most used first: ``(ids [k], mass [k])``."""
    values, ids = mass.topk(min(k, mass.numel()))
    return ids, values


def rms_row_norm(table: torch.Tensor) -> float:
    """``‖E‖_F / sqrt(rows)`` of an embedding table ``[R, D]``: the RMS norm of its rows."""
    table = table.detach().double()
    return float(table.norm() / math.sqrt(table.shape[0]))


# --------------------------------------------------------------------------- usage over many tokens


@dataclass(frozen=True)
class VocabularyUsage:
    """How a set of visual tokens uses the K' visual words."""

    mass: torch.Tensor
    """``[K']`` summed probability per word, normalised to sum 1."""
    top_counts: torch.Tensor
    """``[K']`` how many tokens have each word as their most probable word."""
    tokens: int
    """N, the tokens counted."""

    @property
    def effective(self) -> float:
        """``exp(H(mass))``, between 1 and K'."""
        return effective_vocabulary(self.mass)

    @property
    def used_as_top(self) -> int:
        """Distinct words that are the most probable word of at least one token."""
        return int((self.top_counts > 0).sum())

    def dead(self, fraction: float = DEAD_FRACTION) -> torch.Tensor:
        """See `dead_words`."""
        return dead_words(self.mass, fraction)


class UsageAccumulator:
    """Adds up visual-word statistics batch by batch, without keeping the ``[N, K]`` probabilities.

    Args:
        vocab_size: K, the width of the distributions given to `update` (indicators included).
        num_indicators: n, trailing indicator columns to leave out.
        examples: e, how many best examples (highest probability of the word) to keep per word.
    """

    def __init__(self, vocab_size: int, num_indicators: int = 0, examples: int = 0):
        self.num_indicators = num_indicators
        words = vocab_size - num_indicators
        self.mass = torch.zeros(words, dtype=torch.float64)  # [K']
        self.top_counts = torch.zeros(words, dtype=torch.long)  # [K']
        self.best_prob = torch.full((examples, words), -1.0)  # [e, K']; -1: no example yet
        self.best_token = torch.full((examples, words), -1, dtype=torch.long)  # [e, K']
        self.entropies: list[torch.Tensor] = []
        self.max_probs: list[torch.Tensor] = []
        self.tokens = 0

    def update(self, probs: torch.Tensor) -> None:
        """Adds ``probs [N, K]``; its tokens get the next N global token indices."""
        p = _words(probs, self.num_indicators).detach().float().cpu()  # [N, K']
        self.mass += p.sum(0, dtype=torch.float64)
        self.top_counts += torch.bincount(p.argmax(-1), minlength=p.shape[-1])
        self.entropies.append(token_entropy(p).float())
        self.max_probs.append(p.amax(-1))
        examples = self.best_prob.shape[0]
        if examples:
            values, index = p.topk(min(examples, p.shape[0]), dim=0)  # [e, K']
            values = torch.cat([self.best_prob, values])  # [2e, K']
            tokens = torch.cat([self.best_token, index + self.tokens])  # [2e, K']
            self.best_prob, order = values.topk(examples, dim=0)  # [e, K']
            self.best_token = tokens.gather(0, order)
        self.tokens += p.shape[0]

    def usage(self) -> VocabularyUsage:
        if self.tokens == 0:
            raise ValueError("no visual tokens were counted")
        return VocabularyUsage((self.mass / self.mass.sum()).float(), self.top_counts.clone(), self.tokens)

    def token_entropies(self) -> torch.Tensor:
        """``[N]`` entropy of every token counted, in nats."""
        return torch.cat(self.entropies)

    def token_max_probs(self) -> torch.Tensor:
        """``[N]`` highest probability of every token counted."""
        return torch.cat(self.max_probs)


def vocabulary_usage(probs: torch.Tensor, num_indicators: int = 0) -> VocabularyUsage:
    """The usage statistics of one ``[N, K]`` batch of distributions."""
    acc = UsageAccumulator(probs.shape[-1], num_indicators)
    acc.update(probs)
    return acc.usage()
