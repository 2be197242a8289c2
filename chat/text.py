"""Text from outside (the upstream, the browser) made safe to log, store and show.

Two rules, each applied by one function wherever such text enters:

- ``redact``: no run of 8 or more characters of a secret (the API key, the
  values of ``CHAT_UPSTREAM_HEADERS``) survives in text that came from the
  upstream: an error body, an in-stream error, a header, a chunk's metadata.
  Pieces count, not only the whole key, so that text cut anywhere (by the
  upstream, or by us before storing it) never leaks most of a key; it is
  applied before anything is truncated.
- ``storable``: NUL (U+0000), which PostgreSQL cannot store in text or JSON,
  becomes U+FFFD before the text is shown or saved, so what a user saw and
  what is stored are the same, and the same length (``index`` counts on it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
#: The shortest piece of a secret that is redacted where it appears.
PIECE = 8


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every run of ``PIECE`` or more characters of any secret replaced."""
    pieces: set[str] = set()
    whole: list[str] = []
    for secret in secrets:
        if len(secret) >= PIECE:
            pieces.update(secret[i : i + PIECE] for i in range(len(secret) - PIECE + 1))
        elif secret:
            whole.append(secret)  # too short to cut: only where it appears whole
    for secret in whole:
        text = text.replace(secret, REDACTED)
    if not pieces or len(text) < PIECE:
        return text
    spans: list[list[int]] = []
    for start in range(len(text) - PIECE + 1):
        if text[start : start + PIECE] in pieces:
            if spans and start <= spans[-1][1]:
                spans[-1][1] = start + PIECE
            else:
                spans.append([start, start + PIECE])
    if not spans:
        return text
    kept = []
    end = 0
    for start, stop in spans:
        kept.append(text[end:start])
        kept.append(REDACTED)
        end = stop
    kept.append(text[end:])
    return "".join(kept)


def redact_all(value: Any, secrets: Iterable[str]) -> Any:
    """``redact`` every string in a JSON-like value (a timeline event, tool calls)."""
    secrets = tuple(secrets)
    if isinstance(value, str):
        return storable(redact(value, secrets))
    if isinstance(value, dict):
        return {key: redact_all(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_all(item, secrets) for item in value]
    return value


def storable(text: str) -> str:
    """``text`` as every supported database can store it: NUL becomes U+FFFD."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text
