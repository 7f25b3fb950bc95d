"""Token choice: greedy is argmax (first on ties); sampling follows softmax(logits / T) cut by top-k / top-p."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptq161.errors import PTQ161Error
from ptq161.runtime.sampling import GREEDY, Sampling, filtered_probs, next_token

LOGITS = np.array([1.0, 3.0, 2.0, 3.0, -1.0], dtype=np.float32)


def test_greedy_is_the_first_argmax():
    assert next_token(torch.from_numpy(LOGITS), GREEDY, np.random.default_rng(0)) == 1


def test_probabilities_are_the_tempered_softmax():
    p = filtered_probs(LOGITS, Sampling(temperature=2.0))
    want = np.exp(LOGITS / 2.0) / np.exp(LOGITS / 2.0).sum()
    np.testing.assert_allclose(p, want, rtol=1e-6)


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    assert np.count_nonzero(filtered_probs(LOGITS, Sampling(1.0, top_k=3))) == 3  # 3.0, 3.0, 2.0
    # probabilities 0.054, 0.397, 0.146, 0.397, 0.007: the smallest most-likely set reaching top_p stays
    p = filtered_probs(LOGITS, Sampling(1.0, top_p=0.3))
    assert np.count_nonzero(p) == 1 and p.argmax() == 1
    assert set(np.flatnonzero(filtered_probs(LOGITS, Sampling(1.0, top_p=0.7)))) == {1, 3}
    p = filtered_probs(LOGITS, Sampling(1.0, top_p=0.8))
    assert set(np.flatnonzero(p)) == {1, 2, 3} and abs(p.sum() - 1) < 1e-12


def test_draws_follow_the_distribution_and_a_seed_repeats_them():
    s = Sampling(temperature=1.0, seed=3)
    draws = [next_token(LOGITS, s, rng) for rng in [s.rng()] for _ in range(20000)]
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq, filtered_probs(LOGITS, s), atol=0.01)
    again = [next_token(LOGITS, s, rng) for rng in [s.rng()] for _ in range(50)]
    assert again == draws[:50]


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-2)])
def test_out_of_range_settings_are_refused(kw):
    with pytest.raises(PTQ161Error):
        Sampling(**kw)
