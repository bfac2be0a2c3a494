"""Joining an existing Ray cluster — kept free of Ray imports, because Ray reads its
authentication settings when it is first imported."""

from __future__ import annotations

import os
from pathlib import Path


def use_cluster_token(address: str | None) -> None:
    """Ray ≥ 2.59 starts clusters with token authentication, which `auto` picks up but an
    explicit HOST:PORT does not (the client retries InvalidAuthToken forever). With a token at
    hand (``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and no
    ``$RAY_AUTH_MODE`` chosen, send it."""
    if not address or address == "auto" or "RAY_AUTH_MODE" in os.environ:
        return
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or \
            (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
