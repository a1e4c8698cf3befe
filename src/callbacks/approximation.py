"""TensorBoard view of how closely YOSO's sampled attention tracks its expectation.

Researchers choose ``m`` and ``tau`` by how well YOSO-m follows YOSO-E and what
that costs; the loss curve alone cannot tell them. After the first training step
of a fit (so that a short run shows it too) and every ``every_n_steps`` training
steps, this callback runs the encoder on one fixed validation batch, captures
each YOSO layer's ``q``, ``k``, ``v`` and mask with forward hooks, and compares,
on exactly those inputs, the sampled cumulation with its expectation:

- ``approx/layer<i>/rel_err``: ``||Y_m - Y_E|| / ||Y_E||`` of the unnormalised
  cumulation ``Y`` (the estimator the paper analyses; ``E[Y_m] = Y_E``);
- ``approx/layer<i>/grad_rel_err``: the same for the gradients w.r.t. ``q, k, v``
  given one fixed random upstream gradient, the layer's own backward
  (LSH or expectation) against the expectation surrogate backward of YOSO-E;
- ``approx/layer<i>/empty_rows``: fraction of real query rows that collide with
  no real key in any hash (their sampled output is 0);
- ``approx/layer<i>/colliding_keys``: real keys sharing a real query's bucket,
  averaged over queries and hashes;
- image ``approx/layer<i>/expectation_vs_sampled``: for the example with the
  most real tokens, head 0, its first ``crop`` real tokens:
  ``(1 - arccos(q.k)/pi)^tau`` (left) beside the hash-averaged collision
  indicator of the same hashes (right), one colour scale;
- histogram ``approx/layer<i>/qk_angle``: angles (degrees) of the real q-k pairs
  within the crop, all examples and heads.

The measurement never touches training: it runs between optimisation steps,
under ``no_grad`` (the gradient check differentiates detached copies), in eval
mode, and with every RNG stream (Python, NumPy, torch CPU and CUDA) restored
afterwards. Its own hashes come from a private generator reseeded at each
measurement, so differences between steps come from the model, not hash luck.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import move_data_to_device
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn

from src.kernels import YOSOOptions, pipeline
from src.kernels.backends import select_kernels
from src.kernels.reference import expectation_weights
from src.models.components.attention import YOSOAttention
from src.models.components.encoder import TransformerEncoder
from src.models.components.masks import as_bool_mask

log = logging.getLogger(__name__)

IMAGE_SIDE = 256
"""Small crops are enlarged by an integer factor to about this many pixels high."""


@dataclass
class ApproximationStats:
    """What one measurement of one layer found (see the module docstring for each field)."""

    rel_err: float
    grad_rel_err: float
    empty_rows: float
    colliding_keys: float
    angles: np.ndarray  # degrees, real q-k pairs of the crop
    expectation: torch.Tensor  # [c, c] collision probabilities, longest example, head 0
    frequency: torch.Tensor  # [c, c] hash-averaged collision indicator, same hashes as rel_err
    valid: torch.Tensor  # [c, c] bool, both tokens real


def measure_approximation(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    options: YOSOOptions,
    *,
    crop: int = 128,
    generator: torch.Generator | None = None,
) -> ApproximationStats:
    """Compare YOSO-m with YOSO-E on one layer's ``[B, H, n, d]`` self-attention inputs.

    Composes the kernels' own pipeline (``prepare -> hash_codes -> cumulate``), hashing
    once, so that the output error, the empty rows and the collision image all come
    from the same ``m`` hashes. Examples run one at a time, bounding YOSO-E's
    quadratic memory at ``H x n x n``.
    """
    batch, heads, length, _ = query.shape
    if key.shape[2] != length:
        raise ValueError("measure_approximation expects self-attention (queries and keys of one length)")
    device = query.device
    kernels = select_kernels(device, options.backend)
    expectation = options.replace(expectation=True, exact_gradient=False)
    mask = as_bool_mask(mask, batch, length, device)
    # The image shows the example with the most real tokens, its first `crop` real tokens.
    shown = int(mask.sum(1).argmax())
    sums = dict.fromkeys(("err", "ref", "grad_err", "grad_ref", "empty", "real", "colliding"), 0.0)
    angles: list[torch.Tensor] = []
    image = None
    for b in range(batch):
        inputs = [t[b : b + 1].detach().float().clone(memory_format=torch.contiguous_format).requires_grad_()
                  for t in (query, key, value)]
        with torch.enable_grad():
            prepared = pipeline.prepare(*inputs, mask[b : b + 1], mask[b : b + 1])
            codes = pipeline.hash_codes(prepared, options, kernels, generator)
            sampled = pipeline.cumulate(prepared, options, kernels, codes)
            expected = pipeline.cumulate(prepared, expectation)
            real = prepared.query_mask
            upstream = torch.randn(sampled.shape, device=device, generator=generator) * real.unsqueeze(-1)
            grads_sampled = torch.autograd.grad(sampled, inputs, upstream, retain_graph=True)
            grads_expected = torch.autograd.grad(expected, inputs, upstream)
        with torch.no_grad():
            sums["err"] += float((sampled - expected).square().sum())
            sums["ref"] += float(expected.square().sum())
            for g_s, g_e in zip(grads_sampled, grads_expected):
                sums["grad_err"] += float((g_s - g_e).square().sum())
                sums["grad_ref"] += float(g_e.square().sum())
            counts = pipeline.collision_counts(prepared, codes, options, kernels)
            sums["empty"] += float(((counts == 0) & real).sum())
            sums["real"] += float(real.sum())
            sums["colliding"] += float(counts[real].sum())
            angles.append(_crop_angles(prepared, crop))
            if b == shown:
                image = _collision_image(prepared, codes, options.hash_code_len, crop)
    return ApproximationStats(
        rel_err=_ratio(sums["err"], sums["ref"]),
        grad_rel_err=_ratio(sums["grad_err"], sums["grad_ref"]),
        empty_rows=sums["empty"] / max(sums["real"], 1.0),
        colliding_keys=sums["colliding"] / max(sums["real"], 1.0),
        angles=torch.cat(angles).numpy(),
        expectation=image[0].cpu(),
        frequency=image[1].cpu(),
        valid=image[2].cpu(),
    )


def _crop_angles(prepared: pipeline.Prepared, crop: int) -> torch.Tensor:
    """Angles (degrees) of the real q-k pairs among the first ``crop`` positions, every head."""
    q, k, real = prepared.q[:, :crop].detach(), prepared.k[:, :crop].detach(), prepared.query_mask[:, :crop]
    pairs = real[:, :, None] & real[:, None, :]
    cosine = torch.bmm(q, k.transpose(1, 2)).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cosine))[pairs].cpu()


def _collision_image(
    prepared: pipeline.Prepared, codes: tuple[torch.Tensor, torch.Tensor], hash_code_len: int, crop: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head 0's collision probabilities and hash-averaged collisions of the first ``crop`` real tokens."""
    tokens = prepared.query_mask[0].nonzero().flatten()[:crop]
    if not tokens.numel():  # no real token at all: an empty picture rather than an error
        empty = torch.zeros(1, 1, device=prepared.q.device)
        return empty, empty, torch.zeros(1, 1, dtype=torch.bool, device=empty.device)
    q, k = prepared.q[:1, tokens].detach(), prepared.k[:1, tokens].detach()
    expectation = expectation_weights(q, k, hash_code_len)[0]
    query_codes, key_codes = codes[0][0, tokens], codes[1][0, tokens]
    frequency = (query_codes[:, None, :] == key_codes[None, :, :]).float().mean(-1)
    return expectation, frequency, torch.ones_like(expectation, dtype=torch.bool)


def _ratio(error_sq: float, reference_sq: float) -> float:
    """Relative L2 error from squared norms; NaN when the reference is 0 (nothing to compare)."""
    return math.sqrt(error_sq / reference_sq) if reference_sq > 0 else float("nan")


def comparison_image(expectation: torch.Tensor, frequency: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """``[c*s, (2c+1)*s, 3]`` uint8: expectation | white column | frequencies, ``s = max(1, 256 // c)``.

    One colour scale (viridis, 0 to the larger maximum of the two) so that the
    panels compare by eye; padded pairs are grey so they do not read as "no collision".
    """
    import matplotlib  # imported here: only needed when a TensorBoard image is written

    colormap = matplotlib.colormaps["viridis"]
    top = max(float(expectation.max()), float(frequency.max()), 1e-12)
    invalid = (~valid).numpy()

    def paint(values: torch.Tensor) -> np.ndarray:
        rgb = colormap((values / top).clamp(0.0, 1.0).numpy())[..., :3]
        rgb[invalid] = 0.5
        return rgb

    side = expectation.shape[0]
    separator = np.ones((side, 1, 3))
    picture = np.concatenate([paint(expectation), separator, paint(frequency)], axis=1)
    scale = max(1, IMAGE_SIDE // side)
    picture = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
    return (picture * 255).round().astype(np.uint8)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off for the measurement; each submodule's own training flag restored after."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def capture_attention_inputs(
    encoder: nn.Module, layers: list[nn.Module], batch: Mapping[str, torch.Tensor]
) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """``(q, k, v, mask)`` each layer received when ``encoder`` ran on ``batch`` (no grad)."""
    captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    def hook_for(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            named = dict(zip(("q", "k", "v", "mask"), args)) | kwargs
            mask = named.get("mask")
            captured[index] = (
                named["q"].detach(),
                named["k"].detach(),
                named["v"].detach(),
                None if mask is None else mask.detach(),
            )

        return hook

    handles = [layer.register_forward_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        extra = {key: batch[key] for key in ("segment_ids", "position_ids") if batch.get(key) is not None}
        with torch.no_grad():
            encoder(batch["input_ids"], batch.get("attention_mask"), **extra)
    finally:
        for handle in handles:
            handle.remove()
    return captured


class ApproximationMonitor(L.Callback):
    """Log, after the first step of a fit and every ``every_n_steps`` steps, how well each YOSO
    layer's sampling tracks YOSO-E.

    Needs only a LightningModule with a ``TransformerEncoder`` somewhere in its
    module tree and a validation dataloader of dict batches (``input_ids``,
    ``attention_mask``, optional ``segment_ids``). Runs on global rank 0 only.
    A model without sampled YOSO layers (softmax, YOSO-E) makes it a no-op.

    Args:
        every_n_steps: measure when ``trainer.global_step`` is a multiple of this, and at the
            first step of each fit (``global_step`` 1, or the step after the one resumed from).
        num_examples: examples of the first validation batch that make the fixed batch.
        crop: tokens shown in the image and used for the angle histogram.
        seed: seed of the private generator for the measurement's hashes and upstream gradient.
    """

    def __init__(
        self, every_n_steps: int = 200, num_examples: int = 4, crop: int = 128, seed: int = 0
    ) -> None:
        super().__init__()
        sizes = {"every_n_steps": every_n_steps, "num_examples": num_examples, "crop": crop}
        for name, number in sizes.items():
            if not isinstance(number, int) or number < 1:
                raise ValueError(f"{name} must be a positive int, got {number!r}")
        self.every_n_steps = every_n_steps
        self.num_examples = num_examples
        self.crop = crop
        self.seed = seed
        self.seconds = 0.0  # time spent measuring, for overhead reports
        self.measurements = 0
        self._active = True
        self._batch: dict[str, torch.Tensor] | None = None
        self._last_step = -1
        self._first_step = 1  # the fit's first optimisation step; set again at on_train_start
        self._warned: set[str] = set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        yoso = [m for m in pl_module.modules() if isinstance(m, YOSOAttention)]
        if not any(not m.options.expectation for m in yoso):
            self._active = False
            if trainer.is_global_zero:
                log.info("ApproximationMonitor: the model has no sampled YOSO attention; nothing to monitor.")
        elif not trainer.loggers:
            self._active = False
            self._warn_once("no-logger", "ApproximationMonitor: the trainer has no logger; nothing to log.")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After a resume the restored global_step is already set here.
        self._first_step = trainer.global_step + 1

    def due(self, step: int) -> bool:
        """Whether to measure at ``step``: the fit's first step, then every ``every_n_steps``.

        Steps before the first (``global_step`` 0 during gradient accumulation) are skipped:
        no optimisation step has run, and the view must run between two of them.
        """
        return step >= self._first_step and (step == self._first_step or step % self.every_n_steps == 0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self._active or not trainer.is_global_zero or step == self._last_step:
            return
        if not self.due(step):
            return
        self._last_step = step
        start = perf_counter()
        try:
            self.measure(trainer, pl_module, step)
        finally:
            self.seconds += perf_counter() - start

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Capture every YOSO layer on the fixed batch and log the comparison at ``step``."""
        encoder = next((m for m in pl_module.modules() if isinstance(m, TransformerEncoder)), None)
        if encoder is None:
            self._disable("no-encoder", "ApproximationMonitor: no TransformerEncoder in the model.")
            return
        layers = [m for m in encoder.modules() if isinstance(m, YOSOAttention)]
        device = pl_module.device
        with isolate_rng(), eval_mode(pl_module):
            batch = self._fixed_batch(trainer)
            if batch is None:
                return
            captured = capture_attention_inputs(encoder, layers, move_data_to_device(batch, device))
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed)
            results = {}
            for index, layer in enumerate(layers):
                if layer.options.expectation or index not in captured:
                    continue
                results[index] = measure_approximation(
                    *captured[index], layer.options, crop=self.crop, generator=generator
                )
        self._log(trainer, results, step)
        self.measurements += 1

    def _fixed_batch(self, trainer: L.Trainer) -> dict[str, torch.Tensor] | None:
        """The first ``num_examples`` examples of the first validation batch, taken once."""
        if self._batch is not None:
            return self._batch
        loader = trainer.val_dataloaders
        if loader is None and trainer.datamodule is not None:
            loader = trainer.datamodule.val_dataloader()
        if isinstance(loader, Mapping):
            loader = next(iter(loader.values()), None)
        elif isinstance(loader, list | tuple):
            loader = loader[0] if loader else None
        if loader is None:
            self._disable("no-val", "ApproximationMonitor: no validation dataloader for the fixed batch.")
            return None
        batch = next(iter(loader))
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            self._disable("batch", "ApproximationMonitor: validation batches must be dicts with 'input_ids'.")
            return None
        keep = ("input_ids", "attention_mask", "segment_ids")
        self._batch = {
            name: batch[name][: self.num_examples].clone()
            for name in keep
            if isinstance(batch.get(name), torch.Tensor)
        }
        return self._batch

    def _log(self, trainer: L.Trainer, results: dict[int, ApproximationStats], step: int) -> None:
        metrics = {}
        for index, stats in results.items():
            prefix = f"approx/layer{index}"
            metrics[f"{prefix}/rel_err"] = stats.rel_err
            metrics[f"{prefix}/grad_rel_err"] = stats.grad_rel_err
            metrics[f"{prefix}/empty_rows"] = stats.empty_rows
            metrics[f"{prefix}/colliding_keys"] = stats.colliding_keys
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers:
            self._warn_once("not-tensorboard", "ApproximationMonitor: no TensorBoardLogger; "
                            "logging scalars only (no images or histograms).")
            return
        for index, stats in results.items():
            prefix = f"approx/layer{index}"
            picture = comparison_image(stats.expectation, stats.frequency, stats.valid)
            for writer in writers:
                writer.add_image(f"{prefix}/expectation_vs_sampled", picture, step, dataformats="HWC")
                if stats.angles.size:
                    writer.add_histogram(f"{prefix}/qk_angle", stats.angles, step)

    def _disable(self, key: str, message: str) -> None:
        self._active = False
        self._warn_once(key, message)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=2)
