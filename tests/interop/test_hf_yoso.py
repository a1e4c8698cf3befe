"""Parity with transformers' YOSO (expectation mode: exact on the CPU) via load_hf_yoso / export_hf_yoso."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from src.interop.hf_yoso import export_hf_yoso, load_hf_tokenizer, load_hf_yoso, main  # noqa: E402
from src.models.base_module import load_encoder_weights  # noqa: E402

VOCAB, LENGTH, PAD = 100, 20, 1


def tiny_hf(folder: Path, conv_window: int | None = None) -> torch.nn.Module:
    """A random tiny YosoForMaskedLM in expectation mode, saved with save_pretrained into ``folder``."""
    torch.manual_seed(0)
    config = transformers.YosoConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, use_expectation=True, conv_window=conv_window, pad_token_id=PAD,
    )
    model = transformers.YosoForMaskedLM(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and bias, so a swapped tensor shows
        for name, parameter in model.named_parameters():
            if "LayerNorm" in name or name.endswith("predictions.bias"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    return model


def token_ids(batch: int = 2, length: int = LENGTH) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def ours_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, torch.ones_like(ids, dtype=torch.bool))


@pytest.fixture(params=[None, 5], ids=["yoso-e", "yoso-e-conv5"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[torch.nn.Module, torch.nn.Module, Path]:
    folder = tmp_path / "hf"
    hf = tiny_hf(folder, request.param)
    return hf, load_hf_yoso(folder), folder


def test_logits_equal_transformers(pair: tuple) -> None:
    hf, ours, _ = pair
    ids = token_ids()
    with torch.no_grad():
        difference = (hf(input_ids=ids).logits - ours_logits(ours, ids)).abs().max().item()
    assert difference <= 1e-4


def test_padding_changes_nothing_in_ours(pair: tuple) -> None:
    _, ours, _ = pair
    ids = token_ids(length=12)
    padded = torch.cat([ids, torch.full((2, 8), PAD)], dim=1)
    mask = torch.cat([torch.ones(2, 12), torch.zeros(2, 8)], dim=1).bool()
    with torch.no_grad():
        difference = (ours(padded, mask)[:, :12] - ours_logits(ours, ids)).abs().max().item()
    assert difference <= 1e-5


def embedding_gradient(model: torch.nn.Module, embedding: torch.nn.Module, logits_of, labels) -> torch.Tensor:
    """Gradient of the MLM loss with respect to the input embeddings (the embedding layer's output)."""
    kept: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        kept.append(output)

    handle = embedding.register_forward_hook(keep)
    try:
        logits = logits_of()
    finally:
        handle.remove()
    F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1)).backward()
    return kept[0].grad


def test_input_embedding_gradients_equal_transformers(pair: tuple) -> None:
    hf, ours, _ = pair
    ids = token_ids()
    labels = torch.randint(0, VOCAB, ids.shape, generator=torch.Generator().manual_seed(2))
    words = hf.yoso.embeddings.word_embeddings
    theirs = embedding_gradient(hf, words, lambda: hf(input_ids=ids).logits, labels)
    mine = embedding_gradient(ours, ours.encoder.token_embedding, lambda: ours_logits(ours, ids), labels)
    scale = theirs.abs().max().item()
    assert scale > 0
    assert (theirs - mine).abs().max().item() <= 1e-5 * max(1.0, scale)


def test_export_loads_in_transformers_with_the_same_logits(pair: tuple, tmp_path: Path) -> None:
    _, ours, _ = pair
    out = export_hf_yoso(ours, tmp_path / "exported")
    reloaded = transformers.YosoForMaskedLM.from_pretrained(out).eval()
    ids = token_ids()
    with torch.no_grad():
        difference = (reloaded(input_ids=ids).logits - ours_logits(ours, ids)).abs().max().item()
    assert difference <= 1e-5


def rewrite_weights(folder: Path, change) -> None:
    state = load_file(str(folder / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_unknown_and_missing_tensors_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    tiny_hf(folder)
    rewrite_weights(folder, lambda state: state.update({"yoso.extra.weight": torch.zeros(3)}))
    with pytest.raises(ValueError, match=r"unknown: yoso\.extra\.weight"):
        load_hf_yoso(folder)
    rewrite_weights(folder, lambda state: (state.pop("yoso.extra.weight"),
                                           state.pop("yoso.encoder.layer.1.output.dense.bias")))
    with pytest.raises(ValueError, match=r"missing: yoso\.encoder\.layer\.1\.output\.dense\.bias"):
        load_hf_yoso(folder)


def write_roberta_vocab(folder: Path) -> None:
    tokens = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *"abcdefgh", "Ġ", "ab", "Ġa"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\na b\nĠ a\n")


def test_cli_round_trip_keeps_weights_and_tokenizer(tmp_path: Path) -> None:
    folder, checkpoint, out = tmp_path / "hf", tmp_path / "yoso.ckpt", tmp_path / "back"
    hf = tiny_hf(folder, 3)
    write_roberta_vocab(folder)
    assert load_hf_tokenizer(folder).encode("ab a").tokens == ["<s>", "ab", "Ġa", "</s>"]
    main(["import", str(folder), str(checkpoint)])
    main(["export", str(checkpoint), str(out)])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert load_hf_tokenizer(out).encode("ab a").ids == load_hf_tokenizer(folder).encode("ab a").ids
    ids = token_ids()
    with torch.no_grad():
        expected = hf(input_ids=ids).logits
        actual = transformers.YosoForMaskedLM.from_pretrained(out).eval()(input_ids=ids).logits
    assert (expected - actual).abs().max().item() <= 1e-5
    fresh = load_hf_yoso(folder).encoder
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.zero_()
    load_encoder_weights(fresh, checkpoint)  # init_from reads the imported checkpoint
    assert torch.equal(fresh.token_embedding.weight, hf.yoso.embeddings.word_embeddings.weight)


@pytest.mark.filterwarnings("ignore:Attribute 'encoder' is an instance")
def test_pre_ln_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    from src.models.components.attention import YOSOAttention
    from src.models.components.encoder import TransformerEncoder
    from src.models.mlm_module import MaskedLanguageModel

    def attention(heads: int, head_dim: int) -> YOSOAttention:
        return YOSOAttention(heads, head_dim, hash_code_len=4, expectation=True)

    encoder = TransformerEncoder(VOCAB, 16, attention, dim=16, depth=1, num_heads=2, head_dim=8, ffn_dim=32)
    with pytest.raises(ValueError, match="pre-LN"):
        export_hf_yoso(MaskedLanguageModel(encoder, warmup_steps=0), tmp_path / "x")
