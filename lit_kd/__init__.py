"""lit_kd: knowledge distillation of causal LMs with PyTorch Lightning, τ as a first-class knob.

Layout (one sub-package per concern; each layer imports only the layers below it):
    cli/          parses and dispatches ``python -m lit_kd <command>`` (one command table); nothing imports it
    training/     the one builder (``build``), the Trainer, checkpoint IO and every callback of a run
    experiments/  sweeps (plan, run, the typed records a fit writes and sweeps read) and reports
    modules/      the DistillModule LightningModule (the step), its policies and the LR schedule
    teacher/      the teacher as a source (live model or an exact cache of its hidden states), cache building
    eval/         generation and ROUGE-L evaluation (and the validation ROUGE-L callback)
    losses/       τ-scaled divergences: pure functions of (student logits, teacher logits, τ), their registry
    models/       loading causal LMs (hub, local dir, GGUF, random config), deriving students, vocab checks
    data/         Dolly-format instruction data: reading, prompt template, tokenization, DataModule
    utils/        file output, locks, progress, devices (and ``errors``, below everything)
"""

__version__ = "0.1.0"
