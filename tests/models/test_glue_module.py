"""GLUE classifier: each task's metrics against direct computations, heads, leaderboard files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from src.data.glue.tasks import TASKS, get_task
from src.models.components.attention import SoftmaxAttention
from src.models.components.encoder import TransformerEncoder
from src.models.glue_module import GlueClassifier, write_leaderboard

TARGET = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1])
PRED = np.array([1, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1])
SCORE_TARGET = np.array([0.0, 1.2, 2.5, 3.1, 4.8, 5.0, 2.0, 3.9])
SCORE_PRED = np.array([0.4, 0.9, 3.0, 2.8, 4.1, 4.4, 2.6, 3.3])


def make(task: str) -> GlueClassifier:
    encoder = TransformerEncoder(50, 16, SoftmaxAttention, dim=8, depth=1, num_heads=2, head_dim=4,
                                 ffn_dim=16, num_segments=2, norm_first=False, padding_id=0)
    return GlueClassifier(encoder, task=task, num_classes=get_task(task).num_outputs, warmup_steps=0)


def by_hand(task: str) -> dict[str, float]:
    """The official metrics written out: counts for MCC/F1, correlation of values and of ranks."""
    tp = int(((PRED == 1) & (TARGET == 1)).sum())
    tn = int(((PRED == 0) & (TARGET == 0)).sum())
    fp = int(((PRED == 1) & (TARGET == 0)).sum())
    fn = int(((PRED == 0) & (TARGET == 1)).sum())
    acc = (tp + tn) / len(TARGET)
    f1 = 2 * tp / (2 * tp + fp + fn)
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    pearson = float(np.corrcoef(SCORE_PRED, SCORE_TARGET)[0, 1])
    ranks = [np.argsort(np.argsort(x)) for x in (SCORE_PRED, SCORE_TARGET)]
    spearman = float(np.corrcoef(*ranks)[0, 1])
    table = {
        "cola": {"mcc": mcc, "score": mcc},
        "mrpc": {"f1": f1, "acc": acc, "score": (f1 + acc) / 2},
        "qqp": {"f1": f1, "acc": acc, "score": (f1 + acc) / 2},
        "stsb": {"pearson": pearson, "spearman": spearman, "score": (pearson + spearman) / 2},
    }
    return table.get(task, {"acc": acc, "score": acc})


@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_task_metric_equals_a_direct_computation(task):
    model = make(task)
    metrics = model.metrics["val_metrics"]
    if task == "stsb":
        preds, target = (torch.tensor(x, dtype=torch.float32) for x in (SCORE_PRED, SCORE_TARGET))
    else:
        preds, target = torch.tensor(PRED), torch.tensor(TARGET)
    for half in (slice(0, 5), slice(5, None)):  # two batches: epoch-level accumulation
        metrics.update(preds[half], target[half])
    values = {k.removeprefix("val/"): float(v) for k, v in metrics.compute().items()}
    expected = by_hand(task)
    assert values == pytest.approx(expected, abs=1e-5)
    assert model.monitor == ("val/score", "max")


def test_mnli_logs_matched_and_mismatched_as_separate_stages():
    model = make("mnli")
    assert {"val_mm_metrics", "test_mm_metrics", "val_mm_loss"} <= set(model.metrics) | set(model.losses)
    mismatched = model.metrics["val_mm_metrics"]
    mismatched.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    assert {k: round(float(v), 4) for k, v in mismatched.compute().items()} == {
        "val_mm/acc": 0.6667, "val_mm/score": 0.6667}
    assert "val_mm_metrics" not in make("rte").metrics


def test_heads_losses_and_predictions():
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(1, 50, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.bool),
             "segment_ids": torch.tensor([[0] * 4 + [1] * 3] * 4)}
    stsb = make("stsb").eval()  # no dropout: two forwards must agree
    scores = torch.tensor([0.5, 1.0, 4.0, 2.0])
    loss, preds, _ = stsb.step_outputs({**batch, "labels": scores})
    outputs = stsb(batch["input_ids"], batch["attention_mask"], batch["segment_ids"])
    assert outputs.shape == (4, 1) and torch.allclose(preds, outputs[:, 0])
    assert torch.allclose(loss, ((outputs[:, 0] - scores) ** 2).mean())
    mnli = make("mnli").eval()
    labels = torch.tensor([0, 2, 1, 1])
    loss, preds, _ = mnli.step_outputs({**batch, "labels": labels})
    logits = mnli(batch["input_ids"], batch["attention_mask"], batch["segment_ids"])
    assert torch.equal(preds, logits.argmax(-1))
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="MNLI has 3 outputs, got num_classes=2"):
        GlueClassifier(mnli.encoder, task="mnli", num_classes=2)
    with pytest.raises(ValueError, match="needs a task"):
        GlueClassifier(mnli.encoder)


def test_leaderboard_file_format(tmp_path):
    mnli = get_task("mnli")
    path = write_leaderboard(tmp_path / "MNLI-m.tsv", mnli, np.array([0, 1, 2]), np.array([2, 0, 1]))
    assert path.read_text() == "index\tprediction\n0\tneutral\n1\tcontradiction\n2\tentailment\n"
    stsb = get_task("stsb")
    path = write_leaderboard(tmp_path / "STS-B.tsv", stsb, np.array([0, 1]), np.array([3.25, 0.5]))
    assert path.read_text().splitlines() == ["index\tprediction", "0\t3.250", "1\t0.500"]
