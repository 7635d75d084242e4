"""Distinct-n, Self-BLEU, and the entropy and calibration error on reference responses, against hand counts and
a brute-force full-logits reference."""

from __future__ import annotations

import pytest
import torch

from lit_kd.data.rendering import DollyRendering
from lit_kd.data.tokenize import encode_example
from lit_kd.eval.calibration import CALIBRATION_BINS, reference_confidence
from lit_kd.eval.diversity import distinct_n, self_bleu
from lit_kd.models import ModelConfig, load_model
from tests.conftest import tiny_llama_config


def test_distinct_n_counts_distinct_over_all_ngrams():
    responses = ["a b a b", "A b c", ""]
    assert distinct_n(responses, 1) == 3 / 7  # a, b, c of a b a b a b c (lower-cased)
    assert distinct_n(responses, 2) == 3 / 5  # (a b), (b a), (b c) of 3 + 2 bigrams
    assert distinct_n(responses, 4) == 1.0  # the one 4-gram
    assert distinct_n(["one"], 2) == 0.0 and distinct_n([], 1) == 0.0
    with pytest.raises(ValueError):
        distinct_n(responses, 0)


def test_self_bleu_is_100_for_identical_seeds_0_for_disjoint_and_none_for_one_seed():
    same = "the quick brown fox jumps over the lazy dog"
    assert self_bleu([[same, same, same], [same + " again", same + " again"]]) == pytest.approx(100.0)
    assert self_bleu([["a b c d e", "f g h i j"], ["k l m n o", "p q r s t"]]) == 0.0
    assert self_bleu([[same], [same]]) is None
    partial = self_bleu([["the cat sat on the mat today", "the cat sat on the mat yesterday"]])
    assert 0 < partial < 100


def test_self_bleu_of_a_lower_order_ranks_samples_that_share_no_4_gram():
    # no 4-gram is shared, so Self-BLEU-4 is 0 for both pairs; Self-BLEU-2 sees that the first pair is closer
    close = [["red fox runs home fast", "red fox runs away slow"]]
    far = [["red fox runs home fast", "red fox sleeps on mats"]]
    assert self_bleu(close) == 0.0 and self_bleu(far) == 0.0
    assert self_bleu(close, order=2) > self_bleu(far, order=2) > 0
    # BLEU-2 of "red fox runs home fast" against "red fox runs away slow": p1 = 3/5, p2 = 2/4, equal lengths
    assert self_bleu(close, order=2) == pytest.approx(100 * (3 / 5 * 2 / 4) ** 0.5, abs=1e-4)
    with pytest.raises(ValueError, match="order"):
        self_bleu(close, order=0)


def brute_force(model, tokenizer, records, max_length):
    """Entropy and 15-bin ECE from the model's full logits, computed here by hand."""
    entropies, confidences, correct = [], [], []
    for record in records:
        encoded = encode_example(tokenizer, record["instruction"], record["input"], record["output"][0], max_length)
        ids, labels = torch.tensor([encoded["input_ids"]]), torch.tensor(encoded["labels"])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1, : len(tokenizer)].double()
        keep = labels[1:] != -100
        p = torch.softmax(logits[keep], -1)
        entropies.append(-(p * torch.log(p)).sum(-1))
        confidences.append(p.max(-1).values)
        correct.append((p.argmax(-1) == labels[1:][keep]).double())
    entropy, confidence, hit = torch.cat(entropies), torch.cat(confidences), torch.cat(correct)
    bins = torch.clamp((confidence * CALIBRATION_BINS).ceil().long() - 1, 0, CALIBRATION_BINS - 1)
    ece = sum(
        (bins == b).sum() / len(bins) * (hit[bins == b].mean() - confidence[bins == b].mean()).abs()
        for b in range(CALIBRATION_BINS) if (bins == b).any()
    )  # fmt: skip
    return float(entropy.mean()), float(ece)


def test_entropy_and_calibration_error_on_the_references_match_a_full_logits_reference(tiny_tokenizer):
    torch.manual_seed(0)
    model = load_model(ModelConfig(config=tiny_llama_config(2, initializer_range=0.5))).eval()
    records = [
        {"instruction": f"Question {i}?", "input": "" if i % 2 else "some context", "output": [f"answer {i} is {i}"]}
        for i in range(5)
    ]
    rendering = DollyRendering(tiny_tokenizer)
    measured = reference_confidence(model, rendering, records, max_length=256, batch_size=2, chunk_size=3)
    entropy, ece = brute_force(model, tiny_tokenizer, records, 256)
    assert measured["entropy"] == pytest.approx(entropy, rel=1e-5)
    assert measured["ece"] == pytest.approx(ece, abs=1e-5)
    assert reference_confidence(model, rendering, records, 256, batch_size=5, chunk_size=512) == pytest.approx(
        measured, rel=1e-5
    )
