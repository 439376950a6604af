"""Attacks of "Are aligned neural networks adversarially aligned?" (Carlini et al., arXiv:2306.15447)
and the standard attacks they build on, over any differentiable loss closure."""
from fmkit.adversarial.image import (
    AttackResult,
    apgd,
    apgd_checkpoints,
    dlr_loss,
    pgd,
    random_start,
    target_string_attack,
    teacher_forced_target_loss,
)

__all__ = ["AttackResult", "pgd", "apgd", "apgd_checkpoints", "dlr_loss", "random_start",
           "target_string_attack", "teacher_forced_target_loss"]
