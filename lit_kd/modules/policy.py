"""Student-generated outputs during training: on-policy and mixed-policy distillation.

With ``student_fraction`` λ, a share λ of each training batch has its responses replaced by responses the
current student samples for the same prompts (GKD's λ, Agarwal et al. 2024, "On-Policy Distillation of
Language Models"; TRL's GKDTrainer ``lmbda``). The teacher — live: a cache cannot score new sequences — then
scores the student's sampled sequence, and the loss covers the generated positions up to and including EOS;
the KD τ still applies to the loss, the sampling has its own temperature and top-p.

Rows: k = ⌊λB⌋ + Bernoulli(λB − ⌊λB⌋) of the B rows (exactly λ in expectation), chosen with ``randperm``;
the sampling seed of each step is drawn too. Both come from the policy's own generator, seeded with the run's
seed and kept in checkpoints, so a resumed run samples what the original would have whatever else draws from
the global RNG. λ = 0 leaves the batch untouched and draws nothing: exactly the off-policy step.

**Adaptive schedule**, in the spirit of DistiLLM's adaptive off-policy approach (Ko et al. 2024, "DistiLLM:
Towards Streamlined Distillation for Large Language Models", §3.2: the probability of using student-generated
outputs grows when the validation loss rises). The rule implemented: λ starts at ``student_fraction``; after
each validation, if ``val/loss`` is higher than at the previous validation, λ ← min(λ + ``adaptive.step``,
``adaptive.max_fraction``); otherwise λ is kept. λ and the previous loss travel in checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import lightning as L
import torch
from transformers import PreTrainedModel

from lit_kd.data.alignment import encode_pair_response, split_groups
from lit_kd.data.collate import PadCollator, prompt_lengths, teacher_view
from lit_kd.data.rendering import Rendering
from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.errors import ConfigError
from lit_kd.eval.generate import SamplingConfig, generate_ids
from lit_kd.utils.fields import check_field_types


@dataclass
class PolicySampling:
    """How the student samples its responses during training (not the KD τ, which applies to the loss)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        check_field_types(self, "model.policy.sampling")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"model.policy.sampling.temperature must be finite and > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"model.policy.sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"model.policy.sampling.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class AdaptiveSchedule:
    """Raise λ by ``step`` (up to ``max_fraction``) after a validation whose loss rose (see the module)."""

    step: float = 0.1
    max_fraction: float = 1.0

    def __post_init__(self) -> None:
        check_field_types(self, "model.policy.adaptive")
        if not 0 < self.step <= 1 or not 0 <= self.max_fraction <= 1:
            raise ConfigError("model.policy.adaptive: step must be in (0, 1] and max_fraction in [0, 1]")


@dataclass
class PolicyConfig:
    """Which responses the student learns on: the data's (λ = 0), its own samples (λ = 1), or a mix."""

    student_fraction: float = 0.0
    """λ ∈ [0, 1]: the share of each batch whose responses the current student samples."""
    sampling: PolicySampling = field(default_factory=PolicySampling)
    adaptive: Optional[AdaptiveSchedule] = None
    """Grow λ when the validation loss rises (DistiLLM-style); ``null``: λ stays fixed."""

    def __post_init__(self) -> None:
        check_field_types(self, "model.policy")
        if isinstance(self.student_fraction, bool) or not 0.0 <= self.student_fraction <= 1.0:
            raise ConfigError(f"model.policy.student_fraction must be in [0, 1], got {self.student_fraction}")


def samples_students_outputs(policy: Optional[PolicyConfig]) -> bool:
    """Whether the policy replaces any responses with the student's samples (now or, adaptively, later)."""
    return policy is not None and (policy.student_fraction > 0 or policy.adaptive is not None)


class StudentPolicy:
    """Replaces a share λ of a batch's responses with the student's own samples (``mix``)."""

    def __init__(self, config: PolicyConfig, pad_id: int, max_length: Optional[int] = None, seed: int = 0) -> None:
        self.config = config
        self.fraction = config.student_fraction
        self.generator = torch.Generator().manual_seed(seed)
        self.previous_val_loss: Optional[float] = None
        self.collate = PadCollator(pad_id)
        self.max_length = max_length

    @classmethod
    def of(cls, config: Optional[PolicyConfig], pad_id: int, max_length: Optional[int], seed: int = 0
           ) -> Optional["StudentPolicy"]:  # fmt: skip
        """The policy of ``model.policy``, None when it samples nothing (null, or λ = 0 without an adaptive rule)."""
        return cls(config, pad_id, max_length, seed) if samples_students_outputs(config) else None

    @property
    def active(self) -> bool:
        return self.fraction > 0 or self.config.adaptive is not None

    def rows_to_sample(self, batch_size: int) -> list[int]:
        """k = ⌊λB⌋ + Bernoulli(frac) rows, drawn with the run's RNG."""
        exact = self.fraction * batch_size
        k = int(math.floor(exact))
        if exact > k and torch.rand((), generator=self.generator) < exact - k:
            k += 1
        return sorted(torch.randperm(batch_size, generator=self.generator)[:k].tolist()) if k else []

    def mix(
        self,
        batch: dict[str, Any],
        student: PreTrainedModel,
        rendering: Rendering,
        teacher_rendering: Optional[Rendering] = None,
    ) -> tuple[dict[str, Any], int]:
        """The batch with the chosen rows' responses sampled by ``student``; returns it and the rows resampled.
        A row's sampled response replaces its last reply (what follows ``prompt_lengths``; a conversation's earlier
        turns, and their labels, are kept), up to the first stop token of ``rendering`` (EOS, or the chat
        template's end-of-turn token), which is kept and supervised. Off-policy rows are kept token for token;
        every row is re-padded (right padding, labels −100). With a ``teacher_rendering`` of its own
        (``model.cross_tokenizer``) a sample is decoded to text and both sides encode that text after their own
        prompts, aligned again (``encode_pair_response``): the student learns on the canonical tokenization of
        what it sampled, which can differ from its sampled ids in rare merges."""
        if self.fraction <= 0:
            return batch, 0
        rows = self.rows_to_sample(batch["input_ids"].shape[0])
        if not rows:
            return batch, 0
        seed = int(torch.randint(0, 2**31 - 1, (), generator=self.generator))
        labels, lengths, ends = batch["labels"], batch["attention_mask"].sum(dim=1).tolist(), prompt_lengths(batch)
        prompts = [batch["input_ids"][r, : ends[r]].tolist() for r in rows]
        limit = self.max_length or max(lengths)
        sampling = self.config.sampling
        settings = SamplingConfig(
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            batch_size=len(rows),
            max_length=max(len(p) for p in prompts) + sampling.max_new_tokens,
        )
        tokenizer = rendering.tokenizer
        generated = generate_ids(student, tokenizer, prompts, settings, seed, keep_eos=True,
                                 stop_ids=rendering.stop_ids)  # fmt: skip
        sampled = dict(zip(rows, zip(prompts, generated)))
        teacher = TeacherRows(batch, rendering, teacher_rendering, self.max_length) if teacher_rendering else None
        examples = []
        for r in range(batch["input_ids"].shape[0]):
            if r in sampled and teacher is not None:
                example = teacher.sampled(r, *sampled[r], labels[r, : ends[r]].tolist(), limit)
            elif r in sampled:
                prompt, response = sampled[r]
                response = response[: max(limit - len(prompt), 1)] or [rendering.end_id]
                example = {"input_ids": prompt + response, "labels": labels[r, : ends[r]].tolist() + response}
            else:
                example = {"input_ids": batch["input_ids"][r, : lengths[r]].tolist(),
                           "labels": labels[r, : lengths[r]].tolist()}  # fmt: skip
                if teacher is not None:
                    example.update(teacher.kept(r))
            example["prompt_length"] = ends[r]
            if "index" in batch:
                example["index"] = int(batch["index"][r])
            if "references" in batch:
                example["reference"] = batch["references"][r]
            examples.append(example)
        teacher_pad = teacher_rendering.tokenizer.pad_token_id if teacher_rendering else None
        collate = PadCollator(self.collate.pad_id, teacher_pad) if teacher else self.collate
        mixed = collate(examples)
        return {k: v.to(batch["input_ids"].device) if torch.is_tensor(v) else v for k, v in mixed.items()}, len(rows)

    def after_validation(self, val_loss: float) -> None:
        """The adaptive rule (see the module docstring)."""
        adaptive = self.config.adaptive
        if adaptive is not None and self.previous_val_loss is not None and val_loss > self.previous_val_loss:
            self.fraction = min(self.fraction + adaptive.step, adaptive.max_fraction)
        self.previous_val_loss = val_loss

    def reseed(self, seed: int) -> None:
        """Seed the policy's generator with the run's seed (at the start of a run, before any checkpoint loads)."""
        self.generator.manual_seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return {
            "fraction": self.fraction,
            "previous_val_loss": self.previous_val_loss,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fraction = float(state.get("fraction", self.fraction))
        self.previous_val_loss = state.get("previous_val_loss")
        if "generator" in state:
            self.generator.set_state(state["generator"])



class TeacherRows:
    """The teacher's side of a cross-tokenizer batch, row by row: kept as it is for an off-policy row, encoded again
    from the text of a student's sample (``StudentPolicy.mix``)."""

    def __init__(self, batch: dict[str, Any], rendering: Rendering, teacher_rendering: Rendering,
                 max_length: Optional[int]) -> None:  # fmt: skip
        self.batch, self.rendering, self.teacher_rendering = batch, rendering, teacher_rendering
        self.lengths = batch["teacher_attention_mask"].sum(dim=1).tolist()
        self.limit = max_length or max(self.lengths)
        responses = [(batch[key] != IGNORE_INDEX).sum(dim=1).tolist() for key in ("teacher_labels", "labels")]
        self.groups = split_groups(batch["groups"], *responses)
        self.teacher_ends = prompt_lengths(teacher_view(batch))

    def kept(self, r: int) -> dict[str, Any]:
        length, labels = self.lengths[r], self.batch["teacher_labels"][r]
        return {"teacher_input_ids": self.batch["teacher_input_ids"][r, :length].tolist(),
                "teacher_labels": labels[:length].tolist(), "teacher_prompt_length": self.teacher_ends[r],
                "groups": self.groups[r]}  # fmt: skip

    def sampled(self, r: int, prompt: list[int], response: list[int], prompt_labels: list[int],
                limit: int) -> dict[str, Any]:  # fmt: skip
        """A student's sample as both sides' last reply; a conversation's earlier replies keep their labels and
        their groups."""
        stops = self.rendering.stop_ids
        ended = bool(response) and response[-1] in stops
        text = self.rendering.tokenizer.decode(response[:-1] if ended else response, skip_special_tokens=True)
        end = self.teacher_ends[r]
        teacher_prompt = self.batch["teacher_input_ids"][r, :end].tolist()
        student_ids, teacher_ids, groups = encode_pair_response(
            self.teacher_rendering, self.rendering, text, ended, self.limit - len(teacher_prompt), limit - len(prompt)
        )
        prompt_rows = sum(label != IGNORE_INDEX for label in prompt_labels)
        teacher_labels = self.batch["teacher_labels"][r, :end].tolist()
        teacher_rows = sum(label != IGNORE_INDEX for label in teacher_labels)
        return {
            "input_ids": prompt + student_ids,
            "labels": prompt_labels + student_ids,
            "teacher_input_ids": teacher_prompt + teacher_ids,
            "teacher_labels": teacher_labels + teacher_ids,
            "teacher_prompt_length": end,
            "groups": [g for g in self.groups[r] if g[1] <= teacher_rows and g[3] <= prompt_rows]
            + [[t0 + teacher_rows, t1 + teacher_rows, s0 + prompt_rows, s1 + prompt_rows] for t0, t1, s0, s1 in groups],
        }


class AdaptivePolicy(L.Callback):
    """Applies the adaptive rule (``StudentPolicy.after_validation``) to the ``val/loss`` each validation of a fit
    logs. ``DistillModule`` adds it when ``model.policy.adaptive`` is set."""

    def __init__(self, policy: StudentPolicy) -> None:
        self.policy = policy

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and trainer.state.fn == "fit" and loss is not None:
            self.policy.after_validation(float(loss))
