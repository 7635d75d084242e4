"""A teacher–student pair: the shared tokenizer, checks that need no weights, and building the two models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_kd.models.adapters import add_adapters, check_adapters, check_quantization, quantization_config
from lit_kd.models.config import ModelConfig, StudentConfig
from lit_kd.models.loading import adapter_directory, load_hf_config, load_model, load_tokenizer
from lit_kd.models.student import check_layers, derive_student
from lit_kd.models.vocab import check_same_tokenizer, shared_vocab_size


def pair_tokenizer(student: StudentConfig, teacher: Optional[ModelConfig]) -> PreTrainedTokenizerBase:
    """The teacher's tokenizer (the student's when there is no teacher); a student with a tokenizer of its own
    must match it exactly (``model.cross_tokenizer`` distills across tokenizers: ``pair_tokenizers``)."""
    if teacher is None:
        return load_tokenizer(student, "student")
    tokenizer = load_tokenizer(teacher, "teacher")
    if student.tokenizer is not None or (student.has_source and student.config is None):
        check_same_tokenizer(tokenizer, load_tokenizer(student, "student"), teacher.describe(), student.describe())
    return tokenizer


def pair_tokenizers(
    student: StudentConfig, teacher: Optional[ModelConfig], cross: bool
) -> tuple[PreTrainedTokenizerBase, Optional[PreTrainedTokenizerBase]]:
    """(the tokenizer of the data, generation and evaluation; the teacher's own when it differs). With ``cross``
    the student reads the text with its own tokenizer and the teacher with its own; otherwise one shared one."""
    if not cross or teacher is None:
        return pair_tokenizer(student, teacher), None
    return load_tokenizer(student, "student"), load_tokenizer(teacher, "teacher")


def check_models(student: StudentConfig, teacher: Optional[ModelConfig]) -> None:
    """What the configs alone show, before any data is tokenized or weights load: an ``adapter`` directory that is
    not there; ``student.layers`` and ``student.peft`` against the parent's architecture."""
    for config, role in ((teacher, "teacher"), (student, "student")):
        if config is not None and config.adapter is not None:
            adapter_directory(config, role)
    if student.peft is not None:
        check_quantization(student.peft, student.path is not None and student.gguf_file is None and not student.layers)
    if student.layers is None and student.peft is None:
        return
    parent, role = (student, "student") if student.has_source else (teacher, "teacher")
    if parent is None:
        return  # a student of no source and no teacher: check_module_arguments names it
    architecture = load_hf_config(parent, role)
    if student.layers is not None:
        check_layers(student.layers, architecture.num_hidden_layers, f"the {role} ({parent.describe()})")
    if student.peft is not None:
        check_adapters(student.peft, architecture)


@dataclass
class Pair:
    student: PreTrainedModel
    teacher: Optional[PreTrainedModel]
    """None without a teacher, or when ``keep_teacher`` was false (its body only served to cut the student)"""


def build_pair(
    student: StudentConfig,
    teacher: Optional[ModelConfig],
    keep_teacher: bool = True,
    new_vocabulary: Optional[Callable[[PreTrainedModel], PreTrainedModel]] = None,
) -> Pair:
    """Load the teacher (frozen, eval mode) and load or cut the student, with its adapters (``student.peft``: its
    base frozen). With ``keep_teacher=False`` the teacher's body is loaded only when the student is cut from it, and
    released at once. ``new_vocabulary``: what gives a student cut from the teacher its own vocabulary
    (``lit_kd.models.vocab_transplant``)."""
    needs_teacher = teacher is not None and (keep_teacher or not student.has_source)
    teacher_model = load_model(teacher, "teacher").requires_grad_(False).eval() if needs_teacher else None
    quantized = student.peft is not None and student.peft.quantize is not None
    if quantized:  # QLoRA: 4-bit as it loads, on this process's CUDA device (check_quantization ran)
        student_model = load_model(student, "student", quantization_config(student.peft, student.torch_dtype))
    elif student.has_source:
        student_model = load_model(student, "student")
        if student.layers is not None:
            student_model = derive_student(student_model, student.layers)
    else:
        student_model = derive_student(teacher_model, student.layers)
        if new_vocabulary is not None:
            student_model = new_vocabulary(student_model)
    if not quantized:
        student_model = student_model.to(student.torch_dtype)
    if student.peft is not None:
        student_model = add_adapters(student_model, student.peft, student.init_seed)
    return Pair(student_model, teacher_model if keep_teacher else None)



def pair_vocab_size(
    tokenizer: PreTrainedTokenizerBase,
    student_model: PreTrainedModel,
    teacher_width: Optional[int],
    student: StudentConfig,
    teacher: Optional[ModelConfig],
) -> int:
    """The vocabulary both heads are compared over (``shared_vocab_size``), ``teacher_width`` rows in the
    teacher's head (None: no teacher)."""
    student_width = student_model.get_output_embeddings().weight.shape[0]
    return shared_vocab_size(
        tokenizer,
        teacher_width if teacher_width is not None else student_width,
        student_width,
        teacher.describe() if teacher else "<none>",
        student.describe() if student.has_source else "derived from the teacher",
    )
