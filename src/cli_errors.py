"""Readable command-line errors: a mistyped key or class names the valid choices; a value
out of range is refused before any data is prepared or model built.

jsonargparse reports ``--data.init_args.max_lenght 5`` as a nest of union
alternatives ending in ``NestedArg(key='max_lenght', ...)``. ``explain`` puts a
one-line answer in front of that message: which key or class is unknown, where,
the closest valid names (``difflib``) and the full list.

``ConfigError`` is the project's own parse error (a bad config file, a value out of
range, a bad ``$YOSO_BACKEND``): ``fail`` prints it as one ``error: ...`` line on
stderr and exits with 2, the code of jsonargparse's parse errors, with no traceback.
``check_values`` holds the numeric ranges (``VALUE_RULES``); the constructors keep
their own checks as a second line for code that builds them without ``train.py``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
_UNKNOWN_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_GOT_CLASS = re.compile(r"Got value: Namespace\(class_path='([^']+)'")
_NO_ATTRIBUTE = re.compile(r"module '([^']+)' has no attribute '([^']+)'")


def import_class(class_path: str) -> type:
    """The class a config's ``class_path`` names (``package.module.Class``)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def init_arguments(class_path: str) -> list[str]:
    """Names a config may give under ``init_args`` of ``class_path`` (following ``**kwargs`` to parents)."""
    names: list[str] = []
    klass = import_class(class_path)
    fixed = set(getattr(klass, "fixed_arguments", ()))  # set by the class itself, not by a config
    for base in klass.__mro__:
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        names += [p for p, v in parameters.items()
                  if p != "self" and v.kind not in variadic and p not in names and p not in fixed]
        if not any(v.kind is v.VAR_KEYWORD for v in parameters.values()):
            break
    return names


def module_classes(module_name: str) -> list[str]:
    """Public classes defined in ``module_name``."""
    module = importlib.import_module(module_name)
    return sorted(
        name for name, value in vars(module).items()
        if inspect.isclass(value) and value.__module__ == module_name and not name.startswith("_")
    )


def attention_classes() -> list[str]:
    """Attention classes of ``src.models.components``: constructors start with ``(num_heads, head_dim)``."""
    import pkgutil

    import src.models.components as package

    found = []
    for info in pkgutil.iter_modules(package.__path__):
        name = f"{package.__name__}.{info.name}"
        for klass in module_classes(name):
            head = init_arguments(f"{name}.{klass}")[:2]
            if klass.endswith("Attention") and head == ["num_heads", "head_dim"]:
                found.append(f"{name}.{klass}")
    return sorted(found)


def _suggest(wrong: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(wrong, choices, n=1, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
    return f"{hint} Valid choices: {', '.join(choices)}"


def _config_path(lines: list[str]) -> str:
    """``model.init_args.encoder.init_args.attention`` from the nested ``Parser key`` lines."""
    keys = [m.group(1) for line in lines for m in _PARSER_KEY.finditer(line)]
    return ".init_args.".join(keys)


def explain(message: str) -> str:
    """``message`` with a one-line explanation in front when it is an unknown key or class."""
    lines = message.splitlines()
    for index, line in enumerate(lines):
        option = _UNKNOWN_OPTION.search(line)
        missing = _NO_ATTRIBUTE.search(line)
        if not option and not missing:
            continue
        before = lines[: index + 1]
        where = _config_path(before)
        try:
            if option:
                got = _GOT_CLASS.search(line)
                if got:
                    class_path = got.group(1)
                    where += ".init_args"
                else:
                    classes = [m.group(1) for text in before for m in _CLASS_PATH.finditer(text)]
                    if not classes:
                        break
                    class_path = classes[-1]
                    where += ".init_args"
                key = option.group(1)
                hint = _suggest(key, init_arguments(class_path))
                summary = f"unknown key '{key}' in {where} ({class_path}){hint}"
            else:
                module, name = missing.group(1), missing.group(2)
                choices = module_classes(module)
                if where.endswith("attention"):
                    choices = attention_classes()
                    name = f"{module}.{name}"
                hint = _suggest(name, choices)
                wrong = missing.group(2)
                summary = f"unknown class '{module}.{wrong}' for {where}: {module} has no '{wrong}'{hint}"
        except (ImportError, AttributeError, ValueError, TypeError):
            break
        return f"{summary}\n\n(full parser message)\n{message}"
    return message


PARSE_ERROR_EXIT_CODE = 2  # what jsonargparse exits with on a parse error


class ConfigError(SystemExit):
    """A bad config file or value: exits like a parse error, its message already printed."""

    def __init__(self, message: str) -> None:
        super().__init__(PARSE_ERROR_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit 2 (a usage error, not a crash)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise ConfigError(message)


@dataclass(frozen=True)
class ValueRule:
    """A numeric range a config key must satisfy, and what to tell the user when it does not."""

    key: str
    valid: Callable[[float], bool]
    requirement: str  # completes "must be ..."
    example: str  # a valid value to suggest


VALUE_RULES: tuple[ValueRule, ...] = (
    ValueRule("data.init_args.batch_size", lambda v: v >= 1,
              "an int >= 1 (examples per batch and process)", "32"),
    ValueRule("model.init_args.learning_rate", lambda v: v > 0, "> 0 (the peak of the schedule)", "1e-4"),
    ValueRule("model.init_args.weight_decay", lambda v: v >= 0, ">= 0 (0 turns it off)", "0.01"),
    ValueRule("trainer.max_steps", lambda v: v >= 1 or v == -1,
              ">= 1, or -1 for no step limit (max_epochs then ends the run)", "5000"),
    ValueRule("data.init_args.max_length", lambda v: v >= 1, "an int >= 1 (tokens per sequence)", "2000"),
)

ENCODER_DIM_KEY = "model.init_args.encoder.init_args.dim"
TRAINING_BYTES_PER_FLOAT = 16
"""float32 weight, gradient and Adam's two moments: what one trained parameter costs."""


def _number(config: Any, key: str) -> float | None:
    """The value at dotted ``key`` when it is a number (absent, None or other types: None)."""
    try:
        value = config.get(key)
    except (AttributeError, KeyError, TypeError):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def check_values(config: Any) -> None:
    """Refuse, at parse time, a value no run can train with (``VALUE_RULES``, ``max_length``'s memory)."""
    for rule in VALUE_RULES:
        value = _number(config, rule.key)
        if value is not None and not rule.valid(value):
            fail(f"{rule.key} = {value!r} is out of range: it must be {rule.requirement}. "
                 f"Fix it in the config or on the command line, e.g. --{rule.key} {rule.example}")
    check_max_length_fits(config)


def physical_memory() -> int | None:
    """Bytes of RAM in this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_max_length_fits(config: Any) -> None:
    """Refuse a ``max_length`` whose position table cannot even be trained in this machine's RAM.

    The learned table is ``max_length x dim`` floats, allocated whatever the data's real
    lengths (batches pad only to their longest). Training it costs 16 bytes a float
    (weight, gradient, two Adam moments); when that alone exceeds physical RAM no run
    can work, and failing here beats an out-of-memory kill after preparing the data.
    """
    length, dim = _number(config, "data.init_args.max_length"), _number(config, ENCODER_DIM_KEY)
    memory = physical_memory()
    if length is None or dim is None or memory is None or dim < 1:
        return
    length, dim = int(length), int(dim)
    needed = length * dim * TRAINING_BYTES_PER_FLOAT
    if needed <= memory:
        return
    longest = memory // (dim * TRAINING_BYTES_PER_FLOAT)
    fail(f"data.init_args.max_length = {length} does not fit this machine: its position table "
         f"({length} x dim {dim}) needs {_size(needed)} to train (weights, gradient and two Adam "
         f"moments, 16 bytes a float), more than the {_size(memory)} of RAM. Set it to the longest "
         f"sequence the task needs (at most {longest} here), e.g. --data.init_args.max_length 2000")


def _size(num_bytes: float) -> str:
    """``1.5 TiB``-style size for messages."""
    units = ("B", "KiB", "MiB", "GiB")
    for unit in units:
        if num_bytes < 1024:
            return f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return f"{num_bytes:.1f} TiB"
