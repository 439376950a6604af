"""Attacks of "Are aligned neural networks adversarially aligned?" (Carlini et al., arXiv:2306.15447)
and the standard attacks they build on, over any differentiable loss closure.

Image attacks: pgd, apgd, apgd_targeted (APGD-T), autoattack (APGD-CE then APGD-T, the APGD part of
AutoAttack), target_string_attack. Text attacks: gcg, gbda, arca, and the solvable test set."""
from fmkit.adversarial.image import (
    AttackResult,
    apgd,
    apgd_checkpoints,
    apgd_targeted,
    autoattack,
    dlr_loss,
    pgd,
    sample_random_start,
    target_string_attack,
    teacher_forced_target_loss,
)
from fmkit.adversarial.text import (
    SolvableCase,
    TextAttackResult,
    arca,
    gbda,
    gcg,
    solvable_text_attack_set,
    verify_solvable_case,
)

__all__ = ["SolvableCase", "TextAttackResult", "arca", "gbda", "gcg", "solvable_text_attack_set",
           "verify_solvable_case", "AttackResult", "pgd", "apgd", "apgd_checkpoints", "apgd_targeted",
           "autoattack", "dlr_loss", "sample_random_start",
           "target_string_attack", "teacher_forced_target_loss"]
