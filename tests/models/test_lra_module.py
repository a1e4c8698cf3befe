"""The task base and the LRA classifier: pooling, loss, metrics, init_from, argument checks."""

from __future__ import annotations

from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.data import DataLoader

from src.models.base_module import load_encoder_weights
from src.models.components.attention import SoftmaxAttention, YOSOAttention
from src.models.components.encoder import TransformerEncoder
from src.models.components.heads import masked_mean
from src.models.lra_module import SequenceClassifier


def encoder(**overrides) -> TransformerEncoder:
    options = dict(vocab_size=11, max_length=40, dim=16, depth=1, num_heads=2, head_dim=8, ffn_dim=32,
                   dropout=0.0, attention=SoftmaxAttention)
    options.update(overrides)
    return TransformerEncoder(**options)


def toy_batches(count: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(1, 11, (8, 12), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones(8, 12, dtype=torch.bool),
                        "labels": (ids[:, 0] > 5).long()})
    return batches


def test_masked_mean_ignores_padding():
    hidden = torch.arange(12.0).view(1, 4, 3)
    mask = torch.tensor([[True, True, False, False]])
    torch.testing.assert_close(masked_mean(hidden, mask), hidden[:, :2].mean(1))
    assert torch.equal(masked_mean(hidden, torch.zeros(1, 4, dtype=torch.bool)), torch.zeros(1, 3))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_logits_do_not_depend_on_padding_length(pooling):
    model = SequenceClassifier(encoder(), num_classes=5, pooling=pooling).eval()
    ids = torch.randint(1, 11, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.bool)
    padded_ids = torch.cat([ids, torch.zeros(2, 7, dtype=ids.dtype)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 7, dtype=torch.bool)], 1)
    logits = model(ids, mask)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(model(padded_ids, padded_mask), logits, rtol=1e-5, atol=1e-5)


def test_cls_pooling_reads_position_zero_only():
    model = SequenceClassifier(encoder(depth=0), num_classes=3, pooling="cls").eval()
    ids = torch.randint(1, 11, (2, 6))
    hidden = model.encoder(ids, None)
    torch.testing.assert_close(model(ids, torch.ones_like(ids, dtype=torch.bool)), model.head(hidden[:, 0]))


def test_model_step_updates_stage_metrics_with_the_right_values():
    model = SequenceClassifier(encoder(attention=partial(YOSOAttention, num_hashes=4, hash_code_len=4)),
                               num_classes=3)
    batch = {"input_ids": torch.randint(1, 11, (4, 12)),
             "attention_mask": torch.ones(4, 12, dtype=torch.bool),
             "labels": torch.tensor([0, 1, 2, 1])}
    model.log = lambda *a, **k: None  # outside a Trainer
    model.log_dict = lambda *a, **k: None
    torch.manual_seed(0)
    loss = model.model_step(batch, "val")
    torch.manual_seed(0)
    logits = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, batch["labels"]))
    expected_acc = (logits.argmax(1) == batch["labels"]).float().mean()
    torch.testing.assert_close(model.metrics["val_metrics"]["acc"].compute(), expected_acc)
    assert model.metrics["train_metrics"]["acc"].update_count == 0  # stages never mix
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters())


def test_fit_logs_best_validation_accuracy_as_the_hparams_metric(tmp_path):
    pl.seed_everything(0)
    model = SequenceClassifier(encoder(), num_classes=2, learning_rate=1e-2, warmup_steps=0)
    batches = toy_batches()
    logger = TensorBoardLogger(tmp_path, default_hp_metric=False)
    trainer = pl.Trainer(max_steps=8, val_check_interval=4, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu",
                         log_every_n_steps=1)
    identity = lambda x: x[0]  # noqa: E731 - batches are prebuilt dicts
    trainer.fit(model, DataLoader(batches, batch_size=1, collate_fn=identity),
                DataLoader(batches, batch_size=1, collate_fn=identity))
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    best = [e.value for e in events.Scalars("val/acc_best")]
    accs = [e.value for e in events.Scalars("val/acc")]
    assert best == [max(accs[: i + 1]) for i in range(len(accs))]
    assert "hp_metric" not in events.Tags()["scalars"]
    experiment = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/experiment"])
    assert [m.name.tag for m in experiment.experiment.metric_infos] == ["val/acc_best"]


def test_init_from_loads_encoder_weights_and_names_mismatches(tmp_path):
    source = SequenceClassifier(encoder(), num_classes=4)
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = encoder()
    load_encoder_weights(target, path)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(ValueError, match=r"shape mismatch: token_embedding.weight: checkpoint \(11, 16\)"):
        load_encoder_weights(encoder(vocab_size=12), path)
    with pytest.raises(ValueError, match="missing in checkpoint: layers.1"):
        load_encoder_weights(encoder(depth=2), path)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_encoder_weights(target, tmp_path / "junk.ckpt")
    with pytest.raises(FileNotFoundError, match="init_from"):
        SequenceClassifier(encoder(), num_classes=4, init_from=str(tmp_path / "absent.ckpt"))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifier(encoder(), pooling="max")
    with pytest.raises(ValueError, match="optimizer"):
        SequenceClassifier(encoder(), optimizer="sgd")
    with pytest.raises(ValueError, match="num_classes"):
        SequenceClassifier(encoder(), num_classes=1)
