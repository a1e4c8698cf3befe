"""MLM data: packing boundaries, BERT masking statistics, the DataModule on a small corpus, and its
unigram baseline."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from src.data.mlm.mlm_datamodule import IGNORE_INDEX, MLMDataModule, mask_tokens, pack_blocks
from src.models.components.attention import SoftmaxAttention
from src.models.components.encoder import TransformerEncoder
from src.models.mlm_module import MaskedLanguageModel

CLS, SEP, PAD, MASK, UNK = 0, 1, 2, 3, 4
SPECIAL = (CLS, SEP, PAD, MASK, UNK)


def test_blocks_are_cls_content_sep_and_hold_the_documents_in_order():
    docs = [list(range(10, 13)), list(range(20, 40)), [50], list(range(60, 66))]  # the 2nd spans blocks
    blocks = list(pack_blocks(docs, block_length=8, cls_id=CLS, sep_id=SEP))
    assert all(len(b) == 8 for b in blocks[:-1]) and 3 <= len(blocks[-1]) <= 8
    assert all(b[0] == CLS and b[-1] == SEP for b in blocks)
    stream = [t for doc in docs for t in [*doc, SEP]]
    assert [t for b in blocks for t in b[1:-1]] == stream
    assert len(blocks) == -(-len(stream) // 6)  # ceil: 6 stream tokens per block
    with pytest.raises(ValueError, match="block_length must be >= 3"):
        list(pack_blocks(docs, 2, CLS, SEP))


def _batch(rows: int = 512, width: int = 256, vocab: int = 1000, seed: int = 0):
    """Random ids with [CLS]/[SEP] boundaries, some [UNK]s, and half the rows padded after 3/4."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (rows, width), generator=g)
    ids[:, 0], ids[:, 100] = CLS, SEP
    ids[:, 50] = UNK
    mask = torch.ones(rows, width, dtype=torch.bool)
    mask[::2, 3 * width // 4:] = False
    ids[~mask] = PAD
    return ids, mask


def test_masking_statistics_over_a_large_batch():
    ids, mask = _batch()
    replacement = torch.arange(5, 1000)
    torch.manual_seed(1)
    masked, labels = mask_tokens(ids, mask, SPECIAL, MASK, replacement, probability=0.15)
    candidates = mask & ~torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != IGNORE_INDEX
    n_candidates, n_chosen = int(candidates.sum()), int(chosen.sum())
    assert n_candidates > 100_000
    # 15 % of candidates: binomial sd = sqrt(.15 * .85 / n) ~ 0.0011; tolerance ~4.5 sd
    assert abs(n_chosen / n_candidates - 0.15) < 0.005
    assert torch.equal(labels[chosen], ids[chosen])
    to_mask = (masked == MASK) & chosen
    kept = (masked == ids) & chosen
    randomised = chosen & ~to_mask & ~kept
    # of ~15k targets: 80/10/10 with sd <= 0.0033; tolerances >= 4.5 sd
    assert abs(int(to_mask.sum()) / n_chosen - 0.8) < 0.015
    assert abs(int(randomised.sum()) / n_chosen - 0.1) < 0.012
    assert abs(int(kept.sum()) / n_chosen - 0.1) < 0.012
    assert not torch.isin(masked[randomised], torch.tensor(SPECIAL)).any()


def test_special_tokens_and_padding_are_never_masked_or_targets():
    ids, mask = _batch(rows=64, seed=3)
    masked, labels = mask_tokens(ids, mask, SPECIAL, MASK, torch.arange(5, 1000), probability=0.9)
    protected = ~mask | torch.isin(ids, torch.tensor(SPECIAL))
    assert torch.equal(masked[protected], ids[protected])
    assert (labels[protected] == IGNORE_INDEX).all()
    assert (labels[~protected] != IGNORE_INDEX).float().mean() > 0.85  # the rest is masked at 0.9


def test_masks_come_from_torch_rng_so_a_seeded_run_replays():
    ids, mask = _batch(rows=8, seed=4)
    replacement = torch.arange(5, 1000)
    torch.manual_seed(7)
    first = mask_tokens(ids, mask, SPECIAL, MASK, replacement)
    second = mask_tokens(ids, mask, SPECIAL, MASK, replacement)
    torch.manual_seed(7)
    replay = mask_tokens(ids, mask, SPECIAL, MASK, replacement)
    assert torch.equal(first[0], replay[0]) and torch.equal(first[1], replay[1])
    assert not torch.equal(first[1], second[1])  # dynamic: a new mask every batch



def test_replacement_shares_change_what_targets_show_not_which_are_targets():
    ids, mask = _batch(rows=64, seed=5)
    replacement = torch.arange(5, 1000)
    torch.manual_seed(3)
    bert = mask_tokens(ids, mask, SPECIAL, MASK, replacement)
    torch.manual_seed(3)
    only_mask = mask_tokens(ids, mask, SPECIAL, MASK, replacement, mask_replace_prob=1.0,
                            random_replace_prob=0.0)
    assert torch.equal(bert[1], only_mask[1])  # the same targets for the same seed
    chosen = only_mask[1] != IGNORE_INDEX
    assert (only_mask[0][chosen] == MASK).all() and torch.equal(only_mask[0][~chosen], ids[~chosen])
    torch.manual_seed(3)
    explicit = mask_tokens(ids, mask, SPECIAL, MASK, replacement, mask_replace_prob=0.8,
                           random_replace_prob=0.1)
    assert torch.equal(bert[0], explicit[0])  # the defaults are BERT's 80/10/10, draw for draw
    torch.manual_seed(3)
    kept = mask_tokens(ids, mask, SPECIAL, MASK, replacement, mask_replace_prob=0.0, random_replace_prob=0.0)
    assert torch.equal(kept[0], ids)
    for shares in ((0.9, 0.2), (-0.1, 0.0), (1.2, 0.0)):
        with pytest.raises(ValueError, match="sum <= 1"):
            mask_tokens(ids, mask, SPECIAL, MASK, replacement, mask_replace_prob=shares[0],
                        random_replace_prob=shares[1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlm")
    sentences = [f"Paragraph {i} says that the value of item {i % 7} is returned by the function."
                 for i in range(300)]
    (folder / "corpus.txt").write_text("\n\n".join(sentences))
    return folder


def make_data(corpus, **options) -> MLMDataModule:
    settings = dict(corpus=str(corpus / "corpus.txt"), tokenizer_vocab_size=300, max_length=16, batch_size=8,
                    val_fraction=0.1, test_fraction=0.1, cache_dir=str(corpus / "cache"))
    return MLMDataModule(**{**settings, **options})


def test_datamodule_packs_a_text_corpus_with_its_trained_tokenizer(corpus):
    data = make_data(corpus)
    tok = data.tokenizer
    assert data.vocab_size == tok.vocab_size <= 300 and data.pad_id == tok.pad_id  # 256 bytes + 5 + merges
    assert (data.num_classes, data.cls_id, data.pooling) == (None, None, "mean")
    data.prepare_data()
    data.setup("fit")
    train = data.dataset("train")
    blocks = [np.asarray(train[i]["input_ids"]) for i in range(len(train))]
    assert all(len(b) == 16 for b in blocks[:-1])
    assert all(b[0] == tok.cls_id and b[-1] == tok.sep_id for b in blocks)
    text = tok.tokenizer.decode([int(t) for b in blocks for t in b[1:-1]], skip_special_tokens=True)
    assert "Paragraph" in text and "returned by the function" in text
    assert len(train) > 5 * len(data.dataset("val"))  # ~80/10/10 of the documents

    again = make_data(corpus)  # same corpus and options: the cached tokenizer and arrays are reused
    assert again.tokenizer.fingerprint() == tok.fingerprint() and again.cache_path() == data.cache_path()
    assert make_data(corpus, max_length=32).cache_path() != data.cache_path()
    assert not (corpus / "cache" / "mlm-staging").exists() or not any(
        (corpus / "cache" / "mlm-staging").iterdir()
    )


def test_evaluation_masks_are_fixed_training_masks_are_not(corpus):
    data = make_data(corpus)
    data.prepare_data()
    data.setup("fit")
    val = [data.dataset("val")[i] for i in range(4)]
    fixed = data.collator("val")
    first, again = fixed(val), fixed(val)
    assert (torch.equal(first["input_ids"], again["input_ids"])
            and torch.equal(first["labels"], again["labels"]))
    only_mask = make_data(corpus, mask_replace_prob=1.0, random_replace_prob=0.0).collator("val")(val)
    assert torch.equal(only_mask["labels"], first["labels"])
    shown = only_mask["input_ids"][only_mask["labels"] != IGNORE_INDEX]
    assert (shown == data.tokenizer.mask_id).all()
    train = data.collator("train")
    torch.manual_seed(0)
    a = train(val)
    b = train(val)
    assert not torch.equal(a["labels"], b["labels"])
    assert set(a) == {"input_ids", "attention_mask", "labels"}


def test_unigram_baseline_counts_the_training_blocks_and_scores_the_fixed_val_masks(corpus):
    data = make_data(corpus)
    data.prepare_data()
    data.setup("fit")
    train = data.dataset("train")
    ids = np.concatenate([np.asarray(train[i]["input_ids"]) for i in range(len(train))])
    vocab, special = data.vocab_size, list(data.tokenizer.special_ids)
    assert np.array_equal(data.token_counts(), np.bincount(ids, minlength=vocab))
    counts = np.bincount(ids, minlength=vocab)
    counts[special] = 0
    expected = np.log((counts + 1) / (counts.sum() + vocab - len(special)))  # add-one over the target ids
    log_probs = data.unigram_log_probs().numpy()
    targets_only = np.ones(vocab, dtype=bool)
    targets_only[special] = False
    assert np.allclose(log_probs[targets_only], expected[targets_only], atol=1e-6)
    assert np.isinf(log_probs[special]).all()

    # In a run: a validation-only Trainer (the DataModule loads train itself to count it) logs the
    # unigram's cross-entropy at exactly the positions the fixed validation masks chose.
    torch.manual_seed(0)
    encoder = TransformerEncoder(vocab, 16, SoftmaxAttention, dim=8, depth=1, num_heads=2, head_dim=4,
                                 ffn_dim=16, padding_id=data.pad_id)
    model = MaskedLanguageModel(encoder, warmup_steps=0)
    fresh = make_data(corpus)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    logged = trainer.validate(model, datamodule=fresh, verbose=False)[0]
    targets = torch.cat([b["labels"][b["labels"] != IGNORE_INDEX] for b in fresh.val_dataloader()])
    assert targets.numel() > 20
    unigram = float(-torch.from_numpy(expected)[targets].mean())
    assert logged["val/unigram_loss"] == pytest.approx(unigram, rel=1e-5)
    assert logged["val/unigram_gap"] == pytest.approx(unigram - logged["val/loss"], rel=1e-4, abs=1e-5)
