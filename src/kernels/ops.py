"""The compiled YOSO ops as ``torch.library`` custom ops (``torch.ops.yoso.*``).

Why custom ops: a pybind function is opaque to ``torch.compile``; a custom op
with a fake (meta) implementation is traced as one node. Each op has one
kernel per device type (``cpu``: the C++ extension, ``cuda``: the CUDA one),
registered with ``register_kernel`` so that torch's dispatcher, not our code,
picks it from the inputs' device. The extension is built on the first call
(``build.extension``). The ops take what the extensions take: float32 data,
bool masks, int32 codes, contiguous; ``interface.py`` validates and ``pipeline.py`` prepares.
The function names and signatures are those of ``reference.py``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from src.kernels import build, reference

DEVICE_TYPES = ("cpu", "cuda")


def _no_kernel(tensor: Tensor) -> RuntimeError:
    return RuntimeError(f"no compiled YOSO kernel for {tensor.device.type} tensors (only cpu, cuda)")


@torch.library.custom_op("yoso::hash_gaussian", mutates_args=())
def hash_gaussian(x: Tensor, projection: Tensor, hash_code_len: int) -> Tensor:
    """Random-hyperplane LSH codes ``[BH, n, m]`` (``reference.hash_gaussian``)."""
    raise _no_kernel(x)


@hash_gaussian.register_fake
def _(x: Tensor, projection: Tensor, hash_code_len: int) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1], projection.shape[-1] // hash_code_len), dtype=torch.int32)


@torch.library.custom_op("yoso::hash_fast", mutates_args=())
def hash_fast(x: Tensor, signs: Tensor, num_hashes: int, hash_code_len: int) -> Tensor:
    """Hadamard (fast) LSH codes ``[BH, n, m]`` (``reference.hash_fast``)."""
    raise _no_kernel(x)


@hash_fast.register_fake
def _(x: Tensor, signs: Tensor, num_hashes: int, hash_code_len: int) -> Tensor:
    return x.new_empty((x.shape[0], x.shape[1], num_hashes), dtype=torch.int32)


@torch.library.custom_op("yoso::lsh_cumulation", mutates_args=())
def lsh_cumulation(
    query_mask: Tensor,
    query_codes: Tensor,
    key_mask: Tensor,
    key_codes: Tensor,
    value: Tensor,
    hash_code_len: int,
) -> Tensor:
    """Hash-table cumulation ``[BH, nq, dv]`` (``reference.lsh_cumulation``)."""
    raise _no_kernel(value)


@lsh_cumulation.register_fake
def _(query_mask, query_codes, key_mask, key_codes, value, hash_code_len):
    return value.new_empty((value.shape[0], query_codes.shape[1], value.shape[2]))


@torch.library.custom_op("yoso::lsh_backward", mutates_args=())
def lsh_backward(
    query_mask: Tensor,
    query_codes: Tensor,
    query: Tensor,
    key_mask: Tensor,
    key_codes: Tensor,
    key: Tensor,
    value: Tensor,
    grad: Tensor,
    hash_code_len: int,
    bf16: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Surrogate ``(dQ, dK, dV)`` of the cumulation in one pass (``reference.lsh_backward``).

    ``bf16``: the per-pair contractions on bf16 operands with fp32 sums, where the
    CPU has AVX512-BF16 (``bf16_supported``); fp32 otherwise and on CUDA.
    """
    raise _no_kernel(value)


@lsh_backward.register_fake
def _(query_mask, query_codes, query, key_mask, key_codes, key, value, grad, hash_code_len, bf16=False):
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@torch.library.custom_op("yoso::sequence_conv", mutates_args=())
def sequence_conv(value: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
    """YOSO-C's depthwise convolution along the sequence (``reference.sequence_conv``)."""
    raise _no_kernel(value)


@sequence_conv.register_fake
def _(value, mask, weight):
    return torch.empty_like(value)


@torch.library.custom_op("yoso::sequence_conv_add", mutates_args=())
def sequence_conv_add(
    base: Tensor, base_scale: Tensor | None, value: Tensor, mask: Tensor, weight: Tensor
) -> Tensor:
    """``base * base_scale + sequence_conv(...)`` in ``base``'s layout (``reference.sequence_conv_add``)."""
    raise _no_kernel(value)


@sequence_conv_add.register_fake
def _(base, base_scale, value, mask, weight):
    return torch.empty_like(base)


@torch.library.custom_op("yoso::sequence_conv_backward", mutates_args=())
def sequence_conv_backward(
    grad: Tensor, value: Tensor, mask: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor]:
    """``(grad_value, grad_weight)`` of ``sequence_conv`` (``reference.sequence_conv_backward``)."""
    raise _no_kernel(value)


@sequence_conv_backward.register_fake
def _(grad, value, mask, weight):
    return torch.empty_like(value), torch.empty_like(weight)


# CUDA kernels that sum with float atomics (and place keys in buckets with integer atomics):
# the summation order, hence the last bits, changes from run to run. The CPU kernels are
# deterministic (fixed task order, bit-identical for any thread count).
NONDETERMINISTIC_ON_CUDA = ("lsh_cumulation", "lsh_backward")


def alert_not_deterministic(op: str) -> None:
    """What ``at::Context::alertNotDeterministic`` does, for an op whose CUDA kernel uses atomics.

    Under ``torch.use_deterministic_algorithms(True)`` it is an error naming the op and the
    ways out; with ``warn_only=True`` a warning. (torch 2.13 does not expose the C++ alert to
    Python, so the check sits in the op's CUDA kernel, before the extension is called.)
    """
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"yoso::{op} on CUDA sums with float atomics and has no deterministic implementation, but "
        "torch.use_deterministic_algorithms(True) is set. Run on the CPU (deterministic kernels), "
        "or allow it with torch.use_deterministic_algorithms(True, warn_only=True)."
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, UserWarning, stacklevel=3)
        return
    raise RuntimeError(message)


def _kernel(device_type: str, name: str) -> Callable:
    alerts = device_type == "cuda" and name in NONDETERMINISTIC_ON_CUDA

    def run(*args):
        if alerts:
            alert_not_deterministic(name)
        return getattr(build.extension(device_type), name)(*args)

    run.__name__ = f"{name}_{device_type}"
    return run


for _op in (hash_gaussian, hash_fast, lsh_cumulation, lsh_backward):
    _name = _op._name.split("::")[-1]
    for _device in DEVICE_TYPES:
        _op.register_kernel(_device, _kernel(_device, _name))

# The convolution is compiled for the CPU only, where PyTorch's depthwise path is
# slow; on CUDA it runs the reference's shifted sums (memory-bound elementwise
# passes, which a GPU does well) until a profile there says otherwise.
for _op, _reference in ((sequence_conv, reference.sequence_conv),
                        (sequence_conv_add, reference.sequence_conv_add),
                        (sequence_conv_backward, reference.sequence_conv_backward)):
    _op.register_kernel("cpu", _kernel("cpu", _op._name.split("::")[-1]))
    _op.register_kernel("cuda", _reference)


def bf16_supported() -> bool:
    """True when the CPU backward's ``bf16`` option runs bf16 contractions on this machine."""
    return bool(build.extension("cpu").bf16_supported())
