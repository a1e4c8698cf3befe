"""Errors for text that is not UTF-8: the file, the line, the byte offset, and what to do.

Python's ``UnicodeDecodeError`` names neither the file nor the line (its position counts
from the start of an internal read buffer). The readers of ``src/data`` wrap their
decoding in ``naming_decode_errors`` (text files) or call ``check_utf8`` (byte-level
tasks, whose bytes must still be the UTF-8 of the original text: a file re-saved as
Latin-1 would silently give other token ids).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SEGMENT = 1 << 20
"""Longest piece read at once while looking for the bad byte (a binary file may have no newline)."""

ADVICE = ("the file must be UTF-8 text: get an intact copy, or convert it "
          "(e.g. iconv -f latin1 -t utf-8 FILE > FILE.utf8)")


class NotUTF8Error(ValueError):
    """A data file that does not decode; the message names the file, line and byte offset."""


def message(path: Path | str, line: int, offset: int, bad: bytes, advice: str = ADVICE) -> str:
    """``<file>:<line>: byte 0xe9 at offset 1234 is not valid UTF-8; <advice>``."""
    return f"{path}:{line}: byte 0x{bad[:4].hex()} at offset {offset} is not valid UTF-8; {advice}"


def locate_undecodable(path: Path | str, encoding: str = "utf-8") -> tuple[int, int, bytes] | None:
    """(line, byte offset, bad bytes) of the first sequence of ``path`` that does not decode."""
    offset, line, carry = 0, 1, b""
    with open(path, "rb") as handle:
        while segment := handle.readline(SEGMENT):
            data = carry + segment
            carry = b""
            try:
                data.decode(encoding)
            except UnicodeDecodeError as error:
                if error.reason != "unexpected end of data" or data.endswith(b"\n"):
                    return line, offset + error.start, data[error.start:error.end]
                carry, data = data[error.start:], data[:error.start]  # a character cut by SEGMENT
            offset += len(data)
            line += data.endswith(b"\n")
    return (line, offset, carry) if carry else None


@contextmanager
def naming_decode_errors(path: Path | str, encoding: str = "utf-8", advice: str = ADVICE) -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` while reading ``path`` into a ``NotUTF8Error`` naming the line."""
    try:
        yield
    except UnicodeDecodeError:
        where = locate_undecodable(path, encoding)
        if where is None:
            raise  # not this file's bytes
        raise NotUTF8Error(message(path, *where, advice=advice)) from None


def check_utf8(data: bytes, path: Path | str, line: int | None = None, start: int = 0,
               advice: str = ADVICE) -> None:
    """Raise ``NotUTF8Error`` unless ``data`` (a line starting at byte ``start``, or a file) is UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        number = line if line is not None else data.count(b"\n", 0, error.start) + 1
        bad = data[error.start:error.end]
        raise NotUTF8Error(message(path, number, start + error.start, bad, advice)) from None
