"""The estimates of ``charter.stats`` on synthetic data with a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from charter.stats import (
    bootstrap_means,
    length_controlled,
    mean_interval,
    prediction_powered,
    self_preference,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize("advantage", [0.0, 0.8])
def test_length_control_recovers_the_preference_when_the_bias_is_length(advantage: float) -> None:
    rng = np.random.default_rng(1)
    n = 3000
    model_words = rng.normal(120, 30, n)  # the model writes longer answers...
    opponent_words = rng.normal(80, 30, n)
    d = model_words - opponent_words
    # ... and the judge likes length whoever wrote it, beside the model's true advantage
    chance = _sigmoid(advantage + 1.5 * np.tanh(d / d.std()))
    preference = (rng.random(n) < chance).astype(float)  # the judge's picks
    lc = length_controlled(preference, model_words, opponent_words, resamples=100)
    truth = 1 / (1 + math.exp(-advantage))
    assert lc.raw.value > truth + 0.1  # the raw rate is carried off by length
    # unbiased (over 30 seeds its mean was 0.693 for 0.690, spread 0.011): within 3 spreads
    assert abs(lc.controlled.value - truth) < 0.035
    lo, hi = lc.controlled.ci95
    assert 0.01 < hi - lo < 0.08
    assert lc.length_effect == pytest.approx(1.5, abs=0.3)


def test_self_preference_found_when_planted_and_not_when_absent() -> None:
    rng = np.random.default_rng(2)
    reference = rng.uniform(0.2, 0.8, 400)
    logit = np.log(reference / (1 - reference))
    planted = _sigmoid(logit + 0.8)
    found = self_preference(planted, reference, judge="openai/me", reference="people")
    assert found.difference.ci95[0] > 0
    honest = np.clip(reference + rng.normal(0, 0.05, 400), 0, 1)
    none = self_preference(honest, reference, judge="openai/me", reference="openai/other")
    assert none.difference.ci95[0] < 0 < none.difference.ci95[1]


def test_ppi_intervals_cover_the_truth_and_beat_human_only() -> None:
    """200 seeded simulations: N pairs with AI labels from a judge that agrees with people
    80 % of the time (and is biased), n of them drawn at random for people."""
    truth, big_n, n = 0.6, 5000, 300
    covered = {"ppi": 0, "human": 0, "ai": 0}
    narrower = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        y = (rng.random(big_n) < truth).astype(float)
        right = rng.random(big_n) < 0.8
        says_a = np.where(right, y == 1, y == 0)
        f = np.where(says_a, 0.75, 0.25)
        drawn = rng.choice(big_n, n, replace=False)
        est = prediction_powered(f, f[drawn], y[drawn])
        for name, e in (("ppi", est.ppi), ("human", est.human_only), ("ai", est.ai_only)):
            covered[name] += e.ci95[0] <= truth <= e.ci95[1]
        width = lambda e: e.ci95[1] - e.ci95[0]  # noqa: E731
        narrower += width(est.ppi) < width(est.human_only)
    assert 0.93 <= covered["ppi"] / 200 <= 0.97, covered
    assert narrower == 200
    assert covered["ai"] / 200 < 0.1  # the biased judge's own interval misses


def test_bootstrap_is_seeded_and_bounded() -> None:
    x = np.random.default_rng(3).random(2_500)
    a, b = bootstrap_means(x, seed=7), bootstrap_means(x, seed=7)
    assert np.array_equal(a, b)
    est = mean_interval(x)
    assert est.ci95[0] < x.mean() < est.ci95[1]
    assert est.ci95[1] - est.ci95[0] == pytest.approx(2 * 1.96 * x.std() / 50, rel=0.1)
    big = np.random.default_rng(4).random(200_000)
    assert mean_interval(big).method.startswith("normal")
