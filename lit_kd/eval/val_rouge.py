"""ROUGE-L of generated responses during validation and test (``val/rougeL``, ``test/rougeL``): the metric the
paper keeps its best epoch by. ``DistillModule`` calls ``GenerationRouge.step`` from its evaluation steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.errors import ConfigError
from lit_kd.eval.generate import SamplingConfig, decode_responses, fit_prompt, generate_ids
from lit_kd.eval.rouge import RougeL


@dataclass
class ValidationRouge:
    """ROUGE-L of generated responses during validation and test (``val/rougeL``, ``test/rougeL``)."""

    examples: int = 100
    """Generate for the first N examples of the split in each validation epoch (spread over processes)."""
    seed: int = 10
    """Sampling seed: the same every epoch, so epochs are compared on the same random stream."""
    generation: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling settings (temperature 1, no top-k/top-p by default, as in the paper)."""

    def __post_init__(self) -> None:
        if self.examples < 1:
            raise ConfigError(f"model.val_rouge.examples must be >= 1, got {self.examples} (null turns it off)")


class GenerationRouge(nn.Module):
    """Samples responses to the prompts of an evaluation batch (while under this process's share of
    ``settings.examples``) and scores them against the references; the metrics are synced by torchmetrics."""

    def __init__(self, settings: ValidationRouge) -> None:
        super().__init__()
        self.settings = settings
        self.metrics = nn.ModuleDict({stage: RougeL() for stage in ("val", "test")})
        self.generated = {"val": 0, "test": 0}

    def start(self, stage: str) -> None:
        """A new evaluation epoch: count the examples from zero (the metric resets itself when logged)."""
        self.generated[stage] = 0

    def step(
        self,
        stage: str,
        batch: dict[str, Any],
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        world_size: int,
        rank: int,
    ) -> int:
        """Generate for this batch's share and update the metric; returns the number of examples scored."""
        quota = -(-self.settings.examples // world_size)
        take = min(quota - self.generated[stage], batch["input_ids"].shape[0])
        if take <= 0 or "references" not in batch:
            return 0
        prompts = []
        for row in range(take):  # the prompt is everything before the first supervised token
            start = int((batch["labels"][row] != IGNORE_INDEX).nonzero()[0])
            prompts.append(fit_prompt(batch["input_ids"][row, :start].tolist(), self.settings.generation))
        seed = self.settings.seed + 1_000_003 * rank + self.generated[stage]
        outputs = generate_ids(model, tokenizer, prompts, self.settings.generation, seed)
        self.metrics[stage].update(decode_responses(tokenizer, outputs), batch["references"][:take])
        self.generated[stage] += take
        return take
