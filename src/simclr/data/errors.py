"""The errors of the data layer, and how file names appear in their messages.

Every problem a user can fix (a missing folder, an unreadable image, a bad archive) is a
``DataError`` with a one-line message; the CLI prints it and exits. File names on Linux are
bytes and need not be valid UTF-8 (Python keeps them as surrogate-escaped ``str``); messages
always show them through ``printable`` so that printing or logging them never fails.
"""

from __future__ import annotations

import os

__all__ = ["DataError", "BadImageError", "printable", "describe"]


class DataError(ValueError):
    """A data problem the user can fix (missing folder, no images, bad archive)."""


class BadImageError(DataError):
    """One file that cannot be used as an image (empty, truncated, not an image, too many pixels)."""


def printable(text: str | bytes | os.PathLike) -> str:
    """``text`` (a path or a message) as a str that encodes as UTF-8: undecodable bytes of a
    file name become ``\\xNN`` escapes instead of raising UnicodeEncodeError when printed."""
    if isinstance(text, (bytes, os.PathLike)):
        text = os.fsdecode(text)
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(e: BaseException) -> str:
    """One printable line for an exception: ``Type: first line of the message``."""
    first = str(e).splitlines()[0] if str(e) else "no detail"
    return printable(f"{type(e).__name__}: {first}")
