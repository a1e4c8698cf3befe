"""The one Transformer encoder every task shares.

Reads like the architecture section of the papers it serves (LRA harness and
BERT-small): token embedding + learned positions (+ segments for sentence
pairs), then ``depth`` layers of

    x = x + Dropout(W_o · Attention(W_q·LN(x), W_k·LN(x), W_v·LN(x), mask))
    x = x + Dropout(FFN(LN(x)))        FFN = Linear -> GELU -> Dropout -> Linear

(pre-LayerNorm, as in the LRA code the YOSO paper used; ``norm_first=False``
gives the post-LN BERT layout), and a final LayerNorm. The attention is picked
by name from ``src.models.components.attention``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from src.models.components.attention import build_attention


class MultiHeadSelfAttention(nn.Module):
    """Project to heads, run the chosen attention, merge heads back."""

    def __init__(
        self, dim: int, num_heads: int, head_dim: int, attention: str, attention_options: dict[str, Any]
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.query = nn.Linear(dim, inner)
        self.key = nn.Linear(dim, inner)
        self.value = nn.Linear(dim, inner)
        self.attention = build_attention(attention, num_heads, head_dim, **attention_options)
        self.output = nn.Linear(inner, dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (self._split_heads(proj(x)) for proj in (self.query, self.key, self.value))
        heads = self.attention(q, k, v, mask)  # [B, H, n, head_dim]
        merged = heads.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.output(merged)


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward blocks, each with a residual connection."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        ffn_dim: int,
        dropout: float,
        attention: str,
        attention_options: dict[str, Any],
        norm_first: bool,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = MultiHeadSelfAttention(dim, num_heads, head_dim, attention, attention_options)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.dropout(self.attention(self.attention_norm(x), mask))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
        return self.ffn_norm(x + self.dropout(self.ffn(x)))


class TransformerEncoder(nn.Module):
    """Token ids ``[B, n]`` and padding mask ``[B, n]`` -> hidden states ``[B, n, dim]``
    (``[B, n + 1, dim]`` with the [CLS] vector first when ``prepend_cls``).

    Args:
        vocab_size: number of token ids (id ``padding_id`` is padding).
        max_length: longest accepted input (learned positions); longer is an error.
        dim: model width.
        depth: number of layers.
        num_heads, head_dim: attention heads and their width.
        ffn_dim: hidden width of the feed-forward block.
        dropout: dropout on embeddings, residual branches and the FFN.
        attention: registry name (``"softmax"``, ``"yoso"``, ...).
        attention_options: keyword arguments of that attention (e.g. ``num_hashes``).
        num_segments: > 0 adds segment embeddings (sentence pairs).
        norm_first: pre-LN layers (LRA) or post-LN (BERT).
        prepend_cls: prepend a learned [CLS] vector (output position 0) for CLS pooling;
            it counts towards ``max_length + 1`` positions.
        padding_id: token id of padding (its embedding stays zero).
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 2,
        head_dim: int = 32,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        attention: str = "yoso",
        attention_options: dict[str, Any] | None = None,
        num_segments: int = 0,
        norm_first: bool = True,
        prepend_cls: bool = False,
        padding_id: int = 0,
    ) -> None:
        super().__init__()
        self.max_length = max_length
        self.dim = dim
        self.prepend_cls = prepend_cls
        self.token_embedding = nn.Embedding(vocab_size, dim, padding_idx=padding_id)
        self.position_embedding = nn.Embedding(max_length + int(prepend_cls), dim)
        self.cls_embedding = nn.Parameter(torch.zeros(1, 1, dim)) if prepend_cls else None
        self.segment_embedding = nn.Embedding(num_segments, dim) if num_segments > 0 else None
        self.embedding_dropout = nn.Dropout(dropout)
        options = dict(attention_options or {})
        self.layers = nn.ModuleList(
            EncoderLayer(dim, num_heads, head_dim, ffn_dim, dropout, attention, options, norm_first)
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)

    def forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, length = input_ids.shape
        if length > self.max_length:
            raise ValueError(
                f"input length {length} exceeds the encoder's max_length {self.max_length}; "
                "truncate the data or raise max_length"
            )
        if mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        x = self.token_embedding(input_ids)
        if self.segment_embedding is not None:
            if segment_ids is None:
                segment_ids = torch.zeros_like(input_ids)
            x = x + self.segment_embedding(segment_ids)
        elif segment_ids is not None:
            raise ValueError("segment_ids given but the encoder has num_segments=0")
        if self.cls_embedding is not None:
            x = torch.cat([self.cls_embedding.expand(batch, -1, -1), x], dim=1)
            mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        positions = torch.arange(x.shape[1], device=input_ids.device)
        x = self.embedding_dropout(x + self.position_embedding(positions))
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)
