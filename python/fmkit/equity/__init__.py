"""Equity audits (Pierson et al., "Use large language models to promote equity", arXiv:2312.14804).

The paper is a perspective: it proposes research directions, not an algorithm. This package makes
the measurable steps those directions rely on computable (spec §3):

    subgroup_audit(...)          per-group accuracy, FPR/FNR, ECE, PIECE, Brier with bootstrap CIs
                                 (fast: sufficient statistics), gaps, ratios, worst group, Holm/BH,
                                 intersectional and multiple group maps, cluster bootstrap,
                                 bias-corrected intervals for ECE/PIECE/max - min (interval="auto"),
                                 min_count on each metric's own denominator
    StructuredExtractor          schema-constrained extraction with any HF causal LM (log-likelihood
                                 choice among the allowed values and "not mentioned")
    validate_extraction(...)     per field x subgroup precision/recall/sens/spec, missing vs absent
    corrected_prevalence(...)    Rogan-Gladen; corrected_disparity(...): Rogan-Gladen or
                                 prediction-powered inference, covariate-adjusted odds ratio (PPI
                                 logistic regression), bootstrap / cluster bootstrap / CLT CIs
    calibration_fit(...)         per-group calibration slope and intercept with bootstrap CIs
    plot_audit(...)              group metrics with their intervals
"""
from fmkit.equity.audit import AuditResult, EquityWarning, MapAudit, subgroup_audit
from fmkit.equity.extraction import (
    NOT_MENTIONED,
    Extraction,
    Field,
    StructuredExtractor,
    ValidationResult,
    validate_extraction,
)
from fmkit.equity.plots import plot_audit
from fmkit.equity.prevalence import DisparityResult, corrected_disparity, corrected_prevalence
from fmkit.equity.recalibration import CalibrationFit, calibration_fit

__all__ = ["subgroup_audit", "AuditResult", "MapAudit", "EquityWarning", "StructuredExtractor", "Field",
           "Extraction", "NOT_MENTIONED", "validate_extraction", "ValidationResult", "corrected_prevalence",
           "corrected_disparity", "DisparityResult", "plot_audit", "calibration_fit", "CalibrationFit"]
