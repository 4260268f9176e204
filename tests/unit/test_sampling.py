"""Sampling on crafted logits: supports of top-k / top-p / min-p, penalties, seeds independent of the batch."""

import math

import pytest
import torch

from raygen.engine.sampling import SamplingParams, apply_penalties, filter_logits, sample, top_logprobs

# probabilities 0.5, 0.25, 0.125, 0.0625, 0.0625
LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.0625, 0.0625]]))


def support(top_k=0, top_p=1.0, min_p=0.0) -> list[int]:
    out = filter_logits(LOGITS.clone(), torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))
    return torch.isfinite(out[0]).nonzero().flatten().tolist()


def test_top_k_top_p_min_p_supports():
    assert support(top_k=2) == [0, 1]
    assert support(top_p=0.5) == [0]
    assert support(top_p=0.6) == [0, 1]
    assert support(top_p=0.75) == [0, 1]
    assert support(top_p=0.8) == [0, 1, 2]
    assert support(min_p=0.25) == [0, 1, 2]  # floor 0.125
    assert support(min_p=0.3) == [0, 1]
    assert support() == [0, 1, 2, 3, 4]


def test_sampled_tokens_stay_in_support_and_follow_probabilities():
    p = SamplingParams(temperature=1.0, top_k=3)
    g = torch.Generator().manual_seed(0)
    draws = [sample(LOGITS.clone(), [p], [g]).item() for _ in range(4000)]
    assert set(draws) <= {0, 1, 2}
    assert abs(draws.count(0) / 4000 - 0.5 / 0.875) < 0.03


def test_seeded_row_is_independent_of_the_batch():
    torch.manual_seed(123)
    logits = torch.randn(6, 50)
    p = SamplingParams(temperature=0.9, top_p=0.9, seed=42)
    alone = [sample(logits[:1].clone(), [p], [torch.Generator().manual_seed(42)]).item() for _ in range(1)]
    others = [SamplingParams(temperature=1.0)] * 5
    gens = [torch.Generator().manual_seed(42)] + [None] * 5
    batched = sample(logits.clone(), [p] + others, gens)
    assert batched[0].item() == alone[0]


def test_greedy_and_penalties():
    logits = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    assert sample(logits.clone(), [SamplingParams(temperature=0)], [None]).item() == 0
    rep = apply_penalties(logits.clone(), [SamplingParams(repetition_penalty=2.0)], [[0]], [[2]])
    assert rep[0].tolist() == [1.0, 1.0, -2.0, 0.5]
    pres = apply_penalties(logits.clone(), [SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)],
                           [[]], [[1, 1, 3]])
    assert pres[0].tolist() == pytest.approx([2.0, 1.0 - 0.5 - 0.5, -1.0, 0.5 - 0.5 - 0.25])


def test_logprobs_and_validation():
    chosen, top, ids = top_logprobs(LOGITS, torch.tensor([1]), 2)
    assert chosen.item() == pytest.approx(math.log(0.25))
    assert ids[0].tolist() == [0, 1] and top[0, 0].item() == pytest.approx(math.log(0.5))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=5)
