"""Ramparts: red-team and harden machine-learning models."""
