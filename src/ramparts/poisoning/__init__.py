"""Data poisoning: label flipping, backdoors (BadNets) registered in `POISONING` and measured by `evaluate`;
Poison Frogs feature collision (`frogs`, measured by `frogs_evaluation`)."""

from ramparts.poisoning import backdoor, evaluate, flipping
from ramparts.poisoning.backdoor import BadNets
from ramparts.poisoning.base import POISONING, PoisonedSet, PoisoningAttack, check_fraction
from ramparts.poisoning.evaluate import (
    Pipeline,
    evaluate_poisoning,
    fraction_sweep,
    linear_pipeline,
    zoo_pipeline,
)
from ramparts.poisoning.flipping import LossFlip, PairFlip, RandomFlip
from ramparts.poisoning.frogs import FrogsCraft, PoisonFrogs, penultimate
from ramparts.poisoning.frogs_evaluation import evaluate_end_to_end, evaluate_transfer

__all__ = [
    "POISONING",
    "BadNets",
    "FrogsCraft",
    "LossFlip",
    "PairFlip",
    "Pipeline",
    "PoisonFrogs",
    "PoisonedSet",
    "PoisoningAttack",
    "RandomFlip",
    "backdoor",
    "check_fraction",
    "evaluate",
    "evaluate_end_to_end",
    "evaluate_poisoning",
    "evaluate_transfer",
    "flipping",
    "fraction_sweep",
    "linear_pipeline",
    "penultimate",
    "zoo_pipeline",
]
