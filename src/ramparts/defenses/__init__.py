"""Defences against adversarial examples (adversarial training, TRADES, fast AT, distillation, randomized
smoothing, MagNet, feature squeezing, input transforms; `DefendedModel` composes them and the adaptive
attacks judge them), extraction detection (PRADA), output hardening, and training-set sanitisation
(sphere and slab with Steinhardt et al.'s certified bound, spectral signatures, activation clustering)."""

from ramparts.defenses.adaptive import (
    BPDA,
    EOT,
    AdaptiveResult,
    adaptive_model,
    adaptive_pgd,
    masking_warnings,
)
from ramparts.defenses.adversarial_training import (
    FastATMonitor,
    fast_adversarial_training,
    pgd_training,
    trades,
)
from ramparts.defenses.base import DefendedModel, Detector, Transform, threshold_at_fpr
from ramparts.defenses.certified import CertifiedBound, certify_linear_svm
from ramparts.defenses.clustering import activation_clustering
from ramparts.defenses.detection import DetectionResult
from ramparts.defenses.distillation import Distilled, TemperatureScaled, distill
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
from ramparts.defenses.magnet import (
    Autoencoder,
    DivergenceDetector,
    RandomReformer,
    ReconstructionDetector,
    Reformer,
    magnet,
    train_autoencoder,
)
from ramparts.defenses.persist import DefenseFileError, load_defended, save_defended
from ramparts.defenses.prada import Alarm, ExtractionBlocked, GuardedOracle, Prada
from ramparts.defenses.sanitization import SphereSlab, centroids, fit_sphere_slab, sphere_slab
from ramparts.defenses.smoothing import (
    ABSTAIN,
    SmoothedClassifier,
    abstention_rate,
    certified_accuracy,
    gaussian_noise_training,
)
from ramparts.defenses.spectral import spectral_signatures
from ramparts.defenses.squeezing import BitDepth, MedianFilter, SqueezeDetector, feature_squeezing
from ramparts.defenses.transforms import GaussianSmoothing, Quantize, RandomNoise

__all__ = [
    "ABSTAIN",
    "BPDA",
    "EOT",
    "HARDENINGS",
    "AdaptiveResult",
    "Alarm",
    "Autoencoder",
    "BitDepth",
    "CertifiedBound",
    "DefendedModel",
    "DefenseFileError",
    "DetectionResult",
    "Detector",
    "Distilled",
    "DivergenceDetector",
    "ExtractionBlocked",
    "FastATMonitor",
    "GaussianSmoothing",
    "GuardedOracle",
    "Hardening",
    "LabelOnly",
    "MedianFilter",
    "NoisyScores",
    "Prada",
    "Quantize",
    "RandomNoise",
    "RandomReformer",
    "ReconstructionDetector",
    "Reformer",
    "ReverseSigmoid",
    "Rounded",
    "SmoothedClassifier",
    "SphereSlab",
    "SqueezeDetector",
    "TemperatureScaled",
    "TopK",
    "Transform",
    "abstention_rate",
    "activation_clustering",
    "adaptive_model",
    "adaptive_pgd",
    "centroids",
    "certified_accuracy",
    "certify_linear_svm",
    "default_layer",
    "distill",
    "fast_adversarial_training",
    "feature_squeezing",
    "fit_sphere_slab",
    "gaussian_noise_training",
    "harden",
    "layer_features",
    "load_defended",
    "magnet",
    "masking_warnings",
    "pgd_training",
    "save_defended",
    "spectral_signatures",
    "sphere_slab",
    "threshold_at_fpr",
    "trades",
    "train_autoencoder",
]
