"""Compacted pixel batches (``compact_masked``): only the lit pixels, each at its own position.

The claim under test: for an attention that sees its keys as a set, a model fed the compacted
batch computes the same logits as on the full 1024-long array with black pixels masked (the
harness's inputs), pooling over the padded length included; attentions that read the sequence
order refuse compacted inputs instead of computing something else.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from src.data.base_datamodule import PaddingCollator
from src.data.lra.pathfinder_datamodule import PathfinderDataModule
from src.models.components.attention import SoftmaxAttention, YOSOAttention
from src.models.components.encoder import TransformerEncoder
from src.models.components.linformer import LinformerAttention
from src.models.components.nystrom import NystromAttention
from src.models.components.performer import PerformerAttention
from src.models.lra_module import SequenceClassifier


def sparse_images(count: int, length: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Raw-pixel examples with ~5 % of pixels lit (values 1..255), one with none lit."""
    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        pixels = np.where(rng.random(length) < 0.05, rng.integers(1, 256, length), 0).astype(np.uint16)
        if index == 1:
            pixels[:] = 0
        items.append({"input_ids": pixels, "labels": np.int64(index % 2)})
    return items


def test_compacted_batch_keeps_every_lit_pixel_with_its_position():
    items = sparse_images(5, 64, seed=0)
    full = PaddingCollator(64, pad_to=64, mask_pad_valued=True)(items)
    compact = PaddingCollator(64, pad_to=64, mask_pad_valued=True, compact=True)(items)
    lit_counts = [int((item["input_ids"] != 0).sum()) for item in items]
    assert compact["input_ids"].shape == (5, max(lit_counts))
    for row, item in enumerate(items):
        lit = np.flatnonzero(item["input_ids"])
        n = len(lit)
        assert compact["attention_mask"][row].tolist() == [True] * n + [False] * (max(lit_counts) - n)
        assert compact["position_ids"][row, :n].tolist() == lit.tolist()
        assert compact["input_ids"][row, :n].tolist() == item["input_ids"][lit].tolist()
        assert (compact["input_ids"][row, n:] == 0).all()
        # the full array's mask marks exactly the same pixels
        assert torch.nonzero(full["attention_mask"][row]).flatten().tolist() == lit.tolist()
    assert torch.equal(compact["labels"], full["labels"])


def classifier(attention, pooling: str) -> SequenceClassifier:
    torch.manual_seed(0)
    encoder = TransformerEncoder(vocab_size=256, max_length=64, attention=attention, dim=16, depth=2,
                                 num_heads=2, head_dim=8, ffn_dim=32, dropout=0.0, norm_first=True)
    return SequenceClassifier(encoder, num_classes=2, pooling=pooling).eval()


SET_ATTENTIONS = {
    "softmax": SoftmaxAttention,
    "yoso_e": functools.partial(YOSOAttention, hash_code_len=4, expectation=True),
    "performer": functools.partial(PerformerAttention, num_features=32, redraw_in_training=False),
}


@pytest.mark.parametrize("pooling", ["mean_padded", "mean"])
@pytest.mark.parametrize("name", sorted(SET_ATTENTIONS))
def test_compacted_batch_gives_the_full_arrays_logits(name, pooling):
    items = sparse_images(6, 64, seed=1)
    full = PaddingCollator(64, pad_to=64, mask_pad_valued=True)(items)
    compact = PaddingCollator(64, pad_to=64, mask_pad_valued=True, compact=True)(items)
    model = classifier(SET_ATTENTIONS[name], pooling)
    with torch.no_grad():
        want = model(full["input_ids"], full["attention_mask"])
        got = model(compact["input_ids"], compact["attention_mask"], compact["position_ids"])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # Not trivially equal: the padded-length divisor matters (a wrong one moves the logits).
    with torch.no_grad():
        wrong = model.head(model.encoder(compact["input_ids"], compact["attention_mask"],
                                         position_ids=compact["position_ids"]).sum(1) / 7)
    assert not torch.allclose(wrong, want, atol=1e-3)


def test_compacted_yoso_sampling_matches_in_distribution():
    """YOSO-m samples hashes, so compare the mean of many draws with the expectation's output."""
    items = sparse_images(4, 64, seed=2)
    compact = PaddingCollator(64, pad_to=64, mask_pad_valued=True, compact=True)(items)
    full = PaddingCollator(64, pad_to=64, mask_pad_valued=True)(items)
    sampled = classifier(functools.partial(YOSOAttention, hash_code_len=4, num_hashes=64), "mean_padded")
    with torch.no_grad():
        torch.manual_seed(3)
        on_compact = torch.stack([sampled(compact["input_ids"], compact["attention_mask"],
                                          compact["position_ids"]) for _ in range(20)]).mean(0)
        torch.manual_seed(4)
        on_full = torch.stack([sampled(full["input_ids"], full["attention_mask"]) for _ in range(20)]).mean(0)
    # Same weights, same inputs; only the hash draws differ: 20 x 64 hashes each side.
    torch.testing.assert_close(on_compact, on_full, rtol=0.0, atol=0.02)


@pytest.mark.parametrize("attention", [
    functools.partial(YOSOAttention, hash_code_len=4, conv_window=3),
    functools.partial(NystromAttention, num_landmarks=4),
    functools.partial(LinformerAttention, max_length=64, projected_length=8),
], ids=["yoso_c", "nystrom", "linformer"])
def test_attentions_that_read_the_order_refuse_compacted_inputs(attention):
    items = sparse_images(3, 64, seed=5)
    compact = PaddingCollator(64, pad_to=64, mask_pad_valued=True, compact=True)(items)
    model = classifier(attention, "mean_padded")
    with pytest.raises(ValueError, match="reads the sequence order.*compact_masked: false"):
        model(compact["input_ids"], compact["attention_mask"], compact["position_ids"])


def test_position_ids_out_of_the_table_are_refused():
    model = classifier(SoftmaxAttention, "mean")
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"position_ids must lie in \[0, 64\).*got \[0, 64\]"):
        model(ids, torch.ones(1, 3, dtype=torch.bool), torch.tensor([[0, 5, 64]]))


def test_compact_masked_needs_raw_pixels_and_no_cls(tmp_path):
    with pytest.raises(ValueError, match="pixel_tokens='shifted' masks none"):
        PathfinderDataModule(data_dir=str(tmp_path), pixel_tokens="shifted", compact_masked=True)
    with pytest.raises(ValueError, match="prepend_cls: false"):
        PathfinderDataModule(data_dir=str(tmp_path), pixel_tokens="raw", compact_masked=True,
                             prepend_cls=True)


def test_pathfinder_batches_compacted_from_generated_images(tmp_path):
    options = dict(difficulty="curv_baseline", generate_num=20, generate_workers=1, batch_size=20,
                   pad_to=1024, mean_over="padded_length", pixel_tokens="raw",
                   cache_dir=str(tmp_path / "cache"))
    full = PathfinderDataModule(data_dir=str(tmp_path / "pf"), **options)
    compact = PathfinderDataModule(data_dir=str(tmp_path / "pf"), compact_masked=True, **options)
    for data in (full, compact):
        data.prepare_data()
        data.setup("fit")
    want = next(iter(full.train_dataloader()))
    got = next(iter(compact.train_dataloader()))
    assert got["input_ids"].shape[1] < 200 < want["input_ids"].shape[1] == 1024  # ~50 lit pixels of 1024
    for row in range(want["input_ids"].shape[0]):
        lit = torch.nonzero(want["attention_mask"][row]).flatten()
        n = len(lit)
        assert torch.equal(got["position_ids"][row, :n], lit)
        assert torch.equal(got["input_ids"][row, :n], want["input_ids"][row, lit])
        assert int(got["attention_mask"][row].sum()) == n
