"""``DistillModule``: a frozen teacher, a trainable student and a τ-scaled objective from the registry.

    L = Σ_i [(1 − kd_ratio) · CE_i + kd_ratio · d_i(student, teacher; τ)] / N_step

over the response positions i (labels ≠ −100 after the causal shift) of the whole optimizer step: N_step
counts the response tokens of every micro-batch of the accumulation window on every process
(``lit_kd.modules.normalization``). The module orchestrates: the teacher comes from a source
(``lit_kd.teacher``: the live model, or a cache of its hidden states), the per-token math and the chunking
from ``lit_kd.losses``.

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
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.data.tokenize import IGNORE_INDEX
from lit_kd.errors import CheckpointError, ConfigError, NonFiniteError
from lit_kd.eval.generate import SamplingConfig, decode_responses, fit_prompt, generate_ids
from lit_kd.eval.rouge import RougeL
from lit_kd.losses import LossConfig
from lit_kd.losses.chunked import TokenSums, chunked_token_sums, token_sums_from_logits
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
from lit_kd.models.head import final_hidden_states, output_head, verify_head
from lit_kd.modules.normalization import StepNormalizer
from lit_kd.modules.schedule import WarmupCosineLR
from lit_kd.teacher import CachedTeacher, LiveTeacher, TeacherCache, cache_key

SPLIT_OF_STAGE = {"train": "train", "val": "val", "test": "test"}


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
        teacher_cache: Optional[str] = None,
        chunk_size: Optional[int] = 512,
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
            teacher_cache: A teacher cache directory (``python -m lit_kd cache-teacher``): the teacher's logits
                are recomputed exactly from its stored hidden states with its LM head, and its body is never
                run (nor loaded, unless the student is cut from its layers). ``teacher`` still names the
                teacher: the cache must have been built for it, the tokenizer and the data.
            chunk_size: Response rows per chunk of the fused-head loss: at most one ``[chunk_size, V]`` block
                of each model's logits exists at a time. ``null`` computes the full logits (the former path).
        """
        super().__init__()
        if not 0.0 <= kd_ratio <= 1.0:
            raise ConfigError(f"model.kd_ratio must be in [0, 1], got {kd_ratio}")
        if teacher is None and kd_ratio > 0:
            raise ConfigError("model.teacher is required when model.kd_ratio > 0 (set kd_ratio: 0 to fine-tune alone)")
        if not student.has_source and (student.layers is None or teacher is None):
            raise ConfigError("model.student needs a source (path, gguf_file or config) or `layers` of the teacher")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"model.chunk_size must be a positive number of rows or null, got {chunk_size}")
        if teacher_cache is not None and teacher is None:
            raise ConfigError("model.teacher_cache needs model.teacher: it names the teacher the cache was built from")
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
        self.teacher_cache_path = teacher_cache
        self.chunk_size = chunk_size
        self.teacher_source: Optional[LiveTeacher | CachedTeacher] = None
        self.normalizer = StepNormalizer()

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
        """Load (or derive) the models and the teacher source; idempotent, as Lightning calls it in every stage.
        With a teacher cache the teacher's body is loaded only to cut the student from it, then released."""
        if self.student is not None:
            return
        teacher = None
        needs_teacher_body = self.teacher_config is not None and (
            self.teacher_cache_path is None or not self.student_config.has_source
        )
        if needs_teacher_body:
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
        cache = None
        if self.teacher_cache_path is not None:
            cache = self.open_teacher_cache()
            teacher = None  # the cache replaces the body (loaded above only to cut the student from it)
        object.__setattr__(self, "_teacher", teacher)
        student_width = self.student.get_output_embeddings().weight.shape[0]
        if cache is not None:
            teacher_width = cache.head.weight.shape[0]
        else:
            teacher_width = teacher.get_output_embeddings().weight.shape[0] if teacher is not None else student_width
        self.vocab_size = shared_vocab_size(
            self.tokenizer,
            teacher_width,
            student_width,
            self.teacher_config.describe() if self.teacher_config else "<none>",
            self.student_config.describe() if self.student_config.has_source else "derived from the teacher",
        )
        if cache is not None:
            self.teacher_source = CachedTeacher(cache, self.vocab_size)
        elif teacher is not None:
            self.teacher_source = LiveTeacher(teacher, self.vocab_size)
        if self.chunk_size is not None:  # logits = head(hidden) must hold exactly for the chunked loss
            verify_head(self.student, "student", self.vocab_size)
            if teacher is not None:
                verify_head(teacher, "teacher", self.vocab_size)
        # follow whatever device/dtype the module is already on
        if teacher is not None:
            teacher.to(device=self.device)
        if isinstance(self.teacher_source, CachedTeacher):
            self.teacher_source.to(self.device)
        self.student.to(device=self.device)
        rank_zero_info(
            f"student: {sum(p.numel() for p in self.student.parameters()):,} trainable parameters"
            + (f"; teacher: {sum(p.numel() for p in teacher.parameters()):,} frozen" if teacher is not None else "")
            + (f"; teacher from the cache {self.teacher_cache_path} (its body not loaded)" if cache is not None else "")
            + f"; compared over {self.vocab_size:,} vocabulary entries"
        )

    def setup(self, stage: str) -> None:
        strategy = self._trainer.strategy if self._trainer is not None else None
        if self.chunk_size is not None and type(strategy).__name__ in ("FSDPStrategy", "ModelParallelStrategy"):
            raise ConfigError(
                "model.chunk_size: the chunked loss applies the student's LM head outside its forward, where FSDP "
                "keeps it sharded; set model.chunk_size: null with FSDP (configs/strategies/fsdp.yaml does)"
            )

    def open_teacher_cache(self) -> TeacherCache:
        """Open ``teacher_cache`` and, inside a trainer with a ``DollyDataModule``, check it was built for this
        teacher, tokenizer and data (the CLI checks it earlier, before anything is written)."""
        cache = TeacherCache.open(self.teacher_cache_path)
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "load_split_records"):
            expected = cache_key(
                self.teacher_config, self.tokenizer, datamodule.load_split_records(), datamodule.max_length
            )
            cache.check(expected)
        return cache

    def _apply(self, fn: Callable, recurse: bool = True) -> "DistillModule":
        super()._apply(fn, recurse)
        if self._teacher is not None:
            self._teacher._apply(fn)
        if isinstance(self.teacher_source, CachedTeacher):
            self.teacher_source.to(self.device)
        return self

    # -- the step ---------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Student logits ``[B, T, V]``."""
        return self.student(input_ids=input_ids, attention_mask=attention_mask).logits

    def compute_losses(self, batch: dict[str, Tensor], stage: str = "train", diagnostics: bool = False) -> TokenSums:
        """Token sums of ℓ_i = (1 − r)·CE_i + r·d_i over the batch's response positions (``lit_kd.losses.chunked``),
        chunked through the LM heads (``chunk_size``) or from full logits (``chunk_size: null``)."""
        labels = batch["labels"][:, 1:]
        mask = labels != IGNORE_INDEX  # position t predicts token t + 1
        targets = labels[mask]
        source = self.teacher_source if self.kd_ratio > 0 else None
        split = SPLIT_OF_STAGE[stage]
        if self.chunk_size is None:
            student_rows = self(batch["input_ids"], batch["attention_mask"])[:, :-1, : self.vocab_size][mask]
            teacher_rows = source.logits_rows(batch, mask, split) if source is not None else None
            return token_sums_from_logits(
                student_rows, teacher_rows, targets, self.loss_config, self.kd_ratio, diagnostics
            )
        hidden = final_hidden_states(self.student, batch["input_ids"], batch["attention_mask"])[:, :-1][mask]
        return chunked_token_sums(
            hidden,
            output_head(self.student, self.vocab_size),
            targets,
            self.loss_config,
            self.kd_ratio,
            self.chunk_size,
            teacher_hidden=source.hidden_rows(batch, mask, split) if source is not None else None,
            teacher_head=source.head if source is not None else None,
            diagnostics=diagnostics,
        )

    def _check_finite(self, sums: TokenSums, stage: str, batch_idx: int) -> bool:
        """Apply the ``nonfinite`` policy; True when the batch may be used."""
        problems = list(sums.problems)
        if not torch.isfinite(sums.loss.detach()):
            problems.append(f"non-finite loss ({(sums.loss.detach() / max(sums.tokens, 1)).item()})")
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
        diagnostics = self.diagnostics and self.kd_ratio > 0 and self.teacher_source is not None
        sums = self.compute_losses(batch, "train", diagnostics=diagnostics and self._logging_this_step())
        size = batch["input_ids"].shape[0]
        if not self._check_finite(sums, "train", batch_idx):
            self.log("train/skipped_batches", float(self.skipped_batches), batch_size=size)
            if self.trainer.world_size > 1:  # every rank must take part in the gradient all-reduce
                return sum(p.sum() for p in self.student.parameters() if p.requires_grad) * 0.0
            return None  # Lightning skips backward and the optimizer step
        self.normalizer.add(sums)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=size)
        for name, value in (sums.diagnostics or {}).items():
            self.log(f"diag/{name}", value, batch_size=size)
        # the micro-batch's sum: the gradient is divided by the step's token count in on_before_optimizer_step
        return sums.loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Token-exact normalization of the accumulated gradients; log the step's token means."""
        means = self.normalizer.finish(
            self.student.parameters(),
            reduce_sum=lambda tensor: self.trainer.strategy.reduce(tensor, reduce_op="sum"),
            grad_scale=self.trainer.accumulate_grad_batches * self.trainer.world_size,
            device=self.device,
        )
        for name, value in means.items():
            if name == "kd_loss" and (self.kd_ratio == 0 or self.teacher_source is None):
                continue
            self.log(f"train/{name}", value, prog_bar=name == "loss")

    def on_train_epoch_start(self) -> None:
        self.normalizer.reset()

    def _logging_this_step(self) -> bool:
        """True on the optimizer steps whose logged values reach the logger (every ``log_every_n_steps``), so
        the diagnostics cost nothing on the others."""
        return (self.trainer.global_step + 1) % max(self.trainer.log_every_n_steps, 1) == 0

    def _eval_step(self, stage: str, batch: dict[str, Tensor], batch_idx: int) -> None:
        sums = self.compute_losses(batch, stage)
        if not self._check_finite(sums, stage, batch_idx):
            return
        for name in ("loss", "kd_loss", "lm_loss"):
            value = sums.mean(name)
            if value is not None:
                # weighting each batch mean by its token count makes the epoch value a token mean over
                # the whole split; sync_dist sums values and weights over processes
                self.log(f"{stage}/{name}", value, prog_bar=name == "loss", batch_size=sums.tokens, sync_dist=True)

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
