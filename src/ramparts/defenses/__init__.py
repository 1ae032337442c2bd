"""Defences: extraction detection (PRADA), output hardening, and training-set sanitisation (sphere and slab with
Steinhardt et al.'s certified bound, spectral signatures, activation clustering)."""

from ramparts.defenses.certified import CertifiedBound, certify_linear_svm
from ramparts.defenses.clustering import activation_clustering
from ramparts.defenses.detection import DetectionResult
from ramparts.defenses.features import default_layer, layer_features
from ramparts.defenses.hardening import (
    HARDENINGS,
    Hardening,
    LabelOnly,
    NoisyScores,
    ReverseSigmoid,
    Rounded,
    TopK,
    harden,
)
from ramparts.defenses.prada import Alarm, ExtractionBlocked, GuardedOracle, Prada
from ramparts.defenses.sanitization import SphereSlab, centroids, fit_sphere_slab, sphere_slab
from ramparts.defenses.spectral import spectral_signatures

__all__ = [
    "HARDENINGS",
    "Alarm",
    "CertifiedBound",
    "DetectionResult",
    "ExtractionBlocked",
    "GuardedOracle",
    "Hardening",
    "LabelOnly",
    "NoisyScores",
    "Prada",
    "ReverseSigmoid",
    "Rounded",
    "SphereSlab",
    "TopK",
    "activation_clustering",
    "centroids",
    "certify_linear_svm",
    "default_layer",
    "fit_sphere_slab",
    "harden",
    "layer_features",
    "spectral_signatures",
    "sphere_slab",
]
