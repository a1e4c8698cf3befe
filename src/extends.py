"""``extends: BASE`` in a config file: ``--config FILE`` becomes ``--config BASE --config FILE``.

A file then states only what differs from its base (the quickstart from the
ListOps task). jsonargparse's own nested ``config:`` key cannot merge
``class_path`` sections, hence this small step before parsing.

Every config file is read here first, so this is where a bad file is named:
binary or non-UTF-8 bytes (offset and line), YAML syntax (line and column), an
empty file or one that is not a mapping, each a one-line ``ConfigError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.reader import ReaderError

from src.cli_errors import fail


def expand_extends(argv: list[str]) -> list[str]:
    """Put ``--config BASE`` before every ``--config FILE`` whose YAML says ``extends: BASE``."""
    expanded: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            expanded += _with_bases(argv[i + 1])
            i += 2
            continue
        expanded += _with_bases(arg.split("=", 1)[1]) if arg.startswith("--config=") else [arg]
        i += 1
    return expanded


def _with_bases(config: str) -> list[str]:
    return [part for path in _config_chain(Path(config)) for part in ("--config", str(path))]


def _config_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    if not path.is_file():
        return [path]  # jsonargparse reports the missing file
    if path.resolve() in seen:
        fail(f"configs extend each other in a cycle: {' -> '.join(map(str, (*seen, path.resolve())))}")
    base = read_config(path).get("extends")
    if not base:
        return [path]
    return [*_config_chain(path.parent / base, (*seen, path.resolve())), path]


def read_config(path: Path) -> dict[str, Any]:
    """The mapping a config file holds; a file no parser could read is a one-line error naming it."""
    content = _yaml(path, _text(path))
    if content is None:
        fail(f"config file {path} is empty (no keys): give it at least one section "
             "(trainer:, model:, data:, ...) or leave this --config out")
    if not isinstance(content, dict):
        fail(f"config file {path} holds a YAML {type(content).__name__}, not a mapping of sections "
             "(trainer:, model:, data:, ...); write it as 'section:' lines with indented keys")
    return content


def _text(path: Path) -> str:
    """The file as UTF-8 text; binary or other encodings are named by byte offset and line."""
    raw = path.read_bytes()
    nul = raw.find(b"\0")
    if nul >= 0:
        fail(f"config file {path} is binary, not YAML text: NUL byte at offset {nul} "
             f"(line {_line(raw, nul)}); pass a .yaml config file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start]
        fail(f"config file {path} is not UTF-8 text: byte 0x{byte:02x} at offset {error.start} "
             f"(line {_line(raw, error.start)}); save it as UTF-8")


def _yaml(path: Path, text: str) -> Any:
    """``yaml.safe_load`` of ``text``; a syntax error names the file, line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = f" ({error.context})" if error.context else ""
        fail(f"config file {path}{where}: YAML syntax error: {error.problem}{context}; fix the YAML there")
    except ReaderError as error:  # a control character YAML does not allow
        line = text.count("\n", 0, error.position) + 1
        fail(f"config file {path} is not YAML text: character {chr(error.character)!r} is not allowed "
             f"(line {line}); remove it, or pass the right file")
    except yaml.YAMLError as error:
        fail(f"config file {path} is not valid YAML: {' '.join(str(error).split())}")


def _line(raw: bytes, offset: int) -> int:
    """1-based line of byte ``offset``."""
    return raw.count(b"\n", 0, offset) + 1
