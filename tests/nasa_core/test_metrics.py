"""nasa_core.metrics against values computed by hand: CLIP+ / CLIP- cosines, the zero-shot present probability
and removal decision, the summary's mean and 95% interval; bad input is refused by name."""
from __future__ import annotations

import math

import pytest
import torch

from nasa_core import metrics


def test_cosine_by_hand():
    img = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    txt = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
    # (12 + 12) / (5 * 5) = 0.96; orthogonal: 0
    assert metrics.cosine(img, txt).tolist() == [0.96, 0.0]
    # one text row broadcast to both images, scale-free, half precision in: float64 out
    out = metrics.cosine(img.half(), torch.tensor([0.0, 10.0]))
    assert out.dtype == torch.float64 and out.tolist() == [0.8, 0.0]


def test_clip_plus_and_minus():
    img = torch.tensor([[1.0, 1.0, 0.0]])
    plus, minus = metrics.clip_scores(img, torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]))
    assert plus.tolist() == pytest.approx([1 / math.sqrt(2)]) and minus.tolist() == [0.0]


def test_present_probability_and_removal_by_hand():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    present, absent = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    p = metrics.present_probability(img, present, absent, logit_scale=2.0)
    # cosines (1, 0), (0, 1), (1/sqrt2, 1/sqrt2): sigmoid(2 * difference)
    assert p.tolist() == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2)), 0.5])
    assert metrics.removed(p).tolist() == [False, True, False]          # a tie is not a removal
    assert metrics.removed(p, threshold=0.9).tolist() == [True, True, True]
    default = metrics.present_probability(img[:1], present, absent)
    assert default.item() == pytest.approx(1 / (1 + math.exp(-metrics.CLIP_LOGIT_SCALE)))


def test_summary_by_hand():
    s = metrics.summarize([1.0, 0.0, 1.0, 0.0])
    # mean 0.5; sample sd sqrt(1/3); 1.96 * sd / 2
    assert (s.n, s.mean) == (4, 0.5) and s.ci95 == pytest.approx(1.96 * math.sqrt(1 / 3) / 2)
    assert metrics.summarize([0.3]) == metrics.Summary(1, 0.3, 0.0)
    assert str(metrics.Summary(2, 0.5, 0.125)) == "0.5000 ± 0.1250"


@pytest.mark.parametrize("call, message", [
    (lambda: metrics.cosine(torch.zeros(2, 3, 4), torch.ones(3)), "image_embeds must be embeddings of shape"),
    (lambda: metrics.cosine(torch.ones(2, 3), torch.ones(3, 3)), "cannot pair with 3 text embeddings"),
    (lambda: metrics.cosine(torch.ones(2, 3), torch.ones(4)), "of width 4"),
    (lambda: metrics.cosine(torch.zeros(1, 3), torch.ones(3)), "all zeros"),
    (lambda: metrics.cosine(torch.tensor([[float("nan"), 1.0]]), torch.ones(2)), "NaN or infinite"),
    (lambda: metrics.present_probability(torch.ones(1, 2), torch.ones(2), torch.ones(2), logit_scale=0),
     "logit_scale must be a positive number"),
    (lambda: metrics.removed(torch.zeros(1), threshold=1.0), "threshold must be in (0, 1)"),
    (lambda: metrics.summarize([]), "no images scored"),
    (lambda: metrics.summarize([1.0, float("inf")]), "NaN or infinite"),
])
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
