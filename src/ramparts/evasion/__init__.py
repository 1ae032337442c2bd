"""Evasion attacks (adversarial examples), registered by name in `ATTACKS`."""

from ramparts.evasion import apgd, cw, gradient
from ramparts.evasion.base import ATTACKS, AttackContext, EvasionAttack, Tracker, register

__all__ = ["ATTACKS", "AttackContext", "EvasionAttack", "Tracker", "apgd", "cw", "gradient", "register"]
