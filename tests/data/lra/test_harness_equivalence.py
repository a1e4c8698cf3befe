"""The LRA settings the default configs use equal what the paper's harness fed its model.

The harness (the YOSO authors' ``LRA/`` code on the arrays of the Nystromformer repository's
``LRA/datasets/*.py``, which call the LRA input pipelines of February 2021) is written out here
from its description, independently of the DataModules: token sequences, the fixed padded
length, ``mask = ids != 0`` and the pooled vector ``(LN output * mask).mean(dim=1)``. Each task's
DataModule is built from the options of its default config (``configs/lra/<task>.yaml``) on a
small fixture in the official layout.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from src.data.lra.image_datamodule import ImageDataModule
from src.data.lra.listops import get_vocab
from src.data.lra.listops_datamodule import ListOpsDataModule
from src.data.lra.pathfinder_datamodule import PathfinderDataModule
from src.data.lra.retrieval_datamodule import RetrievalDataModule
from src.data.lra.text_datamodule import TextDataModule
from src.models.components.attention import SoftmaxAttention
from src.models.components.encoder import TransformerEncoder
from src.models.lra_module import SequenceClassifier
from src.models.retrieval_module import RetrievalClassifier
from tests.data.lra.fixtures import AAN_ROWS, write_aan

ROOT = Path(__file__).resolve().parents[3]
# The harness's fixed array length per task (2000 + 48, 1000 + 24, 4000 + 96, 1024, 1024).
HARNESS_LENGTH = {"listops": 2048, "text": 1024, "retrieval": 4096, "image": 1024, "pathfinder": 1024}


def config_data_options(task: str) -> dict:
    """The data options of the task's default config, less where the data lives."""
    options = yaml.safe_load((ROOT / "configs" / "lra" / f"{task}.yaml").read_text())["data"]["init_args"]
    return {k: v for k, v in options.items() if k not in ("data_dir", "num_workers")}


def batch_of(data, split: str) -> dict[str, torch.Tensor]:
    """Every example of ``split`` in one batch, in the dataset's order (no shuffling)."""
    dataset = data.dataset(split)
    return data.collator(split)([dataset[i] for i in range(len(dataset))])


def harness_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The harness: the last LayerNorm's output times the mask, averaged over the padded length."""
    return (hidden * mask[:, :, None].float()).mean(dim=1)


class FixedOutput(nn.Module):
    """Stands in for the encoder: returns given hidden states (the pooling is under test)."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert input_ids.shape == self.hidden.shape[:2]
        return self.hidden


def check_pooling(data, batch: dict[str, torch.Tensor], length: int) -> None:
    """The classifier the config links to this DataModule pools as the harness did."""
    assert data.pooling == "mean_padded" and data.encoder_length == length
    model_class = RetrievalClassifier if isinstance(data, RetrievalDataModule) else SequenceClassifier
    encoder = TransformerEncoder(data.vocab_size, data.encoder_length, SoftmaxAttention, dim=8, depth=1,
                                 num_heads=1, head_dim=8, ffn_dim=8)
    model = model_class(encoder, num_classes=data.num_classes, pooling=data.pooling)
    hidden = torch.randn(*batch["input_ids"].shape, 8, generator=torch.Generator().manual_seed(0))
    model.encoder = FixedOutput(hidden)
    if isinstance(model, RetrievalClassifier):
        pooled = model.embed(batch["input_ids"], batch["attention_mask"])
    else:
        model.head = nn.Identity()
        pooled = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(pooled, harness_pooled(hidden, batch["attention_mask"]), rtol=1e-6, atol=1e-7)


def check_layout(batch: dict[str, torch.Tensor], length: int, field: str = "input_ids") -> None:
    """Arrays of the fixed length, and the mask is exactly ``ids != 0``."""
    ids, mask = batch[field], batch[field.replace("input_ids", "attention_mask")]
    assert ids.shape[1] == length
    assert torch.equal(mask, ids != 0)


# -- ListOps --------------------------------------------------------------------------------------

LISTOPS_ROWS = [
    ("( ( ( [MAX 2 ) 9 ) ] )", 9),
    ("( ( ( ( [SM 3 ) 4 ) ( ( ( [MIN 7 ) 1 ) ] ) ) ] )", 8),
    ("( ( ( [MED 1 ) 5 ) ( ( ( [MAX 0 ) 8 ) ] ) ] )", 5),
    ("7", 7),
]


def harness_listops_tokens(source: str, fixed_2021: bool) -> list[str]:
    """The LRA tokenizer splits on every non-alphanumeric character; the 2021 fix first renames ``]``."""
    if fixed_2021:
        source = source.replace("]", "X")
    return re.findall(r"[A-Za-z0-9]+", source)


@pytest.mark.parametrize("tokenization", ["lra", "lra_2021"])
def test_listops_tokens_padding_and_pooling(tmp_path, tokenization):
    folder = tmp_path / "listops"
    folder.mkdir()
    for split in ("train", "val", "test"):
        lines = ["Source\tTarget"] + [f"{source}\t{label}" for source, label in LISTOPS_ROWS]
        (folder / f"basic_{split}.tsv").write_text("\n".join(lines) + "\n")
    options = {**config_data_options("listops"), "tokenization": tokenization}
    assert options["tokenization"] == tokenization and options["max_length"] == 2000
    data = ListOpsDataModule(data_dir=str(folder), cache_dir=str(tmp_path / "cache"),
                             generate_if_missing=False, **options)
    data.prepare_data()
    data.setup("test")
    batch = batch_of(data, "test")
    check_layout(batch, HARNESS_LENGTH["listops"])
    vocab = get_vocab(tokenization)
    for row, (source, label) in enumerate(LISTOPS_ROWS):
        ids = batch["input_ids"][row]
        tokens = [vocab[i - 1] for i in ids[ids != 0].tolist()]
        assert tokens == harness_listops_tokens(source, fixed_2021=tokenization != "lra")
        assert batch["labels"][row] == label
    check_pooling(data, batch, HARNESS_LENGTH["listops"])


def test_listops_default_config_is_the_2020_pipeline():
    assert config_data_options("listops")["tokenization"] == "lra"


# -- Text -----------------------------------------------------------------------------------------

def write_reviews(root: Path) -> dict[str, list[tuple[bytes, int]]]:
    """An aclImdb folder whose reviews include ones longer than 1000 bytes; returns them by part."""
    rng = np.random.default_rng(1)
    written: dict[str, list[tuple[bytes, int]]] = {"train": [], "test": []}
    for part, count in (("train", 6), ("test", 4)):
        for label, name in ((0, "neg"), (1, "pos")):
            (root / "aclImdb" / part / name).mkdir(parents=True)
            for i in range(count // 2):
                size = int(rng.integers(1, 1600))
                review = bytes(rng.integers(1, 256, size, dtype=np.uint8))
                (root / "aclImdb" / part / name / f"{i}_5.txt").write_bytes(review)
                written[part].append((review, label))
    return written


def test_text_is_cut_at_1000_bytes_padded_to_1024_trains_on_all_and_validates_on_test(tmp_path):
    written = write_reviews(tmp_path)
    options = config_data_options("text")
    data = TextDataModule(data_dir=str(tmp_path / "aclImdb"), cache_dir=str(tmp_path / "cache"), **options)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    for split, part in (("train", "train"), ("val", "test"), ("test", "test")):
        batch = batch_of(data, split)
        check_layout(batch, HARNESS_LENGTH["text"])
        got = sorted((bytes((ids[ids != 0] - 1).tolist()), int(label))
                     for ids, label in zip(batch["input_ids"], batch["labels"]))
        assert got == sorted((review[:1000], label) for review, label in written[part])
        check_pooling(data, batch, HARNESS_LENGTH["text"])


# -- Retrieval ------------------------------------------------------------------------------------

def test_retrieval_documents_are_cut_at_4000_bytes_and_padded_to_4096(tmp_path):
    folder = write_aan(tmp_path)
    long_text = bytes(b for b in range(1, 256) if b not in b"\t\n\r") * 20  # 5040 bytes: cut at 4000
    train = folder / "new_aan_pairs.train.tsv"
    train.write_bytes(train.read_bytes() + b"1.0\tL1\tL2\t" + long_text + b"\tshort\n")
    data = RetrievalDataModule(data_dir=str(folder), cache_dir=str(tmp_path / "cache"),
                               **config_data_options("retrieval"))
    data.prepare_data()
    data.setup("fit")
    batch = batch_of(data, "train")
    rows = AAN_ROWS["train"] + [("1.0", "L1", "L2", long_text, b"short")]
    for field, column in (("input_ids", 3), ("input_ids_1", 4)):
        check_layout(batch, HARNESS_LENGTH["retrieval"], field)
        got = [bytes((ids[ids != 0] - 1).tolist()) for ids in batch[field]]
        assert got == [row[column][:4000] for row in rows]
    assert batch["labels"].tolist() == [int(float(row[0])) for row in rows]
    check_pooling(data, batch, HARNESS_LENGTH["retrieval"])


# -- Image ----------------------------------------------------------------------------------------

def tf_grey_float(rgb: np.ndarray) -> np.ndarray:
    """``tf.image.rgb_to_grayscale`` on uint8 before its final cast, in float64: channels / 255,
    weighted (0.2989, 0.5870, 0.1140), times 255.5 (``convert_image_dtype``'s scale to uint8)."""
    red, green, blue = (rgb[:, i * 1024 : (i + 1) * 1024].astype(np.float64) / 255 for i in range(3))
    return (0.2989 * red + 0.5870 * green + 0.1140 * blue) * 255.5


def test_image_tokens_are_tf_grey_values_with_black_masked(tmp_path):
    rng = np.random.default_rng(2)
    arrays = {}
    for part, count in (("train", 20), ("test", 6)):
        rgb = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        rgb[:, :512] = 0  # the first half of each red channel ...
        rgb[:, 1024:1536] = 0
        rgb[:, 2048:2560] = 0  # ... green and blue: black pixels, which the harness masks
        arrays[f"{part}_data"], arrays[f"{part}_labels"] = rgb, rng.integers(0, 10, count)
    np.savez(tmp_path / "cifar.npz", **arrays)
    data = ImageDataModule(data_dir=str(tmp_path / "cifar.npz"), cache_dir=str(tmp_path / "cache"),
                           **config_data_options("image"))
    data.prepare_data()
    data.setup("test")
    batch = batch_of(data, "test")
    check_layout(batch, HARNESS_LENGTH["image"])
    exact = tf_grey_float(arrays["test_data"])
    expected = np.floor(exact)
    ties = np.abs(exact - np.round(exact)) < 1e-3  # float32 rounding may land either side of these
    ids = batch["input_ids"].numpy()
    assert np.array_equal(ids[~ties], expected[~ties])
    assert np.all(np.abs(ids[ties] - expected[ties]) <= 1)
    assert (ids[:, :512] == 0).all() and not batch["attention_mask"][:, :512].any()
    assert batch["labels"].tolist() == arrays["test_labels"].tolist()
    check_pooling(data, batch, HARNESS_LENGTH["image"])


def test_tf_rounding_truncates_where_nearest_rounds_up():
    from src.data.lra.cifar10 import to_grey

    rgb = np.zeros((1, 3072), dtype=np.uint8)
    rgb[0, :1024] = 200  # red only: 0.2989 * 200 = 59.78 -> nearest 60; tf: 59.78 / 255 * 255.5 -> 59
    assert to_grey(rgb, "nearest")[0, 0] == 60
    assert to_grey(rgb, "tensorflow")[0, 0] == 59


# -- Pathfinder -----------------------------------------------------------------------------------

def test_pathfinder_generated_in_place_raw_pixels_with_black_masked(tmp_path, caplog):
    options = {**config_data_options("pathfinder"), "difficulty": "curv_baseline", "generate_num": 30,
               "generate_workers": 1, "batch_size": 4}
    data = PathfinderDataModule(data_dir=str(tmp_path / "pf"), cache_dir=str(tmp_path / "cache"), **options)
    with caplog.at_level("INFO"):
        data.prepare_data()
    assert "generating 30 images" in caplog.text
    pngs = {}
    for line in (tmp_path / "pf" / "curv_baseline" / "metadata" / "0.npy").read_text().splitlines():
        folder, name, _, label = line.split()[:4]
        pixels = np.asarray(Image.open(tmp_path / "pf" / "curv_baseline" / folder / name)).reshape(-1)
        pngs[pixels.tobytes()] = int(label)
    assert len(pngs) == 30
    data.setup("fit")
    data.setup("test")
    seen = 0
    for split in ("train", "val", "test"):
        batch = batch_of(data, split)
        check_layout(batch, HARNESS_LENGTH["pathfinder"])
        for ids, label in zip(batch["input_ids"], batch["labels"]):
            assert pngs[ids.numpy().astype(np.uint8).tobytes()] == label  # the raw pixel is the token
            seen += 1
        check_pooling(data, batch, HARNESS_LENGTH["pathfinder"])
    assert seen == 30


def test_pathfinder_generated_with_other_options_is_not_reused(tmp_path):
    def module(**generate):
        return PathfinderDataModule(data_dir=str(tmp_path / "pf"), cache_dir=str(tmp_path / "cache"),
                                    difficulty="curv_baseline", generate_workers=1, **generate)

    module(generate_num=12).prepare_data()
    with pytest.raises(ValueError, match="generated with other options .*num: folder has 12, config asks 14"):
        module(generate_num=14).prepare_data()
    module(generate_num=12).prepare_data()  # the same options: used as it is


def test_pathfinder_without_generation_says_where_the_release_is(tmp_path):
    data = PathfinderDataModule(data_dir=str(tmp_path / "none"), generate_if_missing=False)
    with pytest.raises(FileNotFoundError, match="lra_release"):
        data.prepare_data()


# -- options that do not fit ----------------------------------------------------------------------

def test_padded_mean_needs_a_fixed_length_and_pad_to_must_hold_max_length(tmp_path):
    with pytest.raises(ValueError, match="set data.init_args.pad_to"):
        TextDataModule(data_dir=str(tmp_path), max_length=100, mean_over="padded_length")
    with pytest.raises(ValueError, match="pad_to=64 is shorter than max_length=100"):
        TextDataModule(data_dir=str(tmp_path), max_length=100, pad_to=64)
    with pytest.raises(ValueError, match="pixel_tokens must be one of"):
        ImageDataModule(data_dir=str(tmp_path), pixel_tokens="plus_one")


def test_shifted_pixels_attend_every_pixel(tmp_path):
    rgb = np.zeros((20, 3072), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", train_data=rgb, train_labels=np.zeros(20, int), test_data=rgb,
             test_labels=np.zeros(20, int))
    data = ImageDataModule(data_dir=str(tmp_path / "c.npz"), cache_dir=str(tmp_path / "cache"),
                           pixel_tokens="shifted")
    data.prepare_data()
    data.setup("test")
    batch = batch_of(data, "test")
    assert (batch["input_ids"] == 1).all() and batch["attention_mask"].all()
    assert (data.vocab_size, data.pooling) == (257, "mean")


# -- the schedule ---------------------------------------------------------------------------------

def configured(total_steps: int, warmup: int, **options):
    encoder = TransformerEncoder(12, 16, SoftmaxAttention, dim=8, depth=1, num_heads=1, head_dim=8, ffn_dim=8)
    model = SequenceClassifier(encoder, num_classes=3, warmup_steps=warmup, **options)
    model._trainer = SimpleNamespace(estimated_stepping_batches=total_steps)
    config = model.configure_optimizers()
    return config["optimizer"], config["lr_scheduler"]["scheduler"]


def lr_and_beta1(optimizer, scheduler, steps: int) -> list[tuple[float, float]]:
    seen = []
    for _ in range(steps):
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["betas"][0]))
        optimizer.step()
        scheduler.step()
    return seen


def test_onecycle_option_is_torchs_one_cycle_with_the_harness_settings():
    base = yaml.safe_load((ROOT / "configs" / "lra" / "_base.yaml").read_text())["model"]["init_args"]
    keys = ("optimizer", "learning_rate", "weight_decay", "adam_eps", "schedule")
    options = {key: base[key] for key in keys}
    assert options == {"optimizer": "adamw", "learning_rate": 1e-4, "weight_decay": 0.0, "adam_eps": 1e-6,
                       "schedule": "onecycle"}
    optimizer, scheduler = configured(50, 10, **options)
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert (group["eps"], group["weight_decay"], group["betas"][1]) == (1e-6, 0.0, 0.999)
    reference_optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-4, eps=1e-6, weight_decay=0)
    reference = torch.optim.lr_scheduler.OneCycleLR(reference_optimizer, max_lr=1e-4, total_steps=50,
                                                    pct_start=10 / 50, anneal_strategy="linear")
    ours, theirs = lr_and_beta1(optimizer, scheduler, 50), lr_and_beta1(reference_optimizer, reference, 50)
    assert ours == theirs
    # and in closed form: lr/25 at step 0, lr at the warm-up's last step (9), lr/25e4 at the last
    # step (49), linear in between; beta1 0.95 -> 0.85 -> 0.95 the other way round
    assert ours[0] == pytest.approx((1e-4 / 25, 0.95))
    assert ours[9] == pytest.approx((1e-4, 0.85))
    assert ours[29] == pytest.approx((1e-4 + (1e-4 / 25e4 - 1e-4) * 20 / 40, 0.85 + 0.1 * 20 / 40))
    assert ours[49] == pytest.approx((1e-4 / 25e4, 0.95))


def test_a_resumed_one_cycle_given_more_steps_continues_as_a_longer_run_would():
    from src.models.schedules import stretch

    optimizer, scheduler = configured(30, 5, optimizer="adamw", schedule="onecycle")
    lr_and_beta1(optimizer, scheduler, 20)
    stretch(scheduler, 60)
    long_optimizer, long_scheduler = configured(60, 5, optimizer="adamw", schedule="onecycle")
    lr_and_beta1(long_optimizer, long_scheduler, 20)
    expected = np.array(lr_and_beta1(long_optimizer, long_scheduler, 40))
    np.testing.assert_allclose(np.array(lr_and_beta1(optimizer, scheduler, 40)), expected, rtol=1e-12)


@pytest.mark.parametrize("total", [1, 2, 3, 7])
@pytest.mark.parametrize("warmup", [0, 1, 2, 7, 10])
def test_one_cycle_steps_to_the_end_for_any_warm_up(total, warmup):
    """Lightning steps the scheduler after every optimizer step, the last one included."""
    optimizer, scheduler = configured(total, warmup, optimizer="adamw", schedule="onecycle")
    rates = [rate for rate, _ in lr_and_beta1(optimizer, scheduler, total)]
    assert all(0 < rate <= 1e-4 * (1 + 1e-9) for rate in rates)
    if total > 1:
        assert rates[-1] < max(rates)  # it anneals


def test_resuming_across_schedule_kinds_is_refused_with_the_fix():
    """A warm-up-then-decay state loaded into OneCycleLR (or back) would silently corrupt the rates."""
    _, linear = configured(20, 5, schedule="linear")
    _, cycle = configured(20, 5, schedule="onecycle")
    encoder = TransformerEncoder(12, 16, SoftmaxAttention, dim=8, depth=1, num_heads=1, head_dim=8, ffn_dim=8)
    onecycle_model = SequenceClassifier(encoder, num_classes=3, schedule="onecycle")
    with pytest.raises(ValueError, match="warm-up-then-decay .* configs/lra/variants/warmup_linear.yaml"):
        onecycle_model.on_load_checkpoint({"lr_schedulers": [linear.state_dict()]})
    linear_model = SequenceClassifier(onecycle_model.encoder, num_classes=3, schedule="linear")
    with pytest.raises(ValueError, match="OneCycleLR.*--model.init_args.schedule onecycle"):
        linear_model.on_load_checkpoint({"lr_schedulers": [cycle.state_dict()]})
    onecycle_model.on_load_checkpoint({"lr_schedulers": [cycle.state_dict()]})  # the same kind loads
    assert onecycle_model._saved_schedule_steps == 20
