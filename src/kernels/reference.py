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

MAX_HASH_CODE_LEN = 16
# Hash tables are processed in chunks so that one chunk stays below this size.
_TABLE_CHUNK_BYTES = 64 * 2**20


def check_hash_code_len(hash_code_len: int) -> None:
    """Reject code lengths whose tables (2**tau rows) would be useless or huge."""
    if not isinstance(hash_code_len, int) or not 1 <= hash_code_len <= MAX_HASH_CODE_LEN:
        raise ValueError(
            f"hash_code_len must be an int in [1, {MAX_HASH_CODE_LEN}] "
            f"(the paper uses 8-12), got {hash_code_len!r}"
        )


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
    check_hash_code_len(hash_code_len)
    num_hashes = projection.shape[-1] // hash_code_len
    projected = torch.bmm(x.float(), projection.float())
    return _bits_to_codes(projected, num_hashes, hash_code_len)


def fast_hash_dim(head_dim: int, hash_code_len: int) -> int:
    """Padded width of the Hadamard hash: a power of two >= max(head_dim, tau)."""
    return 1 << max(0, math.ceil(math.log2(max(head_dim, hash_code_len))))


def fast_hash_num_parts(num_hashes: int, head_dim: int, hash_code_len: int) -> int:
    """Number of random rotations needed: each yields ``D // tau`` hashes."""
    per_part = fast_hash_dim(head_dim, hash_code_len) // hash_code_len
    return -(-num_hashes // per_part)


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
        x: ``[BH, n, d]`` vectors; zero-padded to ``D = fast_hash_dim(d, tau)``.
        signs: ``[BH, 3, parts, D]`` random +-1 diagonals (float or int).
        num_hashes: ``m``; hash ``p * (D // tau) + s`` uses bits ``s*tau .. s*tau+tau-1``
            of rotation ``p``.
        hash_code_len: ``tau``.

    Returns:
        ``[BH, n, m]`` int32 codes.
    """
    check_hash_code_len(hash_code_len)
    bh, n, d = x.shape
    width = signs.shape[-1]
    parts = signs.shape[2]
    per_part = width // hash_code_len
    if width != fast_hash_dim(d, hash_code_len) or parts * per_part < num_hashes:
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
    check_hash_code_len(hash_code_len)
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
) -> torch.Tensor:
    """``out_i = mq_i / m * sum_h sum_j mk_j [h(q_i)=h(k_j)] (a_i . b_j) v_j``.

    ``a`` = ``query_weight`` ``[BH, nq, w]``, ``b`` = ``key_weight`` ``[BH, nk, w]``.
    This is the dQ / dK cumulation of the LSH backward. It splits the dot
    product by weight coordinate: coordinate ``c`` is an ordinary cumulation of
    the values ``b_jc v_j``, read back scaled by ``a_ic``; coordinates are
    processed in chunks to bound the table memory.
    """
    check_hash_code_len(hash_code_len)
    bh, num_keys, dim = value.shape
    num_queries, num_hashes = query_codes.shape[1], query_codes.shape[2]
    width = key_weight.shape[-1]
    query_rows = _flat_rows(query_codes, hash_code_len)
    key_rows = _flat_rows(key_codes, hash_code_len)
    query_weight = query_weight.float()
    value = value.float() * key_mask.unsqueeze(-1).to(torch.float32)
    out = value.new_zeros(bh, num_queries, dim)
    rows = bh * max(1 << hash_code_len, num_keys, num_queries) * dim
    coords_per_chunk = _chunk(rows, width)
    for start in range(0, width, coords_per_chunk):
        stop = min(width, start + coords_per_chunk)
        # [BH, nk, c, d]: the values of c independent cumulations side by side.
        outer = key_weight[:, :, start:stop].float().unsqueeze(-1) * value.unsqueeze(2)
        cumulated = _cumulate_flat(
            query_rows, key_rows, outer.reshape(bh * num_keys, -1), bh << hash_code_len
        ).reshape(bh, num_queries, stop - start, dim)
        out += torch.einsum("bqc,bqcd->bqd", query_weight[:, :, start:stop], cumulated)
    return out * (query_mask.unsqueeze(-1).to(torch.float32) / num_hashes)


def expectation_weights(query: torch.Tensor, key: torch.Tensor, hash_code_len: int) -> torch.Tensor:
    """Collision probability ``(1 - arccos(q.k)/pi)**tau`` of unit vectors, ``[BH, nq, nk]``."""
    cosine = torch.bmm(query.float(), key.float().transpose(1, 2)).clamp(-1.0, 1.0)
    return (1.0 - torch.arccos(cosine) / math.pi) ** hash_code_len
