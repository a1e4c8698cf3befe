"""Every task DataModule: its config keys (through ``**kwargs``) are exactly its hyperparameters.

Subclasses list only their own options and pass the rest to ``TokenDataModule``; the config
(jsonargparse follows ``**kwargs``) and the checkpoint's hyperparameters must still hold every
key, and a DataModule rebuilt from those hyperparameters must be the same one.
"""

from __future__ import annotations

from typing import Any

import pytest
from jsonargparse import ArgumentParser

from src.data.base_datamodule import TokenDataModule
from src.data.glue.glue_datamodule import GlueDataModule
from src.data.lra.image_datamodule import ImageDataModule
from src.data.lra.listops_datamodule import ListOpsDataModule
from src.data.lra.pathfinder_datamodule import PathfinderDataModule
from src.data.lra.retrieval_datamodule import RetrievalDataModule
from src.data.lra.text_datamodule import TextDataModule
from src.data.mlm.mlm_datamodule import MLMDataModule
from src.data.tokenizer import train_tokenizer

BASE_KEYS = {"max_length", "batch_size", "num_workers", "cache_dir"}
FIXED = {GlueDataModule: {"prepend_cls"}, MLMDataModule: {"data_dir", "prepend_cls"}}


def config_keys(cls: type[TokenDataModule]) -> list[str]:
    """The ``init_args`` keys LightningCLI offers for ``cls``."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    return list(parser.get_defaults()["data"].keys())


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> str:
    texts = ["a few words to learn from"] * 20
    tok = train_tokenizer(texts, kind="wordpiece", vocab_size=60, min_frequency=1)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.tokenizer.save(str(path))
    return str(path)


@pytest.mark.parametrize("cls", [ListOpsDataModule, TextDataModule, RetrievalDataModule, ImageDataModule,
                                 PathfinderDataModule, GlueDataModule, MLMDataModule])
def test_config_keys_are_the_hyperparameters_and_rebuild_the_datamodule(cls, tokenizer_file):
    keys = config_keys(cls)
    assert set(keys) >= BASE_KEYS
    assert not FIXED.get(cls, set()) & set(keys)  # set by the task itself: no option
    given: dict[str, Any] = {"batch_size": 5, "num_workers": 1, "cache_dir": "elsewhere", "max_length": 64}
    if cls is GlueDataModule:
        given.update(task="rte", tokenizer=tokenizer_file)
    data = cls(**given)
    hparams = dict(data.hparams)
    assert sorted(hparams) == sorted(keys)
    assert {k: hparams[k] for k in given} == given
    assert (data.batch_size, data.num_workers, data.max_length) == (5, 1, 64)
    assert str(data.cache_dir) == "elsewhere"
    assert dict(cls(**hparams).hparams) == hparams  # what a checkpoint's hyperparameters rebuild
