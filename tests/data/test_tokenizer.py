"""Tokenizers: trained with special tokens, loaded from JSON or a checkpoint, clear errors otherwise."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models

from src.data.tokenizer import TOKENIZER_KEY, TextTokenizer, main, store_tokenizer, train_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A lazy dog sleeps in the sun while the fox runs.",
    "Return the absolute value of a number; the argument may be an integer.",
] * 20


@pytest.mark.parametrize("kind, specials", [
    ("bpe", ["<s>", "</s>", "<pad>", "<mask>", "<unk>"]),
    ("wordpiece", ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]),
])
def test_trained_tokenizer_has_the_special_tokens_and_round_trips(tmp_path, kind, specials):
    tok = train_tokenizer(TEXTS, kind=kind, vocab_size=200, min_frequency=1)
    vocab = tok.tokenizer.get_vocab()
    roles = [tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id, tok.unk_id]
    assert roles == [vocab[name] for name in specials]
    assert tok.special_ids == tuple(sorted(roles))
    ids = tok.encode_batch(["the lazy dog"])[0]
    assert ids and not set(ids) & set(roles)  # no special token added to plain text
    assert tok.tokenizer.decode(ids).strip() == "the lazy dog"

    path = tmp_path / "tokenizer.json"
    tok.tokenizer.save(str(path))
    again = TextTokenizer.from_file(path)
    assert again.encode_batch(["the lazy dog"]) == [ids] and again.fingerprint() == tok.fingerprint()


def test_a_tokenizer_without_a_mask_token_is_rejected(tmp_path):
    bare = Tokenizer(models.WordLevel(
        {"<s>": 0, "</s>": 1, "<pad>": 2, "<unk>": 3, "word": 4}, unk_token="<unk>"
    ))
    path = tmp_path / "tokenizer.json"
    bare.save(str(path))
    with pytest.raises(ValueError, match=r"no mask token \(looked for <mask> or \[MASK\]\)"):
        TextTokenizer.from_file(path)
    with pytest.raises(FileNotFoundError, match="src.data.tokenizer train"):
        TextTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="junk.json is not a tokenizers JSON file"):
        TextTokenizer.from_file(tmp_path / "junk.json")


def test_checkpoint_round_trip_and_a_checkpoint_without_tokenizer(tmp_path):
    tok = train_tokenizer(TEXTS, vocab_size=150, min_frequency=1)

    class Data:
        def tokenizer_json(self) -> str:
            return tok.to_str()

    checkpoint = {"state_dict": {"encoder.w": torch.zeros(2)}}
    store_tokenizer(checkpoint, Data())
    torch.save(checkpoint, tmp_path / "run.ckpt")
    loaded = TextTokenizer.from_checkpoint(tmp_path / "run.ckpt")
    assert loaded.fingerprint() == tok.fingerprint()

    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match=f"plain.ckpt holds no tokenizer \\('{TOKENIZER_KEY}'\\)"):
        TextTokenizer.from_checkpoint(tmp_path / "plain.ckpt")


def test_train_command_writes_a_loadable_tokenizer(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TEXTS))
    out = tmp_path / "tok" / "tokenizer.json"
    main(["train", "--corpus", str(corpus), "--out", str(out), "--kind", "wordpiece", "--vocab-size", "120",
          "--min-frequency", "1"])
    assert "wrote" in capsys.readouterr().out
    assert TextTokenizer.from_file(out).cls_id == Tokenizer.from_file(str(out)).token_to_id("[CLS]")
