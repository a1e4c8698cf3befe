"""Plain-PyTorch reference of the YOSO ops: the definition of correctness.

Every op works on a flattened batch of heads: tensors are ``[BH, n, ...]`` where
``BH`` = batch x heads. Compiled backends implement exactly the same signatures
and are tested against these functions.

Conventions shared by all backends
- Hash codes are ``int32`` tensors ``[BH, n, m]``; code bit ``t`` is set when
  projection ``t`` of that hash is strictly positive.
- Masks are ``bool`` tensors ``[BH, n]`` (True = real token).
- Cumulations average over the ``m`` hashes, so ``E[lsh_cumulation]`` is the
  expectation (YOSO-E) cumulation.

The sampling ops never build an ``n x n`` matrix: keys are scattered into hash
tables of ``2**tau`` rows and queries read their bucket back, so memory and
time are linear in the sequence length.
"""

from __future__ import annotations

import math

import torch

# Hash tables are processed in chunks so that one chunk stays below this size.
_TABLE_CHUNK_BYTES = 64 * 2**20


def _bits_to_codes(projections: torch.Tensor, num_hashes: int, hash_code_len: int) -> torch.Tensor:
    """Pack the signs of ``[..., m * tau]`` projections into ``[..., m]`` int32 codes."""
    bits = (projections > 0).reshape(*projections.shape[:-1], num_hashes, hash_code_len)
    weights = 2 ** torch.arange(hash_code_len, device=projections.device, dtype=torch.int32)
    return (bits.to(torch.int32) * weights).sum(dim=-1, dtype=torch.int32)


def hash_gaussian(x: torch.Tensor, projection: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """Random-hyperplane LSH codes.

    Args:
        x: ``[BH, n, d]`` vectors (unit norm for the collision probability to hold).
        projection: ``[BH, d, m * tau]`` Gaussian directions, shared by queries and keys.
        hash_code_len: ``tau`` bits per hash.

    Returns:
        ``[BH, n, m]`` int32 codes in ``[0, 2**tau)``.
    """
    num_hashes = projection.shape[-1] // hash_code_len
    projected = torch.bmm(x.float(), projection.float())
    return _bits_to_codes(projected, num_hashes, hash_code_len)


def hadamard_transform(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform over the last dim (a power of two)."""
    size = x.shape[-1]
    if size & (size - 1):
        raise ValueError(f"Hadamard transform needs a power-of-two length, got {size}")
    lead = x.shape[:-1]
    h = 1
    while h < size:
        pairs = x.reshape(*lead, size // (2 * h), 2, h)
        x = torch.stack((pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]), dim=-2)
        h *= 2
    return x.reshape(*lead, size)


def hash_fast(x: torch.Tensor, signs: torch.Tensor, num_hashes: int, hash_code_len: int) -> torch.Tensor:
    """Structured LSH: codes from the signs of ``H D3 H D2 H D1 x``.

    Args:
        x: ``[BH, n, d]`` vectors; zero-padded to ``D``, the smallest power of two
            >= max(d, tau) (``YOSOOptions.fast_hash_width``).
        signs: ``[BH, 3, parts, D]`` random +-1 diagonals (float or int).
        num_hashes: ``m``; hash ``p * (D // tau) + s`` uses bits ``s*tau .. s*tau+tau-1``
            of rotation ``p``.
        hash_code_len: ``tau``.

    Returns:
        ``[BH, n, m]`` int32 codes.
    """
    bh, n, d = x.shape
    width = signs.shape[-1]
    parts = signs.shape[2]
    per_part = width // hash_code_len
    smallest = 1 << max(0, math.ceil(math.log2(max(d, hash_code_len))))
    if width != smallest or parts * per_part < num_hashes:
        raise ValueError(
            f"signs of shape {tuple(signs.shape)} do not fit head_dim={d}, "
            f"num_hashes={num_hashes}, hash_code_len={hash_code_len}"
        )
    signs = signs.float()
    y = torch.nn.functional.pad(x.float(), (0, width - d)).unsqueeze(2)  # [BH, n, 1, D]
    for level in range(3):
        y = hadamard_transform(y * signs[:, level].unsqueeze(1))  # [BH, n, parts, D]
    y = y[..., : per_part * hash_code_len].reshape(bh, n, parts * per_part * hash_code_len)
    codes = _bits_to_codes(y, parts * per_part, hash_code_len)
    return codes[..., :num_hashes].contiguous()


def _chunk(total_rows: int, width: int) -> int:
    """How many of ``width`` columns of a ``total_rows``-row float table fit in one chunk."""
    return max(1, min(width, _TABLE_CHUNK_BYTES // (4 * max(total_rows, 1))))


def _cumulate_flat(
    query_rows: torch.Tensor,
    key_rows: torch.Tensor,
    values: torch.Tensor,
    num_rows: int,
) -> torch.Tensor:
    """Sum ``values`` into table rows ``key_rows`` and read rows ``query_rows`` back.

    ``key_rows``/``query_rows`` are ``[m, N]`` flat table indices (one row per
    hash); the result is summed over the ``m`` hashes.
    """
    out = values.new_zeros(query_rows.shape[1], values.shape[1])
    table = values.new_empty(num_rows, values.shape[1])
    for rows_k, rows_q in zip(key_rows, query_rows):
        table.zero_()
        table.index_add_(0, rows_k, values)
        out += table.index_select(0, rows_q)
    return out


def _flat_rows(codes: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """``[BH, n, m]`` codes -> ``[m, BH * n]`` row indices into a ``[BH * 2**tau]`` table."""
    bh, n, m = codes.shape
    offsets = torch.arange(bh, device=codes.device, dtype=torch.int64).view(bh, 1, 1) << hash_code_len
    return (codes.long() + offsets).reshape(bh * n, m).t()


def lsh_cumulation(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
) -> torch.Tensor:
    """``out_i = mq_i / m * sum_h sum_j mk_j [h(q_i) = h(k_j)] v_j`` via hash tables.

    With queries and keys swapped (and ``value`` the output gradient) this is the
    ``dV`` of the LSH backward.
    """
    bh, num_keys, dim = value.shape
    num_queries, num_hashes = query_codes.shape[1], query_codes.shape[2]
    value = value.float() * key_mask.unsqueeze(-1).to(torch.float32)
    out = _cumulate_flat(
        _flat_rows(query_codes, hash_code_len),
        _flat_rows(key_codes, hash_code_len),
        value.reshape(bh * num_keys, dim),
        bh << hash_code_len,
    )
    out = out.reshape(bh, num_queries, dim)
    return out * (query_mask.unsqueeze(-1).to(torch.float32) / num_hashes)


def lsh_weighted_cumulation(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    query_weight: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    key_weight: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
    method: str = "auto",
) -> torch.Tensor:
    """``out_i = mq_i / m * sum_h sum_j mk_j [h(q_i)=h(k_j)] (a_i . b_j) v_j``.

    ``a`` = ``query_weight`` ``[BH, nq, w]``, ``b`` = ``key_weight`` ``[BH, nk, w]``.
    This is the dQ / dK cumulation of the LSH backward. Two exact methods, the
    cheaper one chosen per call: visit the colliding pairs directly (few
    collisions: short sequences or long codes) or cumulate per-bucket tables of
    outer products ``b_j (x) v_j`` (many collisions).
    """
    bh, num_keys, dim = value.shape
    num_queries, num_hashes = query_codes.shape[1], query_codes.shape[2]
    width = key_weight.shape[-1]
    query_weight = query_weight.float() * query_mask.unsqueeze(-1).to(torch.float32)
    value = value.float() * key_mask.unsqueeze(-1).to(torch.float32)
    key_weight = key_weight.float()
    if method not in ("auto", "pairs", "tables"):
        raise ValueError(f"method must be 'auto', 'pairs' or 'tables', got {method!r}")
    pairs = _colliding_pairs(query_mask, query_codes, key_mask, key_codes, hash_code_len)
    table_cost = num_hashes * ((bh << hash_code_len) + bh * (num_queries + num_keys)) * width * dim
    if method == "auto":
        method = "pairs" if pairs.count * (width + dim) * 4 < table_cost else "tables"
    if method == "pairs":
        out = _weighted_by_pairs(pairs, query_weight, key_weight, value)
    else:
        out = _weighted_by_tables(query_codes, query_weight, key_codes, key_weight, value, hash_code_len)
    return out * (query_mask.unsqueeze(-1).to(torch.float32) / num_hashes)


class _Pairs:
    """Colliding (query, key) index pairs over all hashes, grouped by query entry."""

    def __init__(self, query_rows: torch.Tensor, key_rows: torch.Tensor, starts: torch.Tensor,
                 counts: torch.Tensor) -> None:
        self.query_rows = query_rows  # [E] flat (bh * nq + i) of each query entry with collisions
        self.key_rows = key_rows  # [K] flat (bh * nk + j) of keys sorted by (bh, hash, code)
        self.starts = starts  # [E] first matching position in key_rows
        self.counts = counts  # [E] number of matching keys
        self.count = int(counts.sum())


def _colliding_pairs(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    hash_code_len: int,
) -> _Pairs:
    """Sort real keys by (batch-head, hash, code); find each real query's run of equal keys.

    Memory is linear in the number of (query, hash) entries; the pairs themselves
    are only expanded chunk by chunk in ``_weighted_by_pairs``.
    """
    bh, num_keys, num_hashes = key_codes.shape
    num_queries = query_codes.shape[1]
    device = key_codes.device
    head = torch.arange(bh, device=device).view(bh, 1, 1)
    hashes = torch.arange(num_hashes, device=device).view(1, 1, num_hashes)

    def combined(codes: torch.Tensor) -> torch.Tensor:
        return ((head * num_hashes + hashes) << hash_code_len) + codes.long()

    real_keys = key_mask.unsqueeze(-1).expand(bh, num_keys, num_hashes)
    key_ids = combined(key_codes)[real_keys]
    key_rows = (head * num_keys + torch.arange(num_keys, device=device).view(1, num_keys, 1))
    key_rows = key_rows.expand(bh, num_keys, num_hashes)[real_keys]
    sorted_ids, order = torch.sort(key_ids)
    key_rows = key_rows[order]

    real_queries = query_mask.unsqueeze(-1).expand(bh, num_queries, num_hashes)
    query_ids = combined(query_codes)[real_queries]
    query_rows = head * num_queries + torch.arange(num_queries, device=device).view(1, num_queries, 1)
    query_rows = query_rows.expand(bh, num_queries, num_hashes)[real_queries]
    starts = torch.searchsorted(sorted_ids, query_ids, side="left")
    counts = torch.searchsorted(sorted_ids, query_ids, side="right") - starts
    hit = counts > 0
    return _Pairs(query_rows[hit], key_rows, starts[hit], counts[hit])


_PAIRS_PER_CHUNK = 1 << 20


def _weighted_by_pairs(
    pairs: _Pairs, query_weight: torch.Tensor, key_weight: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """Visit every colliding pair directly: cost ~ pairs x (w + d), no tables."""
    bh, num_queries, width = query_weight.shape
    dim = value.shape[-1]
    flat_qw = query_weight.reshape(-1, width)
    flat_kw = key_weight.reshape(-1, width)
    flat_v = value.reshape(-1, dim)
    out = value.new_zeros(bh * num_queries, dim)
    ends = torch.cumsum(pairs.counts, 0)
    entry = 0
    while entry < len(pairs.counts):
        # Take entries until about _PAIRS_PER_CHUNK pairs (at least one entry).
        before = int(ends[entry - 1]) if entry else 0
        stop = int(torch.searchsorted(ends, before + _PAIRS_PER_CHUNK, side="right"))
        stop = max(stop, entry + 1)
        counts = pairs.counts[entry:stop]
        owner = torch.repeat_interleave(torch.arange(entry, stop, device=counts.device), counts)
        first = torch.cumsum(counts, 0) - counts
        offset = torch.arange(len(owner), device=counts.device) - torch.repeat_interleave(first, counts)
        keys = pairs.key_rows[pairs.starts[owner] + offset]
        queries = pairs.query_rows[owner]
        coefficient = (flat_qw[queries] * flat_kw[keys]).sum(-1, keepdim=True)
        out.index_add_(0, queries, coefficient * flat_v[keys])
        entry = stop
    return out.reshape(bh, num_queries, dim)


def _weighted_by_tables(
    query_codes: torch.Tensor,
    query_weight: torch.Tensor,
    key_codes: torch.Tensor,
    key_weight: torch.Tensor,
    value: torch.Tensor,
    hash_code_len: int,
) -> torch.Tensor:
    """Tables of ``b_j (x) v_j`` outer products per bucket: cost ~ n x m x w x d, any collision rate."""
    bh, num_keys, dim = value.shape
    num_queries, width = query_codes.shape[1], key_weight.shape[-1]
    query_rows = _flat_rows(query_codes, hash_code_len)
    key_rows = _flat_rows(key_codes, hash_code_len)
    out = value.new_zeros(bh, num_queries, dim)
    rows = bh * max(1 << hash_code_len, num_keys, num_queries) * dim
    coords_per_chunk = _chunk(rows, width)
    for start in range(0, width, coords_per_chunk):
        stop = min(width, start + coords_per_chunk)
        # [BH, nk, c, d]: the values of c independent cumulations side by side.
        outer = key_weight[:, :, start:stop].unsqueeze(-1) * value.unsqueeze(2)
        cumulated = _cumulate_flat(
            query_rows, key_rows, outer.reshape(bh * num_keys, -1), bh << hash_code_len
        ).reshape(bh, num_queries, stop - start, dim)
        out += torch.einsum("bqc,bqcd->bqd", query_weight[:, :, start:stop], cumulated)
    return out


def expectation_weights(query: torch.Tensor, key: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """Collision probability ``(1 - arccos(q.k)/pi)**tau`` of unit vectors, ``[BH, nq, nk]``."""
    cosine = torch.bmm(query.float(), key.float().transpose(1, 2)).clamp(-1.0, 1.0)
    return (1.0 - torch.arccos(cosine) / math.pi) ** hash_code_len


def lsh_backward(
    query_mask: torch.Tensor,
    query_codes: torch.Tensor,
    query: torch.Tensor,
    key_mask: torch.Tensor,
    key_codes: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grad: torch.Tensor,
    hash_code_len: int,
    bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The LSH surrogate gradients ``(dQ, dK, dV)`` of ``lsh_cumulation`` (``G`` = ``grad``).

    ``bf16`` is the compiled kernels' precision option; the reference, being the
    definition, always computes in the inputs' dtype and ignores it.

    ``dV_j = mk_j / m sum_h sum_i mq_i [h(q_i)=h(k_j)] G_i`` (a cumulation with the
    sides swapped) and ``dQ`` / ``dK`` the weighted cumulations times ``tau / 2``,
    the paper's substitute for the derivative of the collision probability.
    """
    half_tau = hash_code_len / 2
    grad_value = lsh_cumulation(key_mask, key_codes, query_mask, query_codes, grad, hash_code_len)
    grad_query = lsh_weighted_cumulation(
        query_mask, query_codes, grad, key_mask, key_codes, value, key, hash_code_len
    )
    grad_key = lsh_weighted_cumulation(
        key_mask, key_codes, value, query_mask, query_codes, grad, query, hash_code_len
    )
    return grad_query * half_tau, grad_key * half_tau, grad_value


def sequence_conv(value: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """YOSO-C's depthwise convolution along the sequence, ``[BH, n, d]``.

    ``out_i = sum_t weight[b % H, t] * mask_j v_j`` with ``j = i + t - w // 2`` and
    rows outside ``[0, n)`` zero (a "same" convolution, i.e. cross-correlation as in
    ``conv1d``); ``weight`` is ``[H, w]`` (``w`` odd), one filter per head, batch-head
    ``b`` using filter ``b % H``. Masked rows count as zero, also when they hold NaN.
    """
    heads, window = weight.shape
    length, half = value.shape[1], window // 2
    masked = torch.where(mask.unsqueeze(-1), value, 0.0)
    padded = torch.nn.functional.pad(masked, (0, 0, half, half))
    taps = weight.repeat(value.shape[0] // heads, 1)  # [BH, w]
    out = torch.zeros_like(value)
    for t in range(window):
        out += taps[:, t, None, None] * padded[:, t : t + length]
    return out


def _batch_head_rows(rows: torch.Tensor) -> torch.Tensor:
    """``[BH, n, d]`` as is; ``[B, n, H, d]`` (the attention output's layout) as ``[BH, n, d]``."""
    if rows.dim() == 3:
        return rows
    batch, length, heads, dim = rows.shape
    return rows.transpose(1, 2).reshape(batch * heads, length, dim)


def sequence_conv_add(
    base: torch.Tensor,
    base_scale: torch.Tensor | None,
    value: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """``base * base_scale + sequence_conv(value, mask, weight)``, laid out as ``base``.

    ``base`` is ``[BH, n, d]`` like ``value``, or ``[B, n, H, d]``: the layout of
    ``yoso_attention``'s output, to which YOSO-C adds its convolution;
    ``base_scale`` (one factor per row of ``base``, e.g. ``[..., 1]``) or None.
    """
    conv = sequence_conv(value, mask, weight)
    if base.dim() == 4:
        batch, length, heads, dim = base.shape
        conv = conv.reshape(batch, heads, length, dim).transpose(1, 2)
    scaled = base if base_scale is None else base * base_scale.reshape(*base.shape[:-1], 1)
    return scaled + conv


def sequence_conv_backward(
    grad: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_value, grad_weight)`` of ``sequence_conv`` for the output gradient ``grad``.

    ``grad`` is laid out as ``sequence_conv_add``'s ``base`` (either layout);
    ``grad_value`` is the flipped filter slid over ``grad``, zero on masked rows;
    ``grad_weight[h, t] = sum over b of head h, i: grad_i . mask_j v_j``.
    """
    grad = _batch_head_rows(grad)
    heads, window = weight.shape
    length, half = value.shape[1], window // 2
    everywhere = torch.ones_like(mask)
    grad_value = sequence_conv(grad, everywhere, weight.flip(-1))
    grad_value = torch.where(mask.unsqueeze(-1), grad_value, 0.0)
    padded = torch.nn.functional.pad(torch.where(mask.unsqueeze(-1), value, 0.0), (0, 0, half, half))
    per_tap = torch.stack([(grad * padded[:, t : t + length]).sum((1, 2)) for t in range(window)], -1)
    grad_weight = per_tap.reshape(-1, heads, window).sum(0)
    return grad_value, grad_weight
