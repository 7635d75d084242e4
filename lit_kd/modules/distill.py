"""``DistillModule``: a frozen teacher, a trainable student and a τ-scaled objective from the registry.

    L = (1 − kd_ratio) · CE(student, labels) + kd_ratio · L_KD(student, teacher; τ)

Both terms are token means over the response positions of the micro-batch (labels ≠ −100 after
the causal shift). The module orchestrates; the math lives in ``lit_kd.losses``.

The teacher is kept outside the module's registered children: it is never in the optimizer, never
in ``state_dict`` (a checkpoint is student-sized), never wrapped by DDP/FSDP (it is replicated and
frozen on every device), and it follows the module's device and dtype moves (``_apply``).
With ``teacher: null`` and ``kd_ratio: 0`` the same module fine-tunes a model with the LM loss only
(the teacher-SFT stage).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.errors import CheckpointError, ConfigError, NonFiniteError
from lit_kd.eval.generate import SamplingConfig, decode_responses, fit_prompt, generate_ids
from lit_kd.eval.rouge import RougeL
from lit_kd.losses import LossConfig, distillation_loss, kd_diagnostics
from lit_kd.models import (
    ModelConfig,
    StudentConfig,
    check_layers,
    check_same_tokenizer,
    derive_student,
    load_hf_config,
    load_model,
    load_tokenizer,
    shared_vocab_size,
)
from lit_kd.modules.schedule import WarmupCosineLR

LOSS_NAMES = ("loss", "kd_loss", "lm_loss")


def check_student_state(expected: dict[str, Tensor], given: dict[str, Tensor], source: str) -> None:
    """Raise ``CheckpointError`` unless ``given`` has exactly the student's tensor names and shapes."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong_shape = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    if not (missing or unexpected or wrong_shape):
        return
    details = []
    if missing:
        details.append(f"{len(missing)} student tensors missing (e.g. {missing[0]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong_shape:
        k = wrong_shape[0]
        details.append(f"shape of {k} is {tuple(given[k].shape)}, the student has {tuple(expected[k].shape)}")
    raise CheckpointError(f"{source} was saved from another student architecture: " + "; ".join(details))


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


@dataclass
class StepLosses:
    """The losses of one batch and the number of supervised (response) tokens behind them."""

    loss: Tensor
    lm_loss: Tensor
    kd_loss: Optional[Tensor]
    tokens: int
    student_rows: Tensor
    """student logits at the response positions, ``[tokens, V]``"""
    teacher_rows: Optional[Tensor]
    targets: Tensor


class DistillModule(L.LightningModule):
    def __init__(
        self,
        student: StudentConfig,
        teacher: Optional[ModelConfig] = None,
        loss: LossConfig = LossConfig(),
        kd_ratio: float = 1.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: Optional[LRSchedulerCallable] = WarmupCosineLR,
        diagnostics: bool = True,
        val_rouge: Optional[ValidationRouge] = None,
        nonfinite: str = "raise",
    ) -> None:
        """
        Args:
            student: The trainable model: its own source, or ``layers`` kept from the teacher.
            teacher: The frozen teacher (``null`` for LM-only fine-tuning with ``kd_ratio: 0``).
            loss: The distillation objective, τ and its hyperparameters.
            kd_ratio: Weight of the KD term; ``1 − kd_ratio`` weighs the label cross-entropy.
            optimizer: Optimizer factory over the student's parameters.
            lr_scheduler: LR schedule factory, stepped every optimizer step (``null``: constant LR).
            diagnostics: Log the KD diagnostics (``diag/*``: teacher entropy and non-target mass at τ,
                top-1 agreement, KD gradient norms on the target and non-target logits) every
                ``log_every_n_steps``.
            val_rouge: Generate on part of the validation/test split each epoch and log ROUGE-L
                (``val/rougeL``, ``test/rougeL``); ``null`` turns it off.
            nonfinite: What a NaN or +inf in the logits or the loss does: ``raise`` (an error naming the
                step and batch) or ``skip`` (the batch is dropped, counted in ``train/skipped_batches``;
                under DDP it contributes a zero gradient so the processes stay in step, but the optimizer
                and the LR schedule still step: AdamW's moments decay and weight decay applies).
        """
        super().__init__()
        if not 0.0 <= kd_ratio <= 1.0:
            raise ConfigError(f"model.kd_ratio must be in [0, 1], got {kd_ratio}")
        if teacher is None and kd_ratio > 0:
            raise ConfigError("model.teacher is required when model.kd_ratio > 0 (set kd_ratio: 0 to fine-tune alone)")
        if not student.has_source and (student.layers is None or teacher is None):
            raise ConfigError("model.student needs a source (path, gguf_file or config) or `layers` of the teacher")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.teacher_config, self.student_config, self.loss_config = teacher, student, loss
        self.kd_ratio = kd_ratio
        self.diagnostics = diagnostics
        if nonfinite not in ("raise", "skip"):
            raise ConfigError(f"model.nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        self.nonfinite = nonfinite
        self.skipped_batches = 0
        self.val_rouge = val_rouge
        self.rouge = nn.ModuleDict({stage: RougeL() for stage in ("val", "test")})
        self._generated = {"val": 0, "test": 0}
        self.optimizer_factory: Callable = optimizer
        self.lr_scheduler_factory: Optional[Callable] = lr_scheduler

        self.tokenizer: PreTrainedTokenizerBase = self._load_tokenizers()
        self._check_student_layers()
        self.student: Optional[PreTrainedModel] = None  # built in configure_model
        object.__setattr__(self, "_teacher", None)  # deliberately not a registered submodule
        self.vocab_size: Optional[int] = None
        self._step_started_at: Optional[float] = None

    # -- models -----------------------------------------------------------------------------------

    @property
    def teacher(self) -> Optional[PreTrainedModel]:
        return self._teacher

    def _load_tokenizers(self) -> PreTrainedTokenizerBase:
        """The teacher's tokenizer (the student's when there is no teacher); a student with a tokenizer
        of its own must match it exactly."""
        student_has_tokenizer = self.student_config.tokenizer is not None or (
            self.student_config.has_source and self.student_config.config is None
        )
        if self.teacher_config is None:
            return load_tokenizer(self.student_config, "student")
        tokenizer = load_tokenizer(self.teacher_config, "teacher")
        if student_has_tokenizer:
            student_tokenizer = load_tokenizer(self.student_config, "student")
            check_same_tokenizer(
                tokenizer, student_tokenizer, self.teacher_config.describe(), self.student_config.describe()
            )
        return tokenizer

    def _check_student_layers(self) -> None:
        """``student.layers`` against the parent's config (no weights loaded), before any data is tokenized."""
        if self.student_config.layers is None:
            return
        parent, role = (
            (self.student_config, "student") if self.student_config.has_source else (self.teacher_config, "teacher")
        )
        available = load_hf_config(parent, role).num_hidden_layers
        check_layers(self.student_config.layers, available, f"the {role} ({parent.describe()})")

    def configure_model(self) -> None:
        """Load (or derive) the models; idempotent, as Lightning calls it in every stage."""
        if self.student is not None:
            return
        teacher = None
        if self.teacher_config is not None:
            teacher = load_model(self.teacher_config, "teacher")
            teacher.requires_grad_(False)
            teacher.eval()
        if self.student_config.has_source:
            student = load_model(self.student_config, "student")
            if self.student_config.layers is not None:
                student = derive_student(student, self.student_config.layers)
        else:
            student = derive_student(teacher, self.student_config.layers)
        self.student = student.to(self.student_config.torch_dtype)
        object.__setattr__(self, "_teacher", teacher)
        student_width = self.student.get_output_embeddings().weight.shape[0]
        teacher_width = teacher.get_output_embeddings().weight.shape[0] if teacher is not None else student_width
        self.vocab_size = shared_vocab_size(
            self.tokenizer,
            teacher_width,
            student_width,
            self.teacher_config.describe() if self.teacher_config else "<none>",
            self.student_config.describe() if self.student_config.has_source else "derived from the teacher",
        )
        # follow whatever device/dtype the module is already on
        if teacher is not None:
            teacher.to(device=self.device)
        self.student.to(device=self.device)
        rank_zero_info(
            f"student: {sum(p.numel() for p in self.student.parameters()):,} trainable parameters"
            + (f"; teacher: {sum(p.numel() for p in teacher.parameters()):,} frozen" if teacher is not None else "")
            + f"; compared over {self.vocab_size:,} vocabulary entries"
        )

    def _apply(self, fn: Callable, recurse: bool = True) -> "DistillModule":
        super()._apply(fn, recurse)
        if self._teacher is not None:
            self._teacher._apply(fn)
        return self

    # -- the step ---------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Student logits ``[B, T, V]``."""
        return self.student(input_ids=input_ids, attention_mask=attention_mask).logits

    def compute_losses(self, batch: dict[str, Tensor]) -> StepLosses:
        """Token-mean CE and KD over the positions that predict response tokens."""
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX  # position t predicts token t + 1
        targets = labels[mask]
        student_rows = self(batch["input_ids"], batch["attention_mask"])[:, :-1, : self.vocab_size][mask]
        lm_loss = F.cross_entropy(student_rows.float(), targets)
        kd_loss = None
        if self._teacher is not None and self.kd_ratio > 0:
            with torch.no_grad():
                teacher_logits = self._teacher(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            teacher_rows = teacher_logits[:, :-1, : self.vocab_size][mask]
            kd_loss = distillation_loss(self.loss_config, student_rows, teacher_rows, targets=targets)
        loss = lm_loss if kd_loss is None else (1.0 - self.kd_ratio) * lm_loss + self.kd_ratio * kd_loss
        return StepLosses(
            loss=loss,
            lm_loss=lm_loss,
            kd_loss=kd_loss,
            tokens=int(mask.sum()),
            student_rows=student_rows,
            teacher_rows=teacher_rows if kd_loss is not None else None,
            targets=targets,
        )

    def _check_finite(self, losses: StepLosses, stage: str, batch_idx: int) -> bool:
        """Apply the ``nonfinite`` policy; True when the batch may be used."""
        problems = [
            f"{what} in {name}"
            for name, tensor in (("student logits", losses.student_rows), ("teacher logits", losses.teacher_rows))
            if tensor is not None
            for what, found in (("NaN", torch.isnan(tensor)), ("+inf", torch.isposinf(tensor)))
            if found.any()
        ]
        if not torch.isfinite(losses.loss.detach()):
            problems.append(f"non-finite loss ({losses.loss.item()})")
        if not problems:
            return True
        where = f"{stage} step {self.global_step}, batch {batch_idx}, epoch {self.current_epoch}"
        message = f"{', '.join(problems)} at {where}"
        if self.nonfinite == "raise":
            raise NonFiniteError(message + " (set model.nonfinite: skip to skip such batches)")
        self.skipped_batches += 1
        rank_zero_warn(f"skipping the batch: {message} ({self.skipped_batches} skipped so far)")
        return False

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Optional[Tensor]:
        losses = self.compute_losses(batch)
        size = batch["input_ids"].shape[0]
        if not self._check_finite(losses, "train", batch_idx):
            self.log("train/skipped_batches", float(self.skipped_batches), batch_size=size)
            if self.trainer.world_size > 1:  # every rank must take part in the gradient all-reduce
                return sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0
            return None  # Lightning skips backward and the optimizer step
        self.log("train/loss", losses.loss, prog_bar=True, batch_size=size)
        self.log("train/lm_loss", losses.lm_loss, batch_size=size)
        if losses.kd_loss is not None:
            self.log("train/kd_loss", losses.kd_loss, batch_size=size)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        if self.diagnostics and losses.teacher_rows is not None and self._logging_this_step():
            diagnostics = kd_diagnostics(self.loss_config, losses.student_rows, losses.teacher_rows, losses.targets)
            for name, value in diagnostics.items():
                self.log(f"diag/{name}", value, batch_size=size)
        return losses.loss

    def _logging_this_step(self) -> bool:
        """True on the steps whose logged values reach the logger (every ``log_every_n_steps``), so the
        diagnostics cost nothing on the others. Uses the connector's own decision, the one ``self.log`` obeys."""
        return bool(self.trainer._logger_connector.should_update_logs)

    def _eval_step(self, stage: str, batch: dict[str, Tensor], batch_idx: int) -> None:
        losses = self.compute_losses(batch)
        if not self._check_finite(losses, stage, batch_idx):
            return
        for name in LOSS_NAMES:
            value = getattr(losses, name)
            if value is not None:
                # weighting each batch mean by its token count makes the epoch value a token mean over
                # the whole split; sync_dist sums values and weights over processes
                self.log(f"{stage}/{name}", value, prog_bar=name == "loss", batch_size=losses.tokens, sync_dist=True)

        if self.val_rouge is not None:
            self._generation_step(stage, batch)

    def _generation_step(self, stage: str, batch: dict[str, Any]) -> None:
        """Sample responses to this batch's prompts (while under this process's share of
        ``val_rouge.examples``) and score them against the references; synced by torchmetrics."""
        quota = -(-self.val_rouge.examples // self.trainer.world_size)
        take = min(quota - self._generated[stage], batch["input_ids"].shape[0])
        if take <= 0 or "references" not in batch:
            return
        prompts = []
        for row in range(take):  # the prompt is everything before the first supervised token
            start = int((batch["labels"][row] != IGNORE_INDEX).nonzero()[0])
            prompts.append(fit_prompt(batch["input_ids"][row, :start].tolist(), self.val_rouge.generation))
        seed = self.val_rouge.seed + 1_000_003 * self.global_rank + self._generated[stage]
        outputs = generate_ids(self.student, self.tokenizer, prompts, self.val_rouge.generation, seed)
        texts = decode_responses(self.tokenizer, outputs)
        self.rouge[stage].update(texts, batch["references"][:take])
        self._generated[stage] += take
        self.log(f"{stage}/rougeL", self.rouge[stage], prog_bar=True, batch_size=take)

    def on_validation_epoch_start(self) -> None:
        self._generated["val"] = 0

    def on_test_epoch_start(self) -> None:
        self._generated["test"] = 0

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch, batch_idx)

    # -- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also save the RNG states (Lightning does not), so a resumed run draws what the original would have."""
        checkpoint["lit_kd_rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),
            # as a tensor, so the checkpoint still loads with torch.load(weights_only=True)
            "numpy": [torch.from_numpy(np.random.get_state()[1].astype(np.int64)), *np.random.get_state()[2:]],
        }
        checkpoint["lit_kd_skipped_batches"] = self.skipped_batches

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another student architecture with a clear error; restore RNG states."""
        check_student_state(self.state_dict(), checkpoint.get("state_dict", {}), "the checkpoint")
        states = checkpoint.get("lit_kd_rng_states")
        if states is not None:
            torch.set_rng_state(states["torch"])
            if states["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            random.setstate(states["python"])
            keys, *rest = states["numpy"]
            np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), *rest))
        self.skipped_batches = checkpoint.get("lit_kd_skipped_batches", 0)

    # -- throughput -------------------------------------------------------------------------------

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started_at = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self._step_started_at is None:
            return
        elapsed = time.perf_counter() - self._step_started_at
        tokens = float(batch["attention_mask"].sum())
        self.log("train/tokens_per_sec", tokens / max(elapsed, 1e-9), batch_size=batch["input_ids"].shape[0])

    # -- optimisation -----------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.student.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """Give a ``WarmupCosineLR`` without ``total_steps`` the run's number of optimizer steps. Done here,
        not in ``configure_optimizers``: asking for ``estimated_stepping_batches`` there builds the train
        loader before a checkpoint's loader state is restored, and a resumed run would lose its data order."""
        for config in self.trainer.lr_scheduler_configs:
            if getattr(config.scheduler, "total_steps", 0) is None:
                config.scheduler.total_steps = int(self.trainer.estimated_stepping_batches)
