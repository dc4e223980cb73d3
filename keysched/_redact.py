"""Take the pool's secrets out of text that came from a server.

A proxy or a hostile endpoint may quote the key it was sent in an error message (``"API key
not valid: AIza..."``).  keysched knows every secret of its pool, so whatever it keeps from a
response (an attempt's message and Google status, and through them exceptions, tracebacks and
logs) goes through `Redactor.redact` first: each secret becomes its key's label.

Decisions where the issue was silent:

- A message cut at the wire layer's length limit can end in the first characters of a key.  A
  text that ends in at least `MIN_PREFIX` leading characters of a secret has that tail replaced
  too (``"<label>..."``); four characters are the public prefix of every key (``AIza``) and
  say nothing.
- The pattern is built on the first failure that needs it, not with the client: most clients
  never see an error message, and a pool of thousands of keys would pay for it up front.
- Only the exact secret is matched (keys are ASCII without whitespace, so JSON and the HTTP
  libraries hand it over unchanged); an encoded form (percent-encoding, base64) is not.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import overload

from keysched._config import Key

__all__ = ["MIN_PREFIX", "Redactor"]

MIN_PREFIX = 5
"""The shortest leading part of a secret that is redacted at the end of a (cut) text."""


class Redactor:
    """Replaces every secret of `keys` in a text by its key's label."""

    __slots__ = ("_labels", "_longest", "_pattern", "_prefixes")

    def __init__(self, keys: Iterable[Key]) -> None:
        self._labels = {key.secret: key.label or "" for key in keys}
        self._longest = max((len(secret) for secret in self._labels), default=0)
        self._pattern: re.Pattern[str] | None = None
        self._prefixes: dict[str, str] | None = None

    @overload
    def redact(self, text: str) -> str: ...
    @overload
    def redact(self, text: None) -> None: ...

    def redact(self, text: str | None) -> str | None:
        """`text` with every secret replaced by its label (None stays None)."""
        if not text or not self._labels:
            return text
        if self._pattern is None:
            # Longest first, so that a secret that contains another is replaced whole.
            secrets = sorted(self._labels, key=len, reverse=True)
            self._pattern = re.compile("|".join(map(re.escape, secrets)))
        labels = self._labels
        text = self._pattern.sub(lambda match: labels[match.group()], text)
        return self._redact_tail(text)

    def redact_bytes(self, data: bytes) -> bytes:
        """`data` (an answer's bytes, relayed as they came) with every secret replaced by its
        label; bytes that are not UTF-8 pass through unchanged."""
        text = data.decode("utf-8", "surrogateescape")
        redacted = self.redact(text)
        return data if redacted == text else redacted.encode("utf-8", "surrogateescape")

    def _redact_tail(self, text: str) -> str:
        """Replace a tail that is the start of a secret (a cut message) by ``label...``."""
        if self._prefixes is None:
            self._prefixes = {secret[:size]: label for secret, label in self._labels.items()
                              for size in range(MIN_PREFIX, len(secret))}
        prefixes = self._prefixes
        tail = text[-self._longest:]
        for start in range(len(tail) - MIN_PREFIX + 1):  # the longest match first
            label = prefixes.get(tail[start:])
            if label is not None:
                return f"{text[:len(text) - len(tail) + start]}{label}..."
        return text
