"""Recommender systems and their poisoning: ratings data, biased matrix factorisation, shilling (fake-user)
attacks, their effect (prediction shift, hit ratio) and their detection (profile statistics, PCA)."""

from ramparts.recsys.attacks import (
    SHILLING,
    AttackedRatings,
    AverageAttack,
    BandwagonAttack,
    RandomAttack,
    SegmentAttack,
    ShillingAttack,
)
from ramparts.recsys.data import Ratings, load_movielens, synthetic_ratings, train_test_split
from ramparts.recsys.detection import (
    FEATURES,
    PrecisionRecall,
    ProfileClassifier,
    detection_metrics,
    pca_detect,
    profile_features,
)
from ramparts.recsys.metrics import ShiftReport, hit_ratio, prediction_shift
from ramparts.recsys.model import MatrixFactorization, fit, rmse

__all__ = [
    "FEATURES",
    "SHILLING",
    "AttackedRatings",
    "AverageAttack",
    "BandwagonAttack",
    "MatrixFactorization",
    "PrecisionRecall",
    "ProfileClassifier",
    "RandomAttack",
    "Ratings",
    "SegmentAttack",
    "ShiftReport",
    "ShillingAttack",
    "detection_metrics",
    "fit",
    "hit_ratio",
    "load_movielens",
    "pca_detect",
    "prediction_shift",
    "profile_features",
    "rmse",
    "synthetic_ratings",
    "train_test_split",
]
