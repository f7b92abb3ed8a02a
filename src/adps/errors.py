"""The one exception type for problems a user can fix (bad data, bad config, missing weights).

Library bugs stay ordinary Python exceptions; everything the user caused is an ``AdpsError``
whose message names the file (or setting) and the problem, so the CLI can print it without a
traceback.
"""

from __future__ import annotations

from pathlib import Path


class AdpsError(Exception):
    """A user-fixable problem; the message says what and where."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
