"""Visual-vocabulary statistics on hand-made distributions (shared by the training monitors and the analysis)."""

from __future__ import annotations

import math

import pytest
import torch

from openovis.modeling.visual_words import (
    UsageAccumulator,
    dead_words,
    effective_vocabulary,
    max_probability,
    rms_row_norm,
    token_entropy,
    top_words,
    vocabulary_usage,
)


def test_uniform_distributions_have_entropy_log_k_and_use_every_word():
    k = 16
    probs = torch.full((10, k), 1 / k)
    torch.testing.assert_close(token_entropy(probs), torch.full((10,), math.log(k), dtype=torch.float64))
    torch.testing.assert_close(max_probability(probs), torch.full((10,), 1 / k))
    usage = vocabulary_usage(probs)
    assert usage.effective == pytest.approx(k)
    assert int(usage.dead().sum()) == 0
    assert usage.tokens == 10 and float(usage.mass.sum()) == pytest.approx(1.0)


def test_one_hot_distributions_have_entropy_zero():
    k = 8
    same = torch.zeros(6, k)
    same[:, 3] = 1.0  # every token picks word 3
    assert torch.equal(token_entropy(same), torch.zeros(6, dtype=torch.float64))  # 0·log 0 = 0, no NaN
    usage = vocabulary_usage(same)
    assert usage.effective == pytest.approx(1.0)
    assert usage.used_as_top == 1 and int(usage.top_counts[3]) == 6
    assert int(usage.dead().sum()) == k - 1
    spread = torch.eye(k)  # token i picks word i: each token is certain, together they use all words
    assert float(token_entropy(spread).max()) == 0.0
    assert vocabulary_usage(spread).effective == pytest.approx(k)
    assert vocabulary_usage(spread).used_as_top == k


def test_zero_columns_and_indicator_columns_are_left_out():
    half = torch.tensor([[0.25, 0.0, 0.25, 0.0, 0.25, 0.25]])
    assert float(token_entropy(half)) == pytest.approx(math.log(4))
    words, n = 6, 2
    probs = torch.cat([torch.full((5, words), 1 / words), torch.zeros(5, n)], dim=-1)  # [N, K' + n]
    assert float(token_entropy(probs, n)[0]) == pytest.approx(math.log(words))
    usage = vocabulary_usage(probs, num_indicators=n)
    assert usage.mass.numel() == words  # the indicator columns are not words: never counted as dead
    assert usage.effective == pytest.approx(words)
    assert int(usage.dead().sum()) == 0
    with pytest.raises(ValueError, match="num_indicators"):
        token_entropy(probs, words + n)


def test_effective_vocabulary_dead_and_top_words_on_a_hand_made_usage():
    assert effective_vocabulary(torch.tensor([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_vocabulary(torch.tensor([3.0, 1.0])) == pytest.approx(math.exp(h))
    mass = torch.tensor([50.0, 30.0, 19.9, 0.1, 0.0])  # shares 0.5, 0.3, 0.199, 0.001, 0; uniform 0.2
    assert dead_words(mass).tolist() == [False, False, False, True, True]  # below 0.01 / 5 = 0.002
    assert dead_words(mass, fraction=1e-4).tolist() == [False, False, False, False, True]
    ids, values = top_words(mass, 2)
    assert ids.tolist() == [0, 1] and values.tolist() == [50.0, 30.0]
    assert top_words(mass, 99)[0].numel() == 5
    with pytest.raises(ValueError, match="empty"):
        effective_vocabulary(torch.zeros(3))


def test_accumulator_in_batches_equals_one_batch_and_keeps_the_best_examples():
    probs = torch.randn(40, 12).softmax(-1)
    acc = UsageAccumulator(12, examples=3)
    for chunk in probs.split(7):
        acc.update(chunk)
    whole = vocabulary_usage(probs)
    torch.testing.assert_close(acc.usage().mass, whole.mass)
    assert torch.equal(acc.usage().top_counts, whole.top_counts)
    torch.testing.assert_close(acc.token_entropies(), token_entropy(probs).float())
    best, index = probs.topk(3, dim=0)  # [3, K]
    torch.testing.assert_close(acc.best_prob, best)
    assert torch.equal(acc.best_token, index)


def test_rms_row_norm():
    table = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    assert rms_row_norm(table) == pytest.approx(math.sqrt((9 + 16) / 2))
