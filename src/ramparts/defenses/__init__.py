"""Defences: extraction detection (PRADA) and output hardening; more families land here."""

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

__all__ = [
    "HARDENINGS",
    "Alarm",
    "ExtractionBlocked",
    "GuardedOracle",
    "Hardening",
    "LabelOnly",
    "NoisyScores",
    "Prada",
    "ReverseSigmoid",
    "Rounded",
    "TopK",
    "harden",
]
