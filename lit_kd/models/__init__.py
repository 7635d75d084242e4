"""Models: load causal LMs (hub / local dir / GGUF / random config), derive students, check vocabularies."""

from lit_kd.models.config import DTYPES, ModelConfig, StudentConfig
from lit_kd.models.loading import ModelLoadError, load_hf_config, load_model, load_tokenizer, resolve_path
from lit_kd.models.student import check_layers, derive_student, find_layer_stack
from lit_kd.models.vocab import VocabularyMismatchError, check_same_tokenizer, shared_vocab_size

__all__ = [
    "DTYPES",
    "ModelConfig",
    "ModelLoadError",
    "StudentConfig",
    "VocabularyMismatchError",
    "check_layers",
    "check_same_tokenizer",
    "derive_student",
    "find_layer_stack",
    "load_hf_config",
    "load_model",
    "load_tokenizer",
    "resolve_path",
    "shared_vocab_size",
]
