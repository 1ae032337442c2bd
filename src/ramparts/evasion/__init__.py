"""Evasion attacks (adversarial examples), registered by name in `ATTACKS`."""

from ramparts.evasion import apgd, cw, gradient
from ramparts.evasion.base import ATTACKS, AttackContext, AttackProgress, EvasionAttack, Tracker, register

__all__ = [
    "ATTACKS",
    "AttackContext",
    "AttackProgress",
    "EvasionAttack",
    "Tracker",
    "apgd",
    "cw",
    "gradient",
    "register",
]
