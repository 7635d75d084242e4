"""ROUGE-L as a torchmetrics ``Metric``: the scorer of the MiniLLM/DistiLLM evaluation.

Per example: the F-measure of ``rouge-score``'s ``rougeL`` (Porter stemming on, its default
tokenizer), best over the example's references, ×100. The metric is the mean over examples; its two
sum states are synced across processes by torchmetrics.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from rouge_score import rouge_scorer
from torchmetrics import Metric

References = Union[str, Sequence[str]]

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: References) -> float:
    """ROUGE-L F-measure ×100 of one prediction, best over its references (0 for an empty side)."""
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("rouge_l needs at least one reference")
    return 100.0 * max(_SCORER.score(ref, prediction)["rougeL"].fmeasure for ref in refs)


class RougeL(Metric):
    """Mean ROUGE-L F-measure ×100 over the examples seen: ``update(predictions, references)``."""

    higher_is_better = True
    full_state_update = False
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[References]) -> None:
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        # rebinding (not +=) keeps states reset under inference mode usable outside it
        self.total = self.total + sum(rouge_l(p, r) for p, r in zip(predictions, references))
        self.count = self.count + len(predictions)

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("RougeL.compute() before any update")
        return (self.total / self.count).float()
