"""ProCal (Xiong et al., NeurIPS 2023, arXiv:2306.04590): proximity-informed calibration.

    proximity(...)                         how dense the data is around each sample (exact kNN)
    ece / ace / mce / brier / piece        calibration metrics (PIECE: proximity-informed ECE)
    TemperatureScaling, ..., MultiIsotonic the paper's baseline calibrators
    DensityRatioCalibrator, BinMeanShiftCalibrator   ProCal on top of them
    proximity_bias_test                    confidence-matched high- vs low-proximity test
    reliability_diagram, proximity_bias_plot
    compare_methods                        every method with and without ProCal (`fmkit calibrate`)
"""
from fmkit.calibration.bias import ProximityBiasResult, proximity_bias_test
from fmkit.calibration.calibrators import (
    EnsembleTemperatureScaling,
    HistogramBinning,
    IsotonicCalibration,
    MultiIsotonic,
    ParameterizedTemperatureScaling,
    TemperatureScaling,
)
from fmkit.calibration.compare import Comparison, Split, compare_methods
from fmkit.calibration.metrics import ace, brier, ece, evaluate, mce, piece
from fmkit.calibration.plots import proximity_bias_plot, reliability_diagram
from fmkit.calibration.procal import BinMeanShiftCalibrator, DensityRatioCalibrator
from fmkit.calibration.proximity import proximity

__all__ = [
    "proximity", "ece", "ace", "mce", "brier", "piece", "evaluate",
    "TemperatureScaling", "EnsembleTemperatureScaling", "ParameterizedTemperatureScaling",
    "HistogramBinning", "IsotonicCalibration", "MultiIsotonic",
    "DensityRatioCalibrator", "BinMeanShiftCalibrator",
    "proximity_bias_test", "ProximityBiasResult", "reliability_diagram", "proximity_bias_plot",
    "compare_methods", "Comparison", "Split",
]
