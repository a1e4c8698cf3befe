"""``init_from`` read like ``from_pretrained``: the pre-trained source defines the encoder.

A source is this project's Lightning checkpoint (``.ckpt``: the encoder's config in its
``hyper_parameters``, the tokenizer in ``tokenizer_json``) or a ``transformers`` YOSO folder
(``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``, as ``save_pretrained``
writes it; a ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` beside them). ``train.py``
calls ``apply_source`` once the config is parsed, before anything is built, and the config
(hence the run's saved ``config.yaml``) then holds the source's encoder.

The rule, for each encoder argument (the attention's too):

* **Architecture**: the encoder's class and every argument that decides what its weights are
  or compute (``dim``, ``depth``, ``num_heads``, ``head_dim``, ``ffn_dim``, ``num_segments``,
  ``norm_first``, ``embedding_norm``, ``position_offset``, ``layer_norm_eps``, ``activation``;
  YOSO's ``hash_code_len`` (tau) and ``conv_window``; every argument of another attention) and
  the length (``data.max_length``, which ``train.py`` links into the encoder) come from the
  source. A config file or flag that *states* one with another value is an error naming both
  values and where each came from. The vocabulary comes from the source's tokenizer
  (``tokenizer_from``), so it is not set in a config at all.
* **Settings**: the encoder's ``dropout`` and YOSO's ``num_hashes``, ``expectation``, ``hashing``,
  ``lsh_backward`` (softmax's ``dropout``): a stated value is used, else the source's.
* **This machine's**: ``backend`` and ``backward_precision`` never come from the source.
* **The attention class** is the config's (every task config names one; ``configs/attention/``
  overlays change it). The same class as the source's follows the rules above; another class
  is used with the config's own arguments (loading the weights then warns, naming both).

*Stated* means set by a ``--config`` file (``extends`` bases included) or by a flag. A flag is
seen through its value, so one equal to the class's own default, given where no config file
sets that key, cannot be told from an unset key and yields the source's value.

``data.max_length``: unset (the GLUE configs leave it out) it becomes the source's length, or
``extend_positions_to`` when that grows the table; stated it must equal that. A checkpoint that
records no encoder config (a model built in code) leaves the config's encoder as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_info

from src.checkpoints import read_state_dict
from src.cli_errors import fail, import_class
from src.extends import read_config

ENCODER = "model.init_args.encoder"
SETTINGS: dict[str, tuple[str, ...]] = {  # class name -> arguments a config may change (see above)
    "TransformerEncoder": ("dropout",),
    "YOSOAttention": ("num_hashes", "expectation", "hashing", "lsh_backward"),
    "SoftmaxAttention": ("dropout",),
}
MACHINE = ("backend", "backward_precision")
LINKED = ("vocab_size", "max_length", "padding_id")  # the data sets these (src.cli DATA_LINKS)
COMMAND_LINE = "the command line"
_NO_DEFAULT = inspect.Parameter.empty


@dataclass(frozen=True)
class Source:
    """A pre-trained model ``init_from`` names: where it is and the encoder config it was built with."""

    path: Path
    encoder: dict[str, Any] | None  # {"class_path", "init_args"}; None: a checkpoint records none
    transformers: bool

    @property
    def encoder_args(self) -> dict[str, Any]:
        return dict((self.encoder or {}).get("init_args") or {})

    @property
    def attention(self) -> tuple[str | None, dict[str, Any]]:
        """The attention's class path and arguments (a bare class path has none)."""
        attention = self.encoder_args.get("attention")
        if isinstance(attention, str):
            return attention, {}
        if isinstance(attention, Mapping):
            return attention.get("class_path"), dict(attention.get("init_args") or {})
        return None, {}

    def where(self, key: str, attention: bool = False) -> str:
        """Where the source states ``key`` (a file and its key), for messages."""
        if self.transformers:
            from src.interop.hf_yoso import HF_CONFIG_KEYS

            return f"{self.path / 'config.json'}: {HF_CONFIG_KEYS.get(key, key)}"
        section = "encoder.init_args." + ("attention.init_args." if attention else "")
        recorded = key in (self.attention[1] if attention else self.encoder_args)
        return f"{self.path}: hyper_parameters {section}{key}" + ("" if recorded else ", the class default")


def is_transformers_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder with ``config.json`` (a ``save_pretrained`` folder)."""
    return (Path(path) / "config.json").is_file()


def check_source_exists(path: str | Path) -> None:
    """A ``FileNotFoundError`` saying what ``init_from`` must be, unless ``path`` is one of the two."""
    path = Path(path)
    if path.is_dir() and not is_transformers_folder(path):
        raise FileNotFoundError(f"init_from {path} is a folder without config.json: not a transformers "
                                "model folder (save_pretrained writes config.json and model.safetensors)")
    if not path.exists():
        raise FileNotFoundError(f"init_from {path} does not exist: give a checkpoint of this project (.ckpt) "
                                "or a transformers YOSO folder (config.json + weights)")


def read_source(init_from: str | Path) -> Source:
    """The source's encoder config: a transformers folder's ``config.json``, or a checkpoint's
    ``hyper_parameters`` (loaded with ``weights_only=True``: no code runs)."""
    path = Path(init_from)
    check_source_exists(path)
    if path.is_dir():
        from src.interop.hf_yoso import encoder_config, load_hf_config

        return Source(path, encoder_config(load_hf_config(path)), transformers=True)
    checkpoint, _ = read_state_dict(path)
    encoder = (checkpoint.get("hyper_parameters") or {}).get("encoder")
    return Source(path, _plain(encoder) if isinstance(encoder, Mapping) else None, transformers=False)


def _plain(value: Any) -> Any:
    """Nested mappings (a checkpoint may hold Namespaces or AttributeDicts) as plain dicts."""
    if isinstance(value, Namespace):
        value = vars(value)
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


# -- what the config files state -----------------------------------------------------------------
def _args(node: Any) -> dict[str, Any]:
    """A config section's arguments: its ``init_args`` and any key given beside ``class_path``."""
    if not isinstance(node, Mapping):
        return {}
    args = {k: v for k, v in node.items() if k not in ("class_path", "init_args", "dict_kwargs")}
    args.update(node.get("init_args") or {})
    return args


def _config_files(config: Namespace) -> list[tuple[Path, str]]:
    """``(path to read, path to show)`` of every ``--config`` file, in the order they were merged."""
    files = config.get("config") or []
    return [(Path(str(getattr(f, "absolute", f))), str(getattr(f, "relative", f))) for f in files]


def stated_in_files(config: Namespace) -> dict[str, dict[str, tuple[Any, str]]]:
    """``section -> key -> (value, file)``: the last config file's value of each encoder, attention
    and data argument (``section``: ``encoder``, ``attention``, ``data``)."""
    stated: dict[str, dict[str, tuple[Any, str]]] = {"encoder": {}, "attention": {}, "data": {}}
    for path, shown in _config_files(config):
        if not path.is_file():
            continue
        content = read_config(path)
        encoder = _args(content.get("model")).get("encoder")
        encoder_args = _args(encoder)
        attention_args = _args(encoder_args.pop("attention", None))
        for section, args in (("encoder", encoder_args), ("attention", attention_args),
                              ("data", _args(content.get("data")))):
            stated[section].update({key: (value, shown) for key, value in args.items()})
    return stated


def _same(a: Any, b: Any) -> bool:
    """Equal values, numbers compared as numbers (a YAML ``1e-12`` may reach us as a string)."""
    if a == b:
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def _stated(parsed: Any, key: str, files: dict[str, tuple[Any, str]], default: Any) -> str | None:
    """Where ``key``'s parsed value was stated (a config file or the command line), or None: unset."""
    if key in files:
        value, shown = files[key]
        return shown if _same(parsed, value) else COMMAND_LINE
    return None if default is not _NO_DEFAULT and _same(parsed, default) else COMMAND_LINE


def class_defaults(class_path: str) -> dict[str, Any]:
    """``__init__`` defaults of ``class_path`` (through ``**kwargs`` to the bases); ``_NO_DEFAULT``: none."""
    defaults: dict[str, Any] = {}
    for base in import_class(class_path).__mro__:
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        for name, parameter in parameters.items():
            if name != "self" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                defaults.setdefault(name, parameter.default)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return defaults


def _short(class_path: str | None) -> str:
    return (class_path or "").rsplit(".", 1)[-1]


# -- the source into the config ------------------------------------------------------------------
def apply_source(config: Namespace) -> Source | None:
    """Put ``init_from``'s encoder (and length) into the parsed ``config``, by the module's rule.

    Every conflict is reported at once, as one ``error:`` line (``src.cli_errors.fail``).
    Returns the source, or None without ``init_from``.
    """
    init_from = config.get("model.init_args.init_from")
    if not init_from:
        return None
    try:
        source = read_source(init_from)
    except (FileNotFoundError, ValueError) as error:
        fail(f"model.init_args.init_from: {error}")
    encoder = config.get(ENCODER)
    if source.encoder is None or not isinstance(encoder, Namespace):
        rank_zero_info(f"init_from {source.path} records no encoder config: the config's encoder is built "
                       "(its weights must fit it)")
        return source
    stated = stated_in_files(config)
    problems = _take_encoder(encoder, source, stated)
    problems += _take_length(config, source, stated["data"])
    if problems:
        fail("with init_from, the encoder is the pre-trained one (src/pretrained.py); the config states "
             "another: " + "; ".join(problems) + ". Leave these keys out (they follow init_from), or start "
             "from a model that has them")
    args = encoder.init_args
    rank_zero_info(f"init_from {source.path}: encoder {_short(encoder.class_path)} dim {args.get('dim')}, "
                   f"depth {args.get('depth')}, {args.get('num_heads')} heads of {args.get('head_dim')}, "
                   f"{_short(args.get('attention', Namespace()).get('class_path'))}")
    return source


def _conflict(key: str, ours: Any, where: str, theirs: Any, source_where: str) -> str:
    return f"{key} = {ours!r} ({where}) but init_from has {theirs!r} ({source_where})"


def _take_arguments(args: Namespace, key_prefix: str, class_path: str, theirs: dict[str, Any],
                    files: dict[str, tuple[Any, str]], source: Source, attention: bool) -> list[str]:
    """Fill ``args`` from ``theirs`` by the rule; the conflicts, described."""
    defaults = class_defaults(class_path)
    settings = SETTINGS.get(_short(class_path), ())
    problems = []
    skipped = (*MACHINE, *(() if attention else (*LINKED, "attention")))
    for key in list(vars(args)):
        if key in skipped:
            continue
        default = defaults.get(key, _NO_DEFAULT)
        value = theirs.get(key, default)
        if value is _NO_DEFAULT:
            continue  # neither recorded nor defaulted: the config's value stands
        where = _stated(args[key], key, files, default)
        if where is None:
            args[key] = value
        elif key not in settings and not _same(args[key], value):
            problems.append(_conflict(f"{key_prefix}.{key}", args[key], where, value,
                                      source.where(key, attention)))
    return problems


def _take_encoder(encoder: Namespace, source: Source, stated: dict[str, dict[str, tuple[Any, str]]]
                  ) -> list[str]:
    theirs = source.encoder or {}
    if _short(encoder.class_path) != _short(theirs.get("class_path")):
        return [_conflict(f"{ENCODER}.class_path", encoder.class_path, "the config", theirs.get("class_path"),
                          f"{source.path}")]
    if encoder.get("init_args") is None:
        encoder.init_args = Namespace()
    prefix = f"{ENCODER}.init_args"
    problems = _take_arguments(encoder.init_args, prefix, encoder.class_path, source.encoder_args,
                               stated["encoder"], source, attention=False)
    attention = encoder.init_args.get("attention")
    their_class, their_args = source.attention
    if isinstance(attention, Namespace) and _short(attention.get("class_path")) == _short(their_class):
        if attention.get("init_args") is None:
            attention.init_args = Namespace()
        problems += _take_arguments(attention.init_args, f"{prefix}.attention.init_args",
                                    attention.class_path, their_args, stated["attention"], source,
                                    attention=True)
    elif isinstance(attention, Namespace) and their_class:
        rank_zero_info(f"init_from {source.path} was trained with {_short(their_class)}; this run uses the "
                       f"config's {_short(attention.get('class_path'))} with its own arguments")
    return problems


def _take_length(config: Namespace, source: Source, files: dict[str, tuple[Any, str]]) -> list[str]:
    """``data.max_length``: the source's length (or ``extend_positions_to``) when unset, else checked."""
    data = config.get("data")
    length = source.encoder_args.get("max_length")
    if not isinstance(data, Namespace) or not isinstance(data.get("init_args"), Namespace) or length is None:
        return []
    args = data.init_args
    if "max_length" not in args:
        return []
    extend = config.get("model.init_args.extend_positions_to")
    wanted = extend or length
    parsed = args.max_length
    default = class_defaults(data.class_path).get("max_length", _NO_DEFAULT)
    where = None if parsed is None else _stated(parsed, "max_length", files, default)
    if where is None:
        args.max_length = wanted
        return []
    if _same(parsed, wanted):
        return []
    if extend:
        return [f"data.init_args.max_length = {parsed} ({where}) but model.init_args.extend_positions_to "
                f"is {extend} (init_from has {length} positions)"]
    hint = (f"; to train on longer sequences grow the table: --model.init_args.extend_positions_to {parsed}"
            if parsed > length else "")
    return [_conflict("data.init_args.max_length", parsed, where, length, source.where("max_length")) + hint]


def link_segments(config: Namespace) -> None:
    """A data ``num_segments`` left unset takes the encoder's (GLUE: one segment means no segment ids)."""
    data_args = config.get("data.init_args")
    encoder_args = config.get(f"{ENCODER}.init_args")
    if not isinstance(data_args, Namespace) or "num_segments" not in data_args or not isinstance(
            encoder_args, Namespace):
        return
    if data_args.num_segments is None and encoder_args.get("num_segments") is not None:
        data_args.num_segments = encoder_args.num_segments
