"""The approximation view: tags, images and histograms land in TensorBoard, training is untouched."""

from __future__ import annotations

import functools
import io
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, Dataset

from src.callbacks.approximation import ApproximationMonitor, measure_approximation
from src.kernels import YOSOOptions
from src.models.components.attention import SoftmaxAttention, YOSOAttention
from src.models.components.encoder import TransformerEncoder

VOCAB, LENGTH = 12, 32
SCALARS = ("rel_err", "grad_rel_err", "empty_rows", "colliding_keys")


class RandomTokens(Dataset):
    """Dict examples with some right padding, as the task DataModules yield them."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (size, LENGTH), generator=generator)
        lengths = torch.randint(LENGTH // 2, LENGTH + 1, (size,), generator=generator)
        self.mask = torch.arange(LENGTH) < lengths[:, None]
        self.ids[~self.mask] = 0
        self.labels = torch.randint(0, 3, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "attention_mask": self.mask[index],
                "labels": self.labels[index]}


class TinyClassifier(L.LightningModule):
    """Encoder + masked mean pooling + linear head; stands in for any task module."""

    def __init__(self, attention: str = "yoso") -> None:
        super().__init__()
        factory = (functools.partial(YOSOAttention, num_hashes=8, hash_code_len=4)
                   if attention == "yoso" else SoftmaxAttention)
        self.encoder = TransformerEncoder(vocab_size=VOCAB, max_length=LENGTH, attention=factory,
                                          dim=16, depth=2, num_heads=2, head_dim=8, ffn_dim=32)
        self.head = nn.Linear(16, 3)

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden = self.encoder(batch["input_ids"], mask)
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return nn.functional.cross_entropy(self.head(pooled), batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.step(batch)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self.step(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def fit(tmp_path: Path, callbacks: list, attention: str = "yoso", max_steps: int = 6,
        accumulate: int = 1) -> EventAccumulator:
    """Train the tiny model (shuffled data, dropout, YOSO hashing: all draw from torch's RNG)."""
    L.seed_everything(7)
    model = TinyClassifier(attention)
    trainer = L.Trainer(
        max_steps=max_steps, logger=TensorBoardLogger(tmp_path, name="run"), enable_checkpointing=False,
        accelerator="cpu", callbacks=callbacks, log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accumulate_grad_batches=accumulate,
    )
    train = DataLoader(RandomTokens(24, seed=1), batch_size=8, shuffle=True)  # 3 batches: epochs reshuffle
    trainer.fit(model, train, DataLoader(RandomTokens(8, seed=2), batch_size=8))
    everything = {"images": 0, "histograms": 0, "scalars": 0}
    events = EventAccumulator(trainer.logger.log_dir, size_guidance=everything)
    return events.Reload()


def test_writes_scalars_histograms_and_images(tmp_path):
    monitor = ApproximationMonitor(every_n_steps=2, num_examples=4, crop=16)
    events = fit(tmp_path, [monitor])
    tags = events.Tags()
    for layer in (0, 1):
        for name in SCALARS:
            values = events.Scalars(f"approx/layer{layer}/{name}")
            assert [e.step for e in values] == [1, 2, 4, 6]  # the first step, then every 2
            assert all(e.value == e.value and e.value >= 0 for e in values)  # finite, no NaN
        assert f"approx/layer{layer}/qk_angle" in tags["histograms"]
        histograms = events.Histograms(f"approx/layer{layer}/qk_angle")
        assert 0 <= histograms[0].histogram_value.min <= histograms[0].histogram_value.max <= 180
        images = events.Images(f"approx/layer{layer}/expectation_vs_sampled")
        assert [e.step for e in images] == [1, 2, 4, 6]
        picture = Image.open(io.BytesIO(images[0].encoded_image_string))
        # 16 tokens enlarged 16x: expectation | one-token separator | frequencies.
        assert picture.size == ((2 * 16 + 1) * 16, 16 * 16)
    assert monitor.measurements == 4 and monitor.seconds > 0


def test_a_run_shorter_than_the_interval_is_measured_at_its_first_step(tmp_path):
    monitor = ApproximationMonitor()  # every 200 steps, the config's default
    events = fit(tmp_path, [monitor], max_steps=3)
    for layer in (0, 1):
        values = events.Scalars(f"approx/layer{layer}/rel_err")
        assert [e.step for e in values] == [1]
        assert 0 < values[0].value < 10  # a real measurement, not a placeholder
        assert [e.step for e in events.Images(f"approx/layer{layer}/expectation_vs_sampled")] == [1]
    assert monitor.measurements == 1


def test_with_gradient_accumulation_the_first_measurement_follows_the_first_optimizer_step(tmp_path):
    # Two batches per optimizer step: global_step is still 0 after the first batch.
    events = fit(tmp_path, [ApproximationMonitor(every_n_steps=200)], max_steps=2, accumulate=2)
    assert [e.step for e in events.Scalars("approx/layer0/rel_err")] == [1]


def test_a_resumed_fit_measures_its_own_first_step():
    monitor = ApproximationMonitor(every_n_steps=200)
    monitor.on_train_start(type("Resumed", (), {"global_step": 300})(), None)
    assert [s for s in range(298, 802) if monitor.due(s)] == [301, 400, 600, 800]


def test_softmax_model_is_a_noop_with_one_message(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="src.callbacks.approximation"):
        events = fit(tmp_path, [ApproximationMonitor(every_n_steps=2)], attention="softmax")
    messages = [r for r in caplog.records if r.name == "src.callbacks.approximation"]
    assert len(messages) == 1 and "no sampled YOSO" in messages[0].getMessage()
    tags = events.Tags()
    kinds = ("scalars", "images", "histograms")
    assert not [tag for kind in kinds for tag in tags[kind] if tag.startswith("approx/")]


def test_more_hashes_track_the_expectation_better():
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 2, LENGTH, 8) for _ in range(3))
    mask = RandomTokens(4, seed=3).mask

    def errors(num_hashes: int) -> tuple[float, float]:
        options = YOSOOptions(hash_code_len=4, num_hashes=num_hashes)
        stats = measure_approximation(q, k, v, mask, options, generator=torch.Generator().manual_seed(0))
        return stats.rel_err, stats.grad_rel_err

    (err_8, grad_8), (err_64, grad_64) = errors(8), errors(64)
    # The estimator's error falls like 1/sqrt(m): about 2.8x from m=8 to m=64.
    assert err_64 < 0.6 * err_8
    assert grad_64 < 0.6 * grad_8


def test_training_is_untouched(tmp_path):
    def losses(events: EventAccumulator) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars("train/loss")]

    without = losses(fit(tmp_path / "without", []))
    with_monitor = losses(fit(tmp_path / "with", [ApproximationMonitor(every_n_steps=1)], max_steps=6))
    assert len(without) == 6
    assert with_monitor == without


@pytest.mark.parametrize("name", ["every_n_steps", "num_examples", "crop"])
def test_rejects_non_positive_sizes(name):
    with pytest.raises(ValueError, match=name):
        ApproximationMonitor(**{name: 0})


def test_config_adds_the_callback_through_lightning_cli():
    from lightning.pytorch.cli import LightningCLI

    config = Path(__file__).parents[2] / "configs" / "callbacks" / "approximation.yaml"
    cli = LightningCLI(TinyClassifier, run=False, save_config_callback=None,
                       args=["--config", str(config), "--trainer.logger=false"])
    monitors = [c for c in cli.trainer.callbacks if isinstance(c, ApproximationMonitor)]
    assert len(monitors) == 1 and monitors[0].every_n_steps == 200 and monitors[0].crop == 128


@pytest.mark.slow
def test_composed_config_logs_the_view_through_train_py(tmp_path):
    """The real path: train.py + configs/callbacks/approximation.yaml on the quickstart's encoder
    (whose q, k, v are strided views of the projections)."""
    from tests.test_train import ROOT, run_train, tiny_overrides

    overlay = (ROOT / "configs" / "callbacks" / "approximation.yaml").read_text()
    assert "every_n_steps: 200" in overlay
    (tmp_path / "approx.yaml").write_text(overlay.replace("every_n_steps: 200", "every_n_steps: 2"))
    done = run_train("--config", "configs/quickstart.yaml", "--config", str(tmp_path / "approx.yaml"),
                     *tiny_overrides(tmp_path), "--run_test=false")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next((tmp_path / "logs").rglob("version_0"))
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("approx/layer1/rel_err")] == [1, 2, 4, 6]
    assert "approx/layer0/expectation_vs_sampled" in events.Tags()["images"]
