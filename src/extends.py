"""``extends: BASE`` in a config file: ``--config FILE`` becomes ``--config BASE --config FILE``.

A file then states only what differs from its base (the quickstart from the
ListOps task). jsonargparse's own nested ``config:`` key cannot merge
``class_path`` sections, hence this small step before parsing.
"""

from __future__ import annotations

from pathlib import Path

import yaml


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
        raise SystemExit(f"error: configs extend each other in a cycle: {' -> '.join(map(str, seen))}")
    content = yaml.safe_load(path.read_text()) or {}
    base = content.get("extends") if isinstance(content, dict) else None
    if not base:
        return [path]
    return [*_config_chain(path.parent / base, (*seen, path.resolve())), path]
