"""lit_kd: knowledge distillation of causal LMs with PyTorch Lightning, τ as a first-class knob.

Layout (one sub-package per concern):
    losses/   τ-scaled divergences: pure functions of (student logits, teacher logits, τ)
    models/   loading causal LMs (hub, local dir, GGUF, random config), deriving students, vocab checks
    data/     Dolly-format instruction data: reading, prompt template, tokenization, DataModule
    modules/  the DistillModule LightningModule and the LR schedule
    eval/     generation and ROUGE-L evaluation
    cli/      LightningCLI entry point and the extra commands (demo, ...)
"""

__version__ = "0.1.0"
