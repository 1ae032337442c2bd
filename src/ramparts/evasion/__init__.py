"""Evasion attacks (adversarial examples), registered by name in `ATTACKS`."""

from ramparts.evasion import apgd, boundary, cw, gradient, hopskipjump, onepixel, score, square
from ramparts.evasion.base import ATTACKS, AttackContext, AttackProgress, EvasionAttack, Tracker, register

__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackProgress",
    "EvasionAttack",
    "Tracker",
    "apgd",
    "boundary",
    "cw",
    "gradient",
    "hopskipjump",
    "onepixel",
    "register",
    "score",
    "square",
]
