"""Calibration of code scores into probabilities, and how to see whether it worked.

Three methods, all fitted on held-out (stay, code) pairs:

- ``temperature``: one temperature for all codes, ``p' = sigmoid(logit(p) / T)``;
- ``platt``: one pooled logistic map, ``p' = sigmoid(a * logit(p) + b)``;
- ``isotonic``: a monotone map per code when the code has enough positive stays
  (``min_positives``, default 50; fewer gives maps too noisy to set thresholds on), pooled along the hierarchy: the code's
  3-character category, then its chapter, then all remaining codes.

Parameters are plain numbers so they serialise into ``policy.json`` and apply unchanged at
inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize

from cimcoder.errors import CimcoderError
from cimcoder.eval.hierarchy import LEVELS, Hierarchy, fit_by_level, node_name

logger = logging.getLogger(__name__)

CalibrationMethod = Literal["isotonic", "platt", "temperature", "none"]
CALIBRATION_METHODS: tuple[str, ...] = ("isotonic", "platt", "temperature", "none")
_EPS = 1e-6


class CalibrationError(CimcoderError):
    """Calibration cannot be fitted or applied to these inputs."""


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _EPS, 1 - _EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@dataclass
class NodeCalibrator:
    """The map of one node: identity, logistic (a, b) on logits, or piecewise-linear isotonic."""

    kind: Literal["identity", "logistic", "isotonic"]
    a: float = 1.0
    b: float = 0.0
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    n_pairs: int = 0
    n_positives: int = 0

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=float)
        if self.kind == "identity":
            return p.copy()
        if self.kind == "logistic":
            return _sigmoid(self.a * _logit(p) + self.b)
        if len(self.x) == 1:
            return np.full_like(p, self.y[0])
        return np.interp(p, self.x, self.y)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "n_pairs": self.n_pairs, "n_positives": self.n_positives}
        if self.kind == "logistic":
            d.update(a=self.a, b=self.b)
        elif self.kind == "isotonic":
            d.update(x=self.x, y=self.y)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeCalibrator:
        kind = d.get("kind")
        if kind not in ("identity", "logistic", "isotonic"):
            raise CalibrationError(f"unknown calibrator kind {kind!r}")
        node = cls(
            kind=kind,
            a=float(d.get("a", 1.0)),
            b=float(d.get("b", 0.0)),
            x=[float(v) for v in d.get("x", [])],
            y=[float(v) for v in d.get("y", [])],
            n_pairs=int(d.get("n_pairs", 0)),
            n_positives=int(d.get("n_positives", 0)),
        )
        if kind == "isotonic" and (not node.x or len(node.x) != len(node.y)):
            raise CalibrationError("isotonic calibrator needs matching, non-empty x and y")
        return node


def fit_logistic(y: np.ndarray, p: np.ndarray, *, temperature_only: bool = False) -> NodeCalibrator:
    """Pooled Platt scaling (or temperature scaling) by maximum likelihood on logits."""
    yv = np.asarray(y, dtype=float).ravel()
    z = _logit(np.asarray(p, dtype=float).ravel())
    n_pos = int(yv.sum())
    if n_pos == 0 or n_pos == yv.size:
        logger.warning("calibration data has a single class; keeping scores unchanged")
        return NodeCalibrator("identity", n_pairs=int(yv.size), n_positives=n_pos)

    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = (theta[0], 0.0) if temperature_only else (theta[0], theta[1])
        m = a * z + b
        # log(1 + e^m) - y m, computed stably
        loss = np.logaddexp(0.0, m) - yv * m
        g = _sigmoid(m) - yv
        grad_a = float(np.mean(g * z))
        grad = np.array([grad_a]) if temperature_only else np.array([grad_a, float(np.mean(g))])
        return float(np.mean(loss)), grad

    x0 = np.array([1.0]) if temperature_only else np.array([1.0, 0.0])
    res = minimize(nll, x0, jac=True, method="L-BFGS-B")
    a = float(res.x[0])
    b = 0.0 if temperature_only else float(res.x[1])
    return NodeCalibrator("logistic", a=a, b=b, n_pairs=int(yv.size), n_positives=n_pos)


def fit_isotonic(y: np.ndarray, p: np.ndarray, *, max_knots: int = 512) -> NodeCalibrator:
    """Monotone non-decreasing map fitted by isotonic regression, stored as knots."""
    from sklearn.isotonic import IsotonicRegression

    yv = np.asarray(y, dtype=float).ravel()
    pv = np.asarray(p, dtype=float).ravel()
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip", increasing=True)
    iso.fit(pv, yv)
    x = np.asarray(iso.X_thresholds_, dtype=float)
    v = np.asarray(iso.y_thresholds_, dtype=float)
    if x.size > max_knots:
        # Keep the map compact in policy.json: resample on quantiles of the knots.
        idx = np.unique(np.linspace(0, x.size - 1, max_knots).round().astype(int))
        x, v = x[idx], v[idx]
    return NodeCalibrator(
        "isotonic",
        x=[float(t) for t in x],
        y=[float(t) for t in v],
        n_pairs=int(yv.size),
        n_positives=int(yv.sum()),
    )


@dataclass
class Calibrator:
    """Score -> probability maps for every code of a label space."""

    method: CalibrationMethod
    terminology: Literal["cim10", "cim11"] = "cim10"
    min_positives: int = 50
    nodes: dict[str, NodeCalibrator] = field(default_factory=dict)
    code_node: dict[str, str] = field(default_factory=dict)

    @property
    def hierarchy(self) -> Hierarchy:
        return Hierarchy(self.terminology)

    @classmethod
    def fit(
        cls,
        y_true: np.ndarray,
        scores: np.ndarray,
        labels: Sequence[str],
        *,
        method: CalibrationMethod = "isotonic",
        min_positives: int = 50,
        terminology: Literal["cim10", "cim11"] = "cim10",
    ) -> Calibrator:
        y = np.asarray(y_true, dtype=bool)
        s = np.asarray(scores, dtype=float)
        if y.shape != s.shape or y.ndim != 2 or y.shape[1] != len(labels):
            raise CalibrationError(
                f"gold {y.shape}, scores {s.shape} and {len(labels)} labels do not match"
            )
        if method not in CALIBRATION_METHODS:
            raise CalibrationError(f"unknown calibration method {method!r}; use one of {CALIBRATION_METHODS}")
        if y.shape[0] == 0:
            raise CalibrationError("no stays to fit the calibration on")
        cal = cls(method=method, terminology=terminology, min_positives=min_positives)
        if method == "none":
            cal.nodes["global"] = NodeCalibrator("identity")
        elif method in ("platt", "temperature"):
            cal.nodes["global"] = fit_logistic(y, s, temperature_only=method == "temperature")
        else:

            def fit_node(cols: np.ndarray) -> NodeCalibrator | None:
                yy = y[:, cols]
                if int(yy.sum()) < min_positives:
                    return None
                return fit_isotonic(yy, s[:, cols])

            def fallback(cols: np.ndarray) -> NodeCalibrator:
                # Too few positives even pooled: a 2-parameter map is all the data supports.
                return fit_logistic(y[:, cols], s[:, cols])

            cal.nodes, cal.code_node = fit_by_level(labels, cal.hierarchy, fit_node, fallback)
            if "global" not in cal.nodes:
                # Every code found a node below; keep a global map for codes met only later.
                all_cols = np.arange(len(labels))
                cal.nodes["global"] = fit_node(all_cols) or fallback(all_cols)
        logger.debug(
            "calibration %s fitted on %d stays x %d codes (%d nodes)",
            method, y.shape[0], y.shape[1], len(cal.nodes),
        )
        return cal

    def node_of(self, code: str) -> str:
        """Node key used for `code` (codes never seen at fit time use their nearest pooled node)."""
        key = self.code_node.get(code)
        if key is not None:
            return key
        for level in LEVELS[1:]:
            key = node_name(level, code, self.hierarchy)
            if key in self.nodes:
                return key
        return "global"

    def apply(self, scores: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        s = np.asarray(scores, dtype=float)
        if s.ndim != 2 or s.shape[1] != len(labels):
            raise CalibrationError(f"scores {s.shape} do not match {len(labels)} labels")
        if "global" not in self.nodes:
            raise CalibrationError("calibrator has no global node; was it fitted?")
        out = np.empty_like(s)
        by_node: dict[str, list[int]] = {}
        for j, code in enumerate(labels):
            by_node.setdefault(self.node_of(code), []).append(j)
        for key, cols in by_node.items():
            out[:, cols] = self.nodes.get(key, self.nodes["global"]).apply(s[:, cols])
        return np.clip(out, 0.0, 1.0)

    def levels(self) -> dict[str, int]:
        """How many codes use a node of each level."""
        counts = dict.fromkeys(LEVELS, 0)
        for key in self.code_node.values():
            counts[key.split(":")[0]] += 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "terminology": self.terminology,
            "min_positives": self.min_positives,
            "nodes": {k: v.to_dict() for k, v in sorted(self.nodes.items())},
            "code_node": dict(self.code_node),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibrator:
        try:
            return cls(
                method=d["method"],
                terminology=d.get("terminology", "cim10"),
                min_positives=int(d.get("min_positives", 20)),
                nodes={k: NodeCalibrator.from_dict(v) for k, v in d["nodes"].items()},
                code_node={str(k): str(v) for k, v in d.get("code_node", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"malformed calibration parameters: {exc}") from None


# --------------------------------------------------------------------------- diagnostics


def reliability(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data (equal-width bins) and expected calibration error.

    Pairs are all (stay, code) cells. ECE = sum over bins of (bin share) * |observed - mean
    predicted|. Empty bins are listed with count 0 and no values.
    """
    y = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(probs, dtype=float).ravel()
    if y.shape != p.shape:
        raise CalibrationError(f"gold {y.shape} and probabilities {p.shape} do not match")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    bins: list[dict[str, float | int | None]] = []
    ece = 0.0
    n = max(p.size, 1)
    for b in range(n_bins):
        m = idx == b
        c = int(m.sum())
        if c:
            conf, acc = float(p[m].mean()), float(y[m].mean())
            ece += c / n * abs(acc - conf)
            bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": c,
                         "mean_predicted": conf, "observed": acc})
        else:
            bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": 0,
                         "mean_predicted": None, "observed": None})
    return {"bins": bins, "ece": float(ece), "n_pairs": int(p.size)}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    return float(reliability(y_true, probs, n_bins)["ece"])
