"""The server's token: a random secret made on first start, kept in a file only its owner can read."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

TOKEN_BYTES = 32


class TokenFileError(Exception):
    """The token file exists but cannot be used (unreadable, empty, or readable by others)."""


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """The token stored at ``path``, created (mode 0600) when the file does not exist. Returns (token, created)."""
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise TokenFileError(f"{path}: token file is readable by others (mode {mode:o}); run chmod 600 {path}")
        token = path.read_text().strip()
        if len(token) < 16:
            raise TokenFileError(f"{path}: token file holds no token of at least 16 characters")
        return token, False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    # O_EXCL: two servers started together must not both write (and one lose) a token.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so the time a refusal takes says nothing about how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())
