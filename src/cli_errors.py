"""Readable command-line errors: a mistyped key or class names the valid choices.

jsonargparse reports ``--data.init_args.max_lenght 5`` as a nest of union
alternatives ending in ``NestedArg(key='max_lenght', ...)``. ``explain`` puts a
one-line answer in front of that message: which key or class is unknown, where,
the closest valid names (``difflib``) and the full list.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re

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
