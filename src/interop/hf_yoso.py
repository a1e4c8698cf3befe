"""The authors' pretrained YOSO in and out through ``transformers``' format (``YosoForMaskedLM``).

The authors published their model as a Hugging Face folder (``uw-madison/yoso-4096``:
``config.json``, the weights, a RoBERTa tokenizer). ``load_hf_yoso`` builds our
``MaskedLanguageModel`` from such a folder, tensor for tensor; ``export_hf_yoso`` writes
one that ``YosoForMaskedLM.from_pretrained`` loads. ``init_from`` reads such a folder
directly (``src.pretrained``: its encoder config; ``convert_hf_encoder_state``: its weights).
The layout is RoBERTa's: summed word, position (offset 2) and token-type embeddings, a
LayerNorm, post-LN layers, the BERT LM head tied to the word embeddings; the encoder options
``embedding_norm``, ``position_offset``, ``layer_norm_eps`` and ``activation`` hold it exactly.

Where our YOSO attention and ``transformers``' differ (``docs/mlm_glue.md``): ours masks
padded keys (theirs turns the 0/1 mask into all ones, so padded keys are attended), ours
clamps the cosine into [-1, 1] before arccos (theirs gives NaN just outside), and ours
leaves an all-zero q/k row at 0 where theirs divides by 1e-12. On unpadded inputs in
expectation mode the two compute the same numbers. CLI::

    python -m src.interop.hf_yoso import <hf folder> <out.ckpt>
    python -m src.interop.hf_yoso export <our .ckpt> <hf folder>
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from torch import nn

from src.checkpoint_io import atomic_write
from src.checkpoints import read_state_dict, state_mismatches
from src.data.tokenizer import TOKENIZER_KEY, TextTokenizer
from src.models.components.attention import YOSOAttention
from src.models.components.encoder import TransformerEncoder
from src.models.mlm_module import MaskedLanguageModel

HF_POSITION_OFFSET = 2  # transformers' YOSO reads position i from row i + 2
ENCODER_CLASS = "src.models.components.encoder.TransformerEncoder"
ATTENTION_CLASS = "src.models.components.attention.YOSOAttention"
MODULE_CLASS = "src.models.mlm_module.MaskedLanguageModel"
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
OUR_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_LAYER = r"encoder\.layers\.(\d+)\."
_HF_LAYER = r"yoso.encoder.layer.\1."
# Our parameter name -> transformers' (regex over the full name; one rule per module).
_NAME_RULES: tuple[tuple[str, str], ...] = (
    (r"encoder\.token_embedding\.", "yoso.embeddings.word_embeddings."),
    (r"encoder\.position_embedding\.", "yoso.embeddings.position_embeddings."),
    (r"encoder\.segment_embedding\.", "yoso.embeddings.token_type_embeddings."),
    (r"encoder\.embedding_norm\.", "yoso.embeddings.LayerNorm."),
    (_LAYER + r"attention\.(query|key|value)\.", _HF_LAYER + r"attention.self.\2."),
    (_LAYER + r"attention\.attention\.conv\.", _HF_LAYER + "attention.self.conv."),
    (_LAYER + r"attention\.output\.", _HF_LAYER + "attention.output.dense."),
    (_LAYER + r"attention_norm\.", _HF_LAYER + "attention.output.LayerNorm."),
    (_LAYER + r"ffn\.0\.", _HF_LAYER + "intermediate.dense."),
    (_LAYER + r"ffn\.3\.", _HF_LAYER + "output.dense."),
    (_LAYER + r"ffn_norm\.", _HF_LAYER + "output.LayerNorm."),
    (r"lm_head\.transform\.0\.", "cls.predictions.transform.dense."),
    (r"lm_head\.transform\.2\.", "cls.predictions.transform.LayerNorm."),
    (r"lm_head\.bias$", "cls.predictions.bias"),
)
# transformers' tensors we do not hold separately: index buffers, and the decoder tied to the embeddings.
_BUFFERS = ("yoso.embeddings.position_ids", "yoso.embeddings.token_type_ids")
# Where each of our encoder (and YOSO) arguments comes from in config.json, for messages.
HF_CONFIG_KEYS = {
    "vocab_size": "vocab_size", "max_length": "max_position_embeddings", "dim": "hidden_size",
    "depth": "num_hidden_layers", "num_heads": "num_attention_heads",
    "head_dim": "hidden_size / num_attention_heads", "ffn_dim": "intermediate_size",
    "dropout": "hidden_dropout_prob", "num_segments": "type_vocab_size", "padding_id": "pad_token_id",
    "layer_norm_eps": "layer_norm_eps", "activation": "hidden_act", "norm_first": "post-LN layers",
    "embedding_norm": "the embedding LayerNorm", "position_offset": "positions offset by 2",
    "hash_code_len": "hash_code_len", "num_hashes": "num_hash", "expectation": "use_expectation",
    "conv_window": "conv_window", "hashing": "use_fast_hash", "lsh_backward": "lsh_backward",
}
_TIED = {"cls.predictions.decoder.weight": "yoso.embeddings.word_embeddings.weight",
         "cls.predictions.decoder.bias": "cls.predictions.bias"}


# -- names and configs -----------------------------------------------------------------------------
def hf_name(name: str) -> str:
    """transformers' name of our parameter ``name`` (of ``MaskedLanguageModel.state_dict()``)."""
    for pattern, replacement in _NAME_RULES:
        translated, count = re.subn("^" + pattern, replacement, name)
        if count:
            return translated
    raise KeyError(f"our tensor {name!r} has no counterpart in transformers' YOSO")


def encoder_config(hf: Mapping[str, Any]) -> dict[str, Any]:
    """Our encoder as a config (``class_path`` + ``init_args``) from transformers' ``config.json``."""
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    if dim % heads:
        raise ValueError(f"config.json: hidden_size {dim} is not a multiple of num_attention_heads {heads}")
    activation = hf.get("hidden_act", "gelu")
    if activation not in HF_ACTIVATIONS:
        raise ValueError(f"config.json: hidden_act {activation!r} is not one of {sorted(HF_ACTIVATIONS)}")
    init_args = {
        "vocab_size": hf["vocab_size"], "max_length": hf["max_position_embeddings"],
        "attention": {"class_path": ATTENTION_CLASS, "init_args": attention_args(hf)},
        "dim": dim, "depth": hf["num_hidden_layers"], "num_heads": heads, "head_dim": dim // heads,
        "ffn_dim": hf["intermediate_size"], "dropout": hf.get("hidden_dropout_prob", 0.1),
        "num_segments": hf.get("type_vocab_size", 1), "norm_first": False,
        "padding_id": hf.get("pad_token_id", 1), "embedding_norm": True,
        "position_offset": HF_POSITION_OFFSET, "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        "activation": HF_ACTIVATIONS[activation],
    }
    return {"class_path": ENCODER_CLASS, "init_args": init_args}


def attention_args(hf: Mapping[str, Any]) -> dict[str, Any]:
    """``YOSOAttention`` arguments from transformers' YOSO settings (its defaults where absent)."""
    return {
        "hash_code_len": hf.get("hash_code_len", 9), "num_hashes": hf.get("num_hash", 64),
        "expectation": hf.get("use_expectation", True), "conv_window": hf.get("conv_window"),
        "hashing": "fast" if hf.get("use_fast_hash", True) else "gaussian",
        "lsh_backward": hf.get("lsh_backward", True),
    }


def build_encoder(config: Mapping[str, Any]) -> nn.Module:
    """An encoder from its config (``class_path`` + ``init_args``, the attention a factory)."""
    args = dict(config.get("init_args") or {})
    attention = args.get("attention")
    if isinstance(attention, Mapping):
        args["attention"] = functools.partial(_import(attention["class_path"]),
                                              **(attention.get("init_args") or {}))
    return _import(config["class_path"])(**args)


def mlm_model(config: Mapping[str, Any]) -> MaskedLanguageModel:
    """A ``MaskedLanguageModel`` whose ``hparams.encoder`` is the encoder's config, not the module.

    So a checkpoint written from it (``save_checkpoint``) rebuilds it, as train.py's do.
    """
    with warnings.catch_warnings():  # Lightning's "encoder is an nn.Module" note: replaced just below
        warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
        model = MaskedLanguageModel(build_encoder(config), warmup_steps=0)
    model.hparams["encoder"] = dict(config)
    return model


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


# -- loading ---------------------------------------------------------------------------------------
def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's tensors, from ``model.safetensors`` or ``pytorch_model.bin`` (no code runs)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder} holds none of {WEIGHT_FILES}")


def _with_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints of ``YosoModel`` name the body without ``yoso.``: give it back."""
    return {k if k.startswith(("yoso.", "cls.")) else f"yoso.{k}": v for k, v in state.items()}


def _mapped(hf_state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
            prefix: str = "") -> tuple[dict[str, torch.Tensor], set[str], list[str]]:
    """``(ours, used, missing)``: the tensor of transformers' state for each of ``own``'s names.

    ``prefix`` turns ``own``'s names into ``MaskedLanguageModel``'s (``encoder.`` for an encoder).
    """
    ours, used, missing = {}, set(), []
    for name, tensor in own.items():
        if prefix + name == "lm_head.embedding.weight":
            continue  # the tied decoder: the token embedding itself
        source = hf_name(prefix + name)
        if source not in hf_state:
            missing.append(source)
            continue
        used.add(source)
        value = hf_state[source]
        if name.endswith("conv.weight") and value.numel() == tensor.numel():
            value = value.reshape(tensor.shape)  # transformers' Conv2d [heads, 1, window, 1]
        ours[name] = value
    return ours, used, missing


def convert_hf_state(hf_state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """transformers' tensors as ``model``'s state dict; a missing, unknown or untied one is an error."""
    hf_state = _with_prefix(hf_state)
    ours, used, missing = _mapped(hf_state, model.state_dict())
    _check_tied(hf_state, used)
    if "encoder.token_embedding.weight" in ours:
        ours["lm_head.embedding.weight"] = ours["encoder.token_embedding.weight"]
    unknown = sorted(set(hf_state) - used - set(_BUFFERS) - set(_TIED))
    if missing or unknown:
        raise ValueError("transformers' YOSO weights do not fit: "
                         + "; ".join(part for part in (_named("missing", missing), _named("unknown", unknown))
                                     if part))
    return ours


def convert_hf_encoder_state(hf_state: dict[str, torch.Tensor],
                             encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The body's tensors (``yoso.*``) as ``encoder``'s state dict, e.g. for ``init_from``.

    A task head of the folder's model (``cls.*`` of ``YosoForMaskedLM``, ``classifier.*``, ...)
    is left out; a body tensor that is missing, or one ``encoder`` has no place for, is an error.
    """
    body = {k if k.startswith("yoso.") else f"yoso.{k}": v for k, v in hf_state.items()
            if k.startswith(("yoso.", "embeddings.", "encoder."))}  # YosoModel's names lack "yoso."
    ours, used, missing = _mapped(body, encoder.state_dict(), prefix="encoder.")
    unknown = sorted(set(body) - used - set(_BUFFERS))
    if missing or unknown:
        raise ValueError("transformers' YOSO weights do not fit this encoder: "
                         + "; ".join(part for part in (_named("missing", missing), _named("unknown", unknown))
                                     if part))
    return ours


def _named(what: str, names: list[str]) -> str:
    return f"{what}: {', '.join(names)}" if names else ""


def _check_tied(hf_state: dict[str, torch.Tensor], used: set[str]) -> None:
    """A stored decoder must equal what ours ties it to (we hold one tensor for both)."""
    for decoder, tied in _TIED.items():
        if decoder in hf_state and tied in hf_state and not torch.equal(hf_state[decoder], hf_state[tied]):
            raise ValueError(f"{decoder} differs from {tied}: an untied LM decoder cannot be held "
                             "(our LM head is tied to the token embedding)")


def load_hf_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a transformers YOSO folder (``model_type`` must be ``yoso``)."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a transformers model folder")
    config = json.loads(path.read_text())
    if config.get("model_type", "yoso") != "yoso":
        raise ValueError(f"{path}: model_type {config['model_type']!r}, expected 'yoso'")
    return config


def load_hf_yoso(folder: str | Path) -> MaskedLanguageModel:
    """Our ``MaskedLanguageModel`` holding the transformers YOSO in ``folder``, every tensor mapped.

    The model is in eval mode; its ``hparams.encoder`` is the encoder's config, so a
    checkpoint written from it rebuilds it (``save_checkpoint``). The tokenizer:
    ``load_hf_tokenizer``. YOSO settings come from ``hash_code_len``, ``num_hash``,
    ``use_expectation``, ``conv_window``, ``use_fast_hash`` and ``lsh_backward``.
    """
    folder = Path(folder)
    config = encoder_config(load_hf_config(folder))
    model = mlm_model(config)
    model.load_state_dict(convert_hf_state(read_hf_weights(folder), model))
    return model.eval()


def load_hf_tokenizer(folder: str | Path) -> Tokenizer | None:
    """The folder's tokenizer (``tokenizer.json``, or RoBERTa's ``vocab.json`` + ``merges.txt``), or None."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return None
    tokenizer = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    cls_id, sep_id = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    if cls_id is not None and sep_id is not None:
        tokenizer.post_processor = processors.RobertaProcessing(("</s>", sep_id), ("<s>", cls_id))
    return tokenizer


def save_checkpoint(model: MaskedLanguageModel, path: str | Path, tokenizer: Tokenizer | None = None) -> None:
    """A checkpoint of this project's layout: ``init_from``, ``--ckpt_path`` less, and ``export`` read it."""
    import lightning

    hyper_parameters = {**dict(model.hparams), "_class_path": MODULE_CLASS,
                        "_instantiator": "lightning.pytorch.cli.instantiate_module"}
    checkpoint: dict[str, Any] = {"state_dict": model.state_dict(), "hyper_parameters": hyper_parameters,
                                  "pytorch-lightning_version": lightning.__version__}
    if tokenizer is not None:
        checkpoint[TOKENIZER_KEY] = tokenizer.to_str()
    atomic_write(Path(path), lambda file: torch.save(checkpoint, file))


# -- exporting -------------------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> tuple[MaskedLanguageModel, Tokenizer | None]:
    """Our MLM checkpoint as a model (rebuilt from its ``hyper_parameters``) and its tokenizer."""
    checkpoint, state = read_state_dict(path)
    config = (checkpoint.get("hyper_parameters") or {}).get("encoder")
    if not isinstance(config, Mapping):
        raise ValueError(f"{path} records no encoder config (hyper_parameters.encoder): "
                         "write it with train.py or save_checkpoint")
    model = mlm_model(config)
    weights = {k: v for k, v in state.items() if k.startswith(("encoder.", "lm_head."))}
    weights.setdefault("lm_head.embedding.weight", weights.get("encoder.token_embedding.weight"))
    problems = state_mismatches(model.state_dict(), weights)
    if problems:
        raise ValueError(f"{path} does not hold this MLM model: {' | '.join(problems)}")
    model.load_state_dict(weights)
    text = checkpoint.get(TOKENIZER_KEY)
    return model.eval(), Tokenizer.from_str(text) if isinstance(text, str) else None


def hf_config(model: MaskedLanguageModel) -> dict[str, Any]:
    """transformers' ``config.json`` of our model; a layout it cannot express is an error saying why."""
    encoder = model.encoder
    _check_exportable(encoder)
    layer = encoder.layers[0]
    attention: YOSOAttention = layer.attention.attention
    options = attention.options
    segments = encoder.segment_embedding
    return {
        "architectures": ["YosoForMaskedLM"], "model_type": "yoso",
        "vocab_size": encoder.token_embedding.num_embeddings, "hidden_size": encoder.dim,
        "num_hidden_layers": len(encoder.layers), "num_attention_heads": attention.num_heads,
        "intermediate_size": layer.ffn[0].out_features, "hidden_act": OUR_ACTIVATIONS[encoder.activation],
        "hidden_dropout_prob": encoder.embedding_dropout.p, "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": encoder.max_length,
        "type_vocab_size": segments.num_embeddings if segments is not None else 1,
        "layer_norm_eps": encoder.layer_norm_eps, "initializer_range": 0.02,
        "use_expectation": options.expectation, "hash_code_len": options.hash_code_len,
        "num_hash": options.num_hashes, "conv_window": attention.conv.window if attention.conv else None,
        "use_fast_hash": options.hashing == "fast", "lsh_backward": options.lsh_backward,
        "pad_token_id": encoder.token_embedding.padding_idx, "tie_word_embeddings": True,
    }


def _check_exportable(encoder: nn.Module) -> None:
    """transformers' YOSO: post-LN, an embedding LayerNorm, YOSO attention, dim = heads x head_dim."""
    problems = []
    if not isinstance(encoder, TransformerEncoder):
        problems.append(f"the encoder is a {type(encoder).__name__}, not a TransformerEncoder")
    else:
        layer = encoder.layers[0]
        attention = layer.attention.attention
        if layer.norm_first:
            problems.append("pre-LN layers (norm_first=True); transformers' YOSO is post-LN")
        if encoder.embedding_norm is None:
            problems.append("no embedding LayerNorm (embedding_norm=False)")
        if not isinstance(attention, YOSOAttention):
            problems.append(f"{type(attention).__name__} attention, not YOSOAttention")
        elif not attention.options.normalize_output:
            problems.append("YOSO without output normalisation")
        if layer.attention.num_heads * layer.attention.head_dim != encoder.dim:
            problems.append("num_heads x head_dim differs from dim")
    if problems:
        raise ValueError("this model cannot be written as transformers' YOSO: " + "; ".join(problems))


def hf_state(model: MaskedLanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under transformers' names and shapes (the tied decoder left to ``from_pretrained``)."""
    encoder = model.encoder
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.embedding.weight":
            continue
        target = hf_name(name)
        if name.endswith("conv.weight"):
            tensor = tensor.reshape(tensor.shape[0], 1, tensor.shape[1], 1)
        state[target] = tensor.detach().contiguous().clone()
    state["yoso.embeddings.position_embeddings.weight"] = _hf_positions(encoder)
    if encoder.segment_embedding is None:
        state["yoso.embeddings.token_type_embeddings.weight"] = torch.zeros(1, encoder.dim)
    return state


def _hf_positions(encoder: TransformerEncoder) -> torch.Tensor:
    """Our position table re-indexed to transformers' offset of 2 (rows it never reads: 0 or ours)."""
    ours = encoder.position_embedding.weight.detach()
    table = ours.new_zeros(encoder.max_length + HF_POSITION_OFFSET, encoder.dim)
    kept = min(HF_POSITION_OFFSET, encoder.position_offset)  # rows before position 0 that ours has
    table[HF_POSITION_OFFSET - kept:] = ours[encoder.position_offset - kept:]
    return table


def export_hf_yoso(source: str | Path | MaskedLanguageModel, folder: str | Path,
                   tokenizer: Tokenizer | None = None) -> Path:
    """Write ``folder`` for ``YosoForMaskedLM.from_pretrained``: config, safetensors weights, tokenizer.

    ``source``: our MLM checkpoint (its tokenizer comes along) or a ``MaskedLanguageModel``
    (give ``tokenizer`` to write one).
    """
    from safetensors.torch import save_file

    if isinstance(source, (str, Path)):
        model, stored = read_checkpoint(source)
        tokenizer = tokenizer or stored
    else:
        model = source
    folder = Path(folder)
    config = hf_config(model)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(hf_state(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if tokenizer is not None:
        write_tokenizer(tokenizer, folder, config["max_position_embeddings"])
    return folder


def write_tokenizer(tokenizer: Tokenizer, folder: Path, max_length: int) -> None:
    """``tokenizer.json`` plus the ``tokenizer_config.json`` that lets ``AutoTokenizer`` read it."""
    tokenizer.save(str(folder / "tokenizer.json"))
    roles = TextTokenizer(tokenizer)
    names = {role: tokenizer.id_to_token(getattr(roles, f"{role}_id")) for role in ("cls", "sep", "pad",
                                                                                     "mask", "unk")}
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                "bos_token": names["cls"], "cls_token": names["cls"], "eos_token": names["sep"],
                "sep_token": names["sep"], "pad_token": names["pad"], "mask_token": names["mask"],
                "unk_token": names["unk"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")


# -- command line ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """``import <hf folder> <out.ckpt>`` or ``export <ckpt> <hf folder>``."""
    parser = argparse.ArgumentParser(prog="python -m src.interop.hf_yoso", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    imports = commands.add_parser("import", help="a transformers YOSO folder -> our MLM checkpoint")
    imports.add_argument("folder")
    imports.add_argument("checkpoint")
    exports = commands.add_parser("export", help="our MLM checkpoint -> a transformers YOSO folder")
    exports.add_argument("checkpoint")
    exports.add_argument("folder")
    args = parser.parse_args(argv)
    if args.command == "import":
        tokenizer = load_hf_tokenizer(args.folder)
        save_checkpoint(load_hf_yoso(args.folder), args.checkpoint, tokenizer)
        note = "" if tokenizer is not None else " (the folder has no tokenizer: none stored)"
        print(f"wrote {args.checkpoint}{note}")
    else:
        print(f"wrote {export_hf_yoso(args.checkpoint, args.folder)}")


if __name__ == "__main__":
    main()
