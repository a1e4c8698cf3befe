"""The shared padding-mask helper, and that the baselines do not load the YOSO kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from src.models.components.masks import as_bool_mask


def test_zero_one_masks_of_any_dtype_become_bool():
    want = torch.tensor([[True, False, True]])
    for dtype in (torch.bool, torch.int64, torch.float32):
        assert torch.equal(as_bool_mask(want.to(dtype), 1, 3, torch.device("cpu")), want)
    assert bool(as_bool_mask(None, 2, 4, torch.device("cpu")).all())


def test_scaled_or_misshapen_masks_are_errors():
    mask = torch.ones(2, 5)
    with pytest.raises(ValueError, match="only 0 .padding. and 1"):
        as_bool_mask(1 + mask / 10000, 2, 5, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"shape \[batch, seq_len\] = \[2, 4\]"):
        as_bool_mask(mask, 2, 4, torch.device("cpu"))


@pytest.mark.parametrize("module", ["performer", "linformer"])
def test_baselines_do_not_import_the_yoso_kernels(module):
    code = (f"import sys, src.models.components.{module}; "
            "print(sorted(m for m in sys.modules if m.startswith('src.kernels')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
