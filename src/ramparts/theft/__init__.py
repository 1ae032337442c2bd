"""Model theft (extraction): substitute training, Knockoff, equation solving; registered in `THEFTS`."""

from ramparts.theft import equations, jacobian, knockoff, transfer
from ramparts.theft.base import THEFTS, TheftAttack, TheftContext, register

__all__ = [
    "THEFTS",
    "TheftAttack",
    "TheftContext",
    "equations",
    "jacobian",
    "knockoff",
    "register",
    "transfer",
]
