"""Drift detection: distribution distances, a calibrated reference, and the window evaluator."""

from __future__ import annotations

from agent.drift.categorical import chi2_sf, chi2_test, gammaincc, js_divergence
from agent.drift.detector import DriftReport, FeatureDrift, evaluate
from agent.drift.ks import KSResult, kolmogorov_sf, ks_2samp, ks_pvalue, ks_statistic_sorted
from agent.drift.psi import psi, psi_edges, psi_sorted
from agent.drift.reference import FORMAT_VERSION, ORIGINS, Reference, build_reference, sketch
from agent.drift.wasserstein import robust_scale, wasserstein, wasserstein_sorted

__all__ = [
    "FORMAT_VERSION",
    "ORIGINS",
    "DriftReport",
    "FeatureDrift",
    "KSResult",
    "Reference",
    "build_reference",
    "chi2_sf",
    "chi2_test",
    "evaluate",
    "gammaincc",
    "js_divergence",
    "kolmogorov_sf",
    "ks_2samp",
    "ks_pvalue",
    "ks_statistic_sorted",
    "psi",
    "psi_edges",
    "psi_sorted",
    "robust_scale",
    "sketch",
    "wasserstein",
    "wasserstein_sorted",
]
