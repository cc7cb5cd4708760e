"""Reading the files of a policy directory without ever trusting what is there.

A policy set is all or nothing, so a file that is present but cannot be read (a broken symbolic
link, a directory or a FIFO with a policy file's name, no permission, too large) refuses the
set with the file's name; silently leaving it out could drop a deny rule.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from authz.policy.model import Problem, Source

MAX_POLICY_FILE_BYTES = 4 << 20  # far beyond any real policy file; keeps a mistake cheap


def entries(directory: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Every entry of `directory` (not below it) whose name ends with one of `suffixes`, whatever
    kind of file it is, sorted by name. Readers refuse the entries that are not regular files."""
    return sorted(p for p in directory.iterdir() if p.suffix in suffixes)


def read_file(path: Path, name: str, max_bytes: int, problems: list[Problem]) -> bytes | None:
    """The bytes of a regular file (symbolic links followed), or None with a problem named
    `name` (the path as the set's messages show it)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        kind = "a broken symbolic link" if path.is_symlink() else "gone"
        problems.append(
            Problem(
                Source(name, 0),
                f"cannot read: the file is {kind}",
                hint="restore the file it points to, or remove the link",
            )
        )
        return None
    except OSError as exc:
        problems.append(Problem(Source(name, 0), f"cannot read: {exc.strerror or exc}"))
        return None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        problems.append(
            Problem(
                Source(name, 0),
                f"cannot read: it is {kind}",
                hint="policy and data files are regular files; rename or remove this entry",
            )
        )
        return None
    if info.st_size > max_bytes:
        problems.append(_too_large(name, max_bytes))
        return None
    try:
        # O_NONBLOCK: if the entry was swapped for a FIFO since the stat, do not hang on it.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as exc:
        problems.append(Problem(Source(name, 0), f"cannot read: {exc.strerror or exc}"))
        return None
    if len(data) > max_bytes:
        problems.append(_too_large(name, max_bytes))
        return None
    return data


def _too_large(name: str, max_bytes: int) -> Problem:
    return Problem(
        Source(name, 0),
        f"file is larger than {max_bytes // 1024} KiB",
        hint="split it, or keep large data out of the policy directory",
    )


def decode_utf8(data: bytes, name: str, problems: list[Problem]) -> str | None:
    """The text of a file, or None with a problem at the line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        problems.append(
            Problem(
                Source(name, line),
                f"not valid UTF-8 (byte {exc.start}: {exc.reason})",
                hint="save the file as UTF-8",
            )
        )
        return None


def text_problem(text: str) -> tuple[str, str] | None:
    """Why a string cannot be used, with a hint; None if it is fine. CEL, protobuf and JSON
    take only valid Unicode, and YAML's "\\uD800" escape makes a lone surrogate that none of
    them accepts (found later, it would fail a reload or a response instead of the load)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return (
            "the text holds a lone UTF-16 surrogate (an escape such as \\uD800)",
            "write the character itself, or a \\U0001F600-style escape past U+FFFF",
        )
    return None
