"""API keys: random tokens shown once, stored as their sha256.

Tokens are `rk_` + `secrets.token_urlsafe(32)` (256 random bits). A fast hash is right for them: they are not
passwords a person chose, so there is nothing to brute-force from the hash; a slow KDF would only slow every
request down. Lookups compare the hash through the database index, never the token itself.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from ramparts.errors import invalid

TOKEN_PREFIX = "rk_"
TOKEN_PATTERN = re.compile(r"rk_[A-Za-z0-9_-]{43}")
STATES: tuple[str, ...] = ("active", "blocked", "revoked")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def new_token() -> str:
    """A fresh key token: `rk_` and 43 url-safe characters."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex sha256 the database keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise invalid(
            "name",
            name,
            "1-64 characters: letters, digits and _ . @ - (starting with a letter or digit)",
            "pick a name such as team-a or alice@example.org",
        )
    return name


@dataclass(frozen=True)
class KeyRecord:
    """One key as the database holds it; None in `output`/`rate_per_s`/`burst`/`budget` = the server's default."""

    id: int
    name: str
    output: str | None
    rate_per_s: float | None
    burst: int | None
    budget: int | None
    used: int
    state: str
    created_at: float
    blocked_at: float | None
    reason: str | None
    prada_epoch: int


__all__ = [
    "STATES",
    "TOKEN_PATTERN",
    "TOKEN_PREFIX",
    "KeyRecord",
    "check_name",
    "hash_token",
    "new_token",
]
