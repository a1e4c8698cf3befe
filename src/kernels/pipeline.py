"""The steps of YOSO attention, public so that every user composes the same code.

``yoso_attention`` is ``prepare -> hash_codes -> cumulate -> finish``; the
approximation monitor runs ``prepare -> hash_codes -> cumulate`` twice (sampled
and expectation) on the same inputs. Each step trusts a validated
``YOSOOptions`` and the tensors ``prepare`` made; it checks nothing again.

Shapes: heads are flattened into the batch, ``[BH, n, d]``; masks are bool
``[BH, n]`` (True = real token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from src.kernels.autograd import (
    ConvolvedOutput,
    ExactExpectation,
    ExpectationCumulation,
    LSHCumulation,
    RowNormalize,
)
from src.kernels.backends import Kernels
from src.kernels.options import YOSOOptions


@dataclass
class Prepared:
    """Unit-norm queries and keys, values with padded rows zeroed, and the masks."""

    q: Tensor  # [BH, nq, d] float32, unit rows (0 for an all-zero row)
    k: Tensor  # [BH, nk, d] float32, unit rows, padded rows 0
    v: Tensor  # [BH, nk, dv] float32, padded rows 0
    query_mask: Tensor  # [BH, nq] bool
    key_mask: Tensor  # [BH, nk] bool
    batch: int
    heads: int
    dtype: torch.dtype  # the queries' dtype: the output's, and what "auto" precision reads


def normalize_rows(x: Tensor) -> Tensor:
    """L2-normalise the last dim; an all-zero row stays 0 (value and gradient), never NaN."""
    return RowNormalize.apply(x)


def prepare(query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor, query_mask: Tensor) -> Prepared:
    """Normalise ``q``, ``k`` and zero padded keys and values; ``[B, H, n, d]`` in, ``[BH, n, d]`` out.

    Masks are bool ``[B, n]``. Padded keys and values are zeroed before normalising,
    so a NaN there cannot leak in through ``0 * NaN``; the zeroing is also the one
    copy of ``k`` and ``v``, made contiguous first so that autograd saves each
    normalised tensor once, as a view.
    """
    batch, heads, num_queries, head_dim = query.shape
    num_keys, value_dim = key.shape[2], value.shape[-1]
    bh = batch * heads
    padded = ~key_mask[:, None, :, None]
    q = normalize_rows(query.float().contiguous()).reshape(bh, num_queries, head_dim)
    k = normalize_rows(key.float().masked_fill(padded, 0.0).contiguous()).reshape(bh, num_keys, head_dim)
    v = value.float().masked_fill(padded, 0.0).contiguous().reshape(bh, num_keys, value_dim)
    return Prepared(
        q=q,
        k=k,
        v=v,
        query_mask=_per_head(query_mask, heads),
        key_mask=_per_head(key_mask, heads),
        batch=batch,
        heads=heads,
        dtype=query.dtype,
    )


def _per_head(mask: Tensor, heads: int) -> Tensor:
    batch, length = mask.shape
    return mask.unsqueeze(1).expand(batch, heads, length).reshape(batch * heads, length).contiguous()


def draw_hash_parameters(
    batch_heads: int,
    head_dim: int,
    options: YOSOOptions,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fresh random hash directions (Gaussian) or +-1 diagonals (fast hash).

    Drawn from ``generator`` or torch's global RNG, so ``torch.manual_seed`` replays a run.
    """
    if options.hashing == "gaussian":
        shape = (batch_heads, head_dim, options.num_hashes * options.hash_code_len)
        return torch.randn(shape, device=device, generator=generator)
    width, parts = options.fast_hash_width(head_dim), options.fast_hash_parts(head_dim)
    bits = torch.randint(0, 2, (batch_heads, 3, parts, width), device=device, generator=generator)
    return (bits * 2 - 1).to(torch.float32)


def hash_vectors(vectors: Tensor, parameters: Tensor, options: YOSOOptions, kernels: Kernels) -> Tensor:
    """``[BH, n, m]`` int32 codes of ``[BH, n, d]`` vectors under drawn hash ``parameters``."""
    vectors = vectors.detach().float().contiguous()
    parameters = parameters.float().contiguous()
    if options.hashing == "gaussian":
        return kernels.hash_gaussian(vectors, parameters, options.hash_code_len)
    return kernels.hash_fast(vectors, parameters, options.num_hashes, options.hash_code_len)


def hash_codes(
    prepared: Prepared, options: YOSOOptions, kernels: Kernels, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Query and key codes under one fresh draw of ``m`` hashes (queries and keys share them)."""
    q = prepared.q
    parameters = draw_hash_parameters(q.shape[0], q.shape[-1], options, q.device, generator)
    with torch.no_grad():
        return (hash_vectors(q, parameters, options, kernels),
                hash_vectors(prepared.k, parameters, options, kernels))


def cumulate(
    prepared: Prepared,
    options: YOSOOptions,
    kernels: Kernels | None = None,
    codes: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """The unnormalised ``Y_i = mq_i * sum_j mk_j B_ij v_j``, ``[BH, nq, dv]``.

    ``B`` is the collision probability (``options.expectation``) or the collision
    indicator averaged over the hashes that made ``codes`` (sampling; needs
    ``kernels``). The backward is the paper's surrogate unless ``exact_gradient``.
    """
    p = prepared
    tau = options.hash_code_len
    if options.expectation:
        function = ExactExpectation if options.exact_gradient else ExpectationCumulation
        return function.apply(p.query_mask, p.key_mask, p.q, p.k, p.v, tau)
    if kernels is None or codes is None:
        raise ValueError("sampled cumulation needs the kernels and the hash codes (see hash_codes)")
    return LSHCumulation.apply(
        p.query_mask, p.key_mask, p.q, p.k, p.v, *codes, tau, options.lsh_backward, kernels,
        options.bf16_backward(p.dtype),
    )


def collision_counts(prepared: Prepared, codes: tuple[Tensor, Tensor], options: YOSOOptions,
                     kernels: Kernels) -> Tensor:
    """Real keys in each real query's bucket, averaged over the hashes, ``[BH, nq]`` (0: an empty row)."""
    p = prepared
    ones = torch.ones(*p.k.shape[:2], 1, device=p.k.device)
    return kernels.lsh_cumulation(p.query_mask, codes[0], p.key_mask, codes[1], ones,
                                  options.hash_code_len)[..., 0]


def finish(
    y: Tensor,
    prepared: Prepared,
    options: YOSOOptions,
    kernels: Kernels | None = None,
    conv_weight: Tensor | None = None,
) -> Tensor:
    """``[B, H, nq, dv]`` output: non-finite inputs propagated, rows normalised, YOSO-C conv added.

    The result is a ``[B, H, n, d]`` view of a ``[B, n, H, d]`` tensor, so that merging
    the heads afterwards is a view too: the output projection then saves the very
    tensor the normalisation saves, not a second copy per layer. ``conv_weight``
    (``[H, w]``, needs ``kernels``) adds ``sequence_conv`` of the zeroed values.
    """
    p = prepared
    y = propagate_non_finite(y, p)
    num_queries, value_dim = y.shape[1], y.shape[2]
    y = y.reshape(p.batch, p.heads, num_queries, value_dim).transpose(1, 2).contiguous()
    if conv_weight is not None:
        filters = conv_weight.float().contiguous()
        y = ConvolvedOutput.apply(y, p.v, p.key_mask, filters, options.normalize_output, kernels)
    elif options.normalize_output:
        y = normalize_rows(y)
    return y.transpose(1, 2).to(p.dtype)


def propagate_non_finite(y: Tensor, prepared: Prepared) -> Tensor:
    """Make ``y`` NaN where softmax attention would be: hashing turns NaN/inf into finite codes.

    A non-finite query makes its own row NaN; a non-finite real key or value makes
    every real row of its batch x head NaN; padded positions stay ignored and padded
    rows are exactly 0 (also when a kernel left NaN there). Adds ``0 * x`` sums (NaN
    exactly where ``x`` is not finite): one pass over q, k, v, no data-dependent branch.
    """
    p = prepared
    keys = torch.where(p.key_mask, (p.k * 0).sum(-1) + (p.v * 0).sum(-1), 0.0).sum(-1, keepdim=True)
    rows = (p.q * 0).sum(-1) + keys  # [BH, n_q]
    return torch.where(p.query_mask.unsqueeze(-1), y + rows.unsqueeze(-1), 0.0)
