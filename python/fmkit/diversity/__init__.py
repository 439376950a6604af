"""Intra-/inter-class diversity for supervised pre-training (Zhang et al., NeurIPS 2023,
arXiv:2305.12224): at a fixed budget N = K·n, the best pre-training set balances the number of
classes K against the examples per class n, and the best ratio K/n does not depend on N.

    ClassSubsetSampler        K classes × n examples from a labelled pool
    diversity_sweep           the K × n sweep at small budgets, cached per cell (resumable)
    fit_diversity_law         err = C0 + A K^-a + B n^-b with bootstrap CIs, a - b drift, hold-out
    fit_ratio_quadratic       the convex alternative: a quadratic in log(K/n) per budget
    predict_optimal_classes   K* and n* for a larger budget
    plot_diversity_fit        heat-map over (log K, log n) and curves against log(K/n)
    class_diversity           intra-class Vendi per class, inter-class Vendi, Fisher ratio (batched)
"""
from fmkit.diversity.fit import (
    DegenerateFitWarning,
    DiversityDriftWarning,
    DiversityFit,
    OptimalClasses,
    RatioFit,
    fit_diversity_law,
    fit_ratio_quadratic,
    predict_optimal_classes,
)
from fmkit.diversity.metrics import ClassDiversity, class_diversity, vendi_from_eigenvalues, vendi_score
from fmkit.diversity.plot import plot_diversity_fit
from fmkit.diversity.sampler import ClassSubsetSampler
from fmkit.diversity.sweep import cell_seed, default_K_grid, diversity_sweep, load_results

__all__ = [
    "ClassSubsetSampler", "diversity_sweep", "load_results", "default_K_grid", "cell_seed",
    "fit_diversity_law", "fit_ratio_quadratic", "predict_optimal_classes", "plot_diversity_fit",
    "DiversityFit", "OptimalClasses", "RatioFit", "DiversityDriftWarning", "DegenerateFitWarning",
    "class_diversity", "ClassDiversity", "vendi_score", "vendi_from_eigenvalues",
]
