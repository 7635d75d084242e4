"""Diversity of generated responses, the axis ROUGE-L cannot see (AKL and DRKL claim gains on it).

* **Distinct-n** (Li et al., NAACL 2016): over a set of responses, the number of distinct n-grams divided by the
  number of n-grams, n = 1..4; tokens are the responses' lower-cased whitespace-separated words. 1 = no n-gram
  repeats; a model that says the same thing to every prompt scores low.
* **Self-BLEU-n** (Zhu et al., Texygen, SIGIR 2018), across the seeds' samples of each prompt: the corpus BLEU-n
  (torchmetrics' ``BLEUScore``, ×100; n = 4 by default) of every sample against the other seeds' samples of the
  same prompt as its references. High = the seeds give the same response; it needs at least two seeds.
  torchmetrics returns 0 when some n-gram order up to n has no match in the whole corpus, as happens at n = 4 for
  a weak student whose samples share no 4-gram; a lower order (``--self_bleu_order 2``) then still ranks models.
"""

from __future__ import annotations

from typing import Optional, Sequence

from lit_kd.errors import ConfigError

DISTINCT_ORDERS = (1, 2, 3, 4)
SELF_BLEU_ORDERS = (1, 2, 3, 4)


def check_self_bleu_order(order: int, option: str) -> None:
    """One error naming ``option`` for an order BLEU does not have here."""
    if order not in SELF_BLEU_ORDERS:
        raise ConfigError(f"{option} must be 1, 2, 3 or 4, got {order}")


def distinct_n(responses: Sequence[str], n: int) -> float:
    """Distinct n-grams / n-grams over ``responses`` (0 when they hold no n-gram)."""
    if n < 1:
        raise ValueError(f"distinct_n needs n >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    for response in responses:
        words = response.lower().split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def self_bleu(samples: Sequence[Sequence[str]], order: int = 4) -> Optional[float]:
    """Self-BLEU-``order`` ×100 of ``samples[prompt][seed]`` (see the module docstring); None with fewer than two
    seeds or no non-empty pair to compare."""
    from torchmetrics.text import BLEUScore

    if order < 1:
        raise ValueError(f"self_bleu needs an n-gram order >= 1, got {order}")
    metric = BLEUScore(n_gram=order)
    compared = 0
    for per_prompt in samples:
        texts = [text for text in per_prompt if text.split()]
        for index, text in enumerate(texts):
            others = texts[:index] + texts[index + 1 :]
            if others:
                metric.update([text], [others])
                compared += 1
    return float(metric.compute()) * 100.0 if compared else None
