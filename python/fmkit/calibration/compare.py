"""Every calibration method with and without ProCal on one (calibration, test) split.

This is what `fmkit calibrate` and `fmkit demo calibration` run. Follows the paper's protocol
(§6.1, App. C): proximity of calibration points to the rest of the calibration set (self
excluded) and of test points to the calibration set; each base calibrator is fit on the
calibration split; ProCal adds Density-Ratio on top of the continuous ones (conf, ts, ets,
pts) and Bin-Mean-Shift on top of the binning ones (hb, ir, mir); metrics are computed on the
test split with confidence taken at the ORIGINAL model prediction. PTSK (new in the paper)
is PTS fed the top-5 logits and the 5 nearest neighbours' exp(-distance) values.

PTS and PTSK train with lr=1e-2 by default (`pts_settings="release"`: the released code's 5e-5,
which barely trains and made calibration worse, issue 13.7). A continuous calibrator whose NLL on
the calibration split ends above the uncalibrated model's gets a CalibrationWarning naming it,
and its name is listed in `Comparison.worse_than_uncalibrated`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fmkit.calibration._arrays import as_tensor, check_labels, check_same_length
from fmkit.calibration.calibrators import (
    CalibrationWarning,
    EnsembleTemperatureScaling,
    HistogramBinning,
    IsotonicCalibration,
    MultiIsotonic,
    ParameterizedTemperatureScaling,
    TemperatureScaling,
    warn_if_nll_rises,
)
from fmkit.calibration.metrics import evaluate
from fmkit.calibration.procal import BinMeanShiftCalibrator, DensityRatioCalibrator
from fmkit.calibration.proximity import proximity

CONTINUOUS = ("conf", "ts", "ets", "pts", "ptsk")
BINNING = ("hb", "ir", "mir")
METHODS = CONTINUOUS + BINNING
METRIC_KEYS = ("ece", "ace", "mce", "brier", "piece", "accuracy")
PTS_SETTINGS = ("default", "release")


@dataclass
class Split:
    """logits [n, C], labels [n], features [n, d] of one split (torch or numpy)."""

    logits: Any
    labels: Any
    features: Any

    @classmethod
    def load(cls, path: str) -> "Split":
        """Reads an .npz holding `logits`, `labels` and `features`."""
        with np.load(path) as data:
            missing = [key for key in ("logits", "labels", "features") if key not in data.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {missing}; expected logits, labels and features")
            return cls(data["logits"], data["labels"], data["features"])

    def tensors(self, name: str, device=None):
        logits = as_tensor(self.logits, f"{name}.logits", ndim=2, device=device)
        labels = check_labels(f"{name}.labels", as_tensor(self.labels, f"{name}.labels", ndim=1, device=device),
                              logits.shape[1])
        features = as_tensor(self.features, f"{name}.features", ndim=2, dtype=torch.float32, device=device)
        check_same_length(f"{name}.logits", logits, f"{name}.labels", labels)
        check_same_length(f"{name}.logits", logits, f"{name}.features", features)
        return logits, labels, features


@dataclass
class Comparison:
    """Metrics per method ("ts", "ts+procal", ...) on the test split, plus what plots need."""

    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    test_confidence: dict[str, np.ndarray] = field(default_factory=dict)
    test_correct: np.ndarray | None = None
    test_proximity: np.ndarray | None = None
    worse_than_uncalibrated: list[str] = field(default_factory=list)  # methods that raised the val NLL

    def table(self) -> str:
        header = f"{'method':<14}" + "".join(f"{k:>10}" for k in METRIC_KEYS)
        lines = [header, "-" * len(header)]
        for name, m in self.metrics.items():
            lines.append(f"{name:<14}" + "".join(f"{100 * m[k]:>10.2f}" for k in METRIC_KEYS))
        lines.append("(all values x 100; brier is the top-label form)")
        return "\n".join(lines)

    def save(self, out_dir: str, overwrite: bool = False) -> list[str]:
        """Writes metrics.json, table.txt and the plots into `out_dir`; returns the paths.

        `out_dir` must be empty or absent unless `overwrite=True`, and is then replaced whole
        (no plots of an earlier run's methods are left beside the new ones)."""
        import os

        from fmkit._output import replace_dir

        with replace_dir(out_dir, overwrite=overwrite, what="out_dir") as tmp:
            names = self._write(str(tmp))
        return [os.path.join(out_dir, name) for name in names]

    def _write(self, out_dir: str) -> list[str]:
        import json
        import os

        from fmkit.calibration.plots import proximity_bias_plot, reliability_diagram

        paths = [os.path.join(out_dir, "metrics.json"), os.path.join(out_dir, "table.txt")]
        with open(paths[0], "w") as f:
            json.dump(self.metrics, f, indent=1)
        with open(paths[1], "w") as f:
            f.write(self.table() + "\n")
        for name in self.test_confidence:
            if name.endswith("+procal"):
                continue
            pair = {name: self.test_confidence[name], f"{name}+procal": self.test_confidence[f"{name}+procal"]}
            for suffix, conf in pair.items():
                fig = reliability_diagram(conf, self.test_correct, proximities=self.test_proximity,
                                          title=f"{suffix} (test)")
                path = os.path.join(out_dir, f"reliability_{suffix.replace('+', '_')}.png")
                fig.savefig(path, dpi=110)
                paths.append(path)
            fig = proximity_bias_plot(pair, self.test_correct, self.test_proximity)
            path = os.path.join(out_dir, f"proximity_bias_{name}.png")
            fig.savefig(path, dpi=110)
            paths.append(path)
        import matplotlib.pyplot as plt

        plt.close("all")
        return [os.path.basename(p) for p in paths]


def _base_calibrator(method: str, seed: int, pts_settings: str = "default"):
    pts = ParameterizedTemperatureScaling.released if pts_settings == "release" else ParameterizedTemperatureScaling
    return {
        "ts": TemperatureScaling,
        "ets": EnsembleTemperatureScaling,
        "pts": lambda: pts(seed=seed),
        "ptsk": lambda: pts(top_k=5, seed=seed),
        "hb": lambda: HistogramBinning(n_bins=10),
        "ir": IsotonicCalibration,
        "mir": MultiIsotonic,
    }[method]()


def compare_methods(val: Split, test: Split, methods=METHODS, *, k: int = 10, variant: str = "reference",
                    backend: str = "auto", seed: int = 0, progress: bool = True, device=None,
                    pts_settings: str = "default") -> Comparison:
    """Fits every method on `val`, evaluates on `test`, each with and without ProCal.

    pts_settings: "default" (PTS / PTSK trained with lr=1e-2) or "release" (the released lr=5e-5)."""
    from tqdm import tqdm

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; choose from {list(METHODS)}")
    if pts_settings not in PTS_SETTINGS:
        raise ValueError(f"pts_settings: expected one of {PTS_SETTINGS}, got {pts_settings!r}")
    v_logits, v_labels, v_feat = val.tensors("val", device)
    t_logits, t_labels, t_feat = test.tensors("test", v_logits.device)
    if t_logits.shape[1] != v_logits.shape[1]:
        raise ValueError(f"test.logits: {t_logits.shape[1]} classes, but val.logits has {v_logits.shape[1]}")
    steps = tqdm(total=2 + len(methods), desc="calibrate", disable=not progress)
    steps.set_postfix_str("proximity (kNN)")
    v_prox, v_neigh = proximity(v_feat, k=k, variant=variant, backend=backend, return_neighbors=True)
    t_prox, t_neigh = proximity(t_feat, v_feat, k=k, variant=variant, backend=backend, return_neighbors=True)
    extra = {"val": v_neigh[:, :5], "test": t_neigh[:, :5]}  # PTSK's per-neighbour inputs
    steps.update(1)
    v_pred, t_pred = v_logits.argmax(1), t_logits.argmax(1)
    v_soft, t_soft = torch.softmax(v_logits, 1), torch.softmax(t_logits, 1)
    out = Comparison(test_correct=(t_pred == t_labels).cpu().numpy(), test_proximity=t_prox.cpu().numpy())
    rows = torch.arange(t_logits.shape[0], device=t_logits.device)

    def record(name, probs):
        probs = as_tensor(probs, name, device=t_logits.device)
        out.metrics[name] = evaluate(probs, t_labels, t_prox, preds=t_pred)
        out.test_confidence[name] = probs[rows, t_pred].cpu().numpy()

    steps.update(1)
    for method in methods:
        steps.set_postfix_str(method)
        if method == "conf":
            v_probs, t_probs = v_soft, t_soft
        elif method in BINNING:
            cal = _base_calibrator(method, seed).fit(v_soft, v_labels)
            v_probs, t_probs = cal.transform(v_soft), cal.transform(t_soft)
        else:
            with warnings.catch_warnings():  # one warning below, naming the method, instead of the fit's own
                warnings.simplefilter("ignore", CalibrationWarning)
                cal = _base_calibrator(method, seed, pts_settings)
                if method == "ptsk":
                    cal.fit(v_logits, v_labels, extra=extra["val"])
                    v_probs = cal.transform(v_logits, extra=extra["val"])
                    t_probs = cal.transform(t_logits, extra=extra["test"])
                else:
                    cal.fit(v_logits, v_labels)
                    v_probs, t_probs = cal.transform(v_logits), cal.transform(t_logits)
            # NLL is the yardstick for the continuous methods; binning ones may give a class 0 and an infinite NLL.
            if warn_if_nll_rises(f"calibration method {method!r}", v_logits, as_tensor(v_probs, method), v_labels,
                                 "the calibration (val) split"):
                out.worse_than_uncalibrated.append(method)
        record(method, t_probs)
        if method in BINNING:
            procal = BinMeanShiftCalibrator(_base_calibrator(method, seed)).fit(v_soft, v_labels, v_prox, preds=v_pred)
            record(f"{method}+procal", procal.transform(t_soft, t_prox, preds=t_pred))
        else:
            procal = DensityRatioCalibrator().fit(v_probs, v_labels, v_prox, preds=v_pred)
            record(f"{method}+procal", procal.transform(t_probs, t_prox, preds=t_pred))
        steps.update(1)
    steps.close()
    return out
