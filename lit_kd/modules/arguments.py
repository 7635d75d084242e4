"""The checks of ``DistillModule``'s arguments that concern more than one of them (each argument's own type and
range are checked by its dataclass)."""

from __future__ import annotations

from typing import Optional

from lit_kd.errors import ConfigError
from lit_kd.losses import LossConfig
from lit_kd.models import ModelConfig, StudentConfig
from lit_kd.modules.cross_tokenizer import CrossTokenizerConfig, check_cross_tokenizer
from lit_kd.modules.policy import PolicyConfig, samples_students_outputs

TEACHER_SHARDING = ("replicate", "shard")


def check_module_arguments(
    student: StudentConfig,
    teacher: Optional[ModelConfig],
    kd_ratio: float,
    teacher_cache: Optional[str],
    chunk_size: Optional[int | str],
    policy: Optional[PolicyConfig],
    teacher_sharding: str = "replicate",
    loss: Optional[LossConfig] = None,
    cross_tokenizer: Optional[CrossTokenizerConfig] = None,
) -> None:
    """One ``ConfigError`` naming the setting, for a combination that cannot run."""
    if not 0.0 <= kd_ratio <= 1.0:
        raise ConfigError(f"model.kd_ratio must be in [0, 1], got {kd_ratio}")
    if teacher is None and kd_ratio > 0:
        raise ConfigError("model.teacher is required when model.kd_ratio > 0 (set kd_ratio: 0 to fine-tune alone)")
    if not student.has_source and (student.layers is None or teacher is None):
        raise ConfigError("model.student needs a source (path, gguf_file or config) or `layers` of the teacher")
    if chunk_size not in (None, "auto") and (isinstance(chunk_size, (bool, str)) or chunk_size < 1):  # type: ignore
        raise ConfigError(f"model.chunk_size must be a positive number of rows, auto or null, got {chunk_size!r}")
    if teacher_cache is not None and teacher is None:
        raise ConfigError("model.teacher_cache needs model.teacher: it names the teacher the cache was built from")
    if samples_students_outputs(policy) and teacher_cache is not None:
        raise ConfigError(
            "model.policy samples new responses, which only a live teacher can score; a teacher cache holds the "
            "data's responses only: drop model.teacher_cache or set model.policy.student_fraction: 0"
        )
    if teacher_sharding not in TEACHER_SHARDING:
        choices = ", ".join(TEACHER_SHARDING)
        raise ConfigError(f"model.teacher_sharding must be one of {choices}, got {teacher_sharding!r}")
    if teacher_sharding == "shard" and (teacher is None or teacher_cache is not None):
        raise ConfigError(
            "model.teacher_sharding: shard needs a live teacher to shard; with "
            + ("model.teacher_cache the teacher's body is not loaded" if teacher is not None else "no model.teacher")
            + ": set model.teacher_sharding: replicate"
        )
    if samples_students_outputs(policy) and (teacher is None or kd_ratio == 0):
        raise ConfigError("model.policy needs a teacher to score the student's samples (and kd_ratio > 0)")
    if loss is not None and loss.moves_tau and (teacher is None or kd_ratio == 0):
        key = "tau_rule" if loss.tau_rule != "none" else "tau_schedule"
        raise ConfigError(
            f"model.loss.{key} sets the KD temperature, but this run has no KD term (no model.teacher or "
            "model.kd_ratio 0): remove it or give the run a teacher and kd_ratio > 0"
        )
    check_cross_tokenizer(cross_tokenizer, student, teacher, loss)
