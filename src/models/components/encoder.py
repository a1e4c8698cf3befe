"""The one Transformer encoder every task shares.

Reads like the architecture section of the papers it serves (LRA harness and
BERT-small): token embedding + learned positions (+ segments for sentence
pairs), then ``depth`` layers of

    x = x + Dropout(W_o · Attention(W_q·LN(x), W_k·LN(x), W_v·LN(x), mask))
    x = x + Dropout(FFN(LN(x)))        FFN = Linear -> GELU -> Dropout -> Linear

(pre-LayerNorm, as in the LRA code the YOSO paper used; ``norm_first=False``
gives the post-LN BERT layout), and a final LayerNorm. The options ``embedding_norm``,
``position_offset``, ``layer_norm_eps`` and ``activation`` (defaults: off / 0 / 1e-5 /
GELU) exist so that a RoBERTa-style model, e.g. the authors' ``transformers`` YOSO
(``src.interop.hf_yoso``), is held exactly. The attention is a
factory called as ``attention(num_heads, head_dim)`` once per layer: a class
from ``src.models.components`` (or any user class with that constructor head),
usually given by a config as ``class_path`` + ``init_args``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

AttentionFactory = Callable[[int, int], nn.Module]
"""Builds one layer's attention from ``(num_heads, head_dim)``; ``forward(q, k, v, mask)``."""

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,  # exact (erf) GELU: BERT's and transformers' "gelu"
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),  # transformers' "gelu_new" / "gelu_pytorch_tanh"
    "relu": nn.ReLU,
}


def make_activation(name: str) -> nn.Module:
    """The FFN's (and the LM head's) activation by name; an unknown name lists the known ones."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class MultiHeadSelfAttention(nn.Module):
    """Project to heads, run the chosen attention, merge heads back."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, attention: AttentionFactory) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.query = nn.Linear(dim, inner)
        self.key = nn.Linear(dim, inner)
        self.value = nn.Linear(dim, inner)
        self.attention = attention(num_heads, head_dim)
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
        attention: AttentionFactory,
        norm_first: bool,
        layer_norm_eps: float = 1e-5,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.attention_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attention = MultiHeadSelfAttention(dim, num_heads, head_dim, attention)
        self.ffn_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            make_activation(activation),
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
    """Token ids ``[B, n]`` and padding mask ``[B, n]`` -> hidden states ``[B, n, dim]``.

    A [CLS] token, where a task uses one, is an ordinary token id that the
    DataModule prepends; the encoder needs no switch for it.

    Args:
        vocab_size: number of token ids (id ``padding_id`` is padding).
        max_length: longest accepted input (learned positions); longer is an error.
        attention: factory called as ``attention(num_heads, head_dim)`` for each layer, e.g.
            ``functools.partial(YOSOAttention, num_hashes=32, hash_code_len=11)`` or
            ``SoftmaxAttention``; in a config, a ``class_path`` with ``init_args``.
        dim: model width.
        depth: number of layers.
        num_heads, head_dim: attention heads and their width.
        ffn_dim: hidden width of the feed-forward block.
        dropout: dropout on embeddings, residual branches and the FFN.
        num_segments: > 0 adds segment embeddings (sentence pairs).
        norm_first: pre-LN layers (LRA) or post-LN (BERT).
        padding_id: token id of padding (its embedding stays zero).
        embedding_norm: a LayerNorm on the summed embeddings, before dropout (RoBERTa,
            ``transformers``' YOSO); off by default.
        position_offset: position ``i`` reads row ``i + position_offset`` of a table of
            ``max_length + position_offset`` rows (RoBERTa / ``transformers``' YOSO: 2).
        layer_norm_eps: epsilon of every LayerNorm (``transformers``' YOSO: 1e-12).
        activation: the FFN's activation, a key of ``ACTIVATIONS`` (exact ``"gelu"`` by default).
        position_init: how the learned position table starts: ``normal`` (std 0.02, every
            task's default) or ``sincos_2d``: the positions are the pixels of a square image
            (``max_length`` = side²) and row ``r * side + c`` starts as sines and cosines of
            ``r`` and ``c`` (``dim / 4`` frequencies each, periods 4 to 4·side pixels), so
            nearby pixels start with similar rows. An image prior the LRA rules leave out:
            the Pathfinder quickstart uses it to learn in minutes (docs/lra.md).
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        attention: AttentionFactory,
        dim: int = 64,
        depth: int = 2,
        num_heads: int = 2,
        head_dim: int = 32,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        num_segments: int = 0,
        norm_first: bool = True,
        padding_id: int = 0,
        embedding_norm: bool = False,
        position_offset: int = 0,
        layer_norm_eps: float = 1e-5,
        activation: str = "gelu",
        position_init: str = "normal",
    ) -> None:
        super().__init__()
        if position_offset < 0:
            raise ValueError(f"position_offset must be >= 0, got {position_offset}")
        if position_init not in POSITION_INITS:
            raise ValueError(f"position_init must be one of {POSITION_INITS}, got {position_init!r}")
        make_activation(activation)  # an unknown name fails here, once
        self.max_length = max_length
        self.dim = dim
        self.position_offset = position_offset
        self.layer_norm_eps = layer_norm_eps
        self.activation = activation
        self.token_embedding = nn.Embedding(vocab_size, dim, padding_idx=padding_id)
        self.position_embedding = nn.Embedding(max_length + position_offset, dim)
        self.segment_embedding = nn.Embedding(num_segments, dim) if num_segments > 0 else None
        # Created only when asked for: existing models keep their parameters, in their order.
        self.embedding_norm = nn.LayerNorm(dim, eps=layer_norm_eps) if embedding_norm else None
        self.embedding_dropout = nn.Dropout(dropout)
        if not callable(attention):
            raise TypeError(f"attention must be a class or factory called as attention(num_heads, head_dim), "
                            f"got {attention!r}")
        self.layers = nn.ModuleList(
            EncoderLayer(dim, num_heads, head_dim, ffn_dim, dropout, attention, norm_first,
                         layer_norm_eps, activation)
            for _ in range(depth)
        )
        self.final_norm = nn.LayerNorm(dim, eps=layer_norm_eps) if norm_first else nn.Identity()
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        if position_init == "sincos_2d":
            with torch.no_grad():
                self.position_embedding.weight[position_offset:] = sincos_2d_positions(max_length, dim)
        with torch.no_grad():  # normal_ overwrote the padding row that nn.Embedding zeroed
            self.token_embedding.weight[padding_id].zero_()

    def forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
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
        if position_ids is None:
            positions = torch.arange(x.shape[1], device=input_ids.device)
        else:
            positions = self._checked_positions(position_ids, input_ids.shape)
        x = x + self.position_embedding(positions + self.position_offset)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.embedding_dropout(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x)


    def _checked_positions(self, position_ids: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """``position_ids`` (compacted inputs: each kept token with its original position), checked.

        A compacted sequence drops masked tokens, which changes nothing only for attentions that
        see the tokens as a set (softmax, YOSO, YOSO-E, Performer); one that reads the sequence
        order (YOSO-C's convolution, Nystrom's segment landmarks, Linformer's projection along
        the sequence) would silently compute something else, so it is refused.
        """
        if position_ids.shape != shape:
            raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}, input_ids {tuple(shape)}: "
                             "give one position per token")
        low, high = (int(position_ids.min()), int(position_ids.max())) if position_ids.numel() else (0, 0)
        if low < 0 or high >= self.max_length:
            raise ValueError(f"position_ids must lie in [0, {self.max_length}) (the encoder's max_length), "
                             f"got [{low}, {high}]")
        ordered = self.order_reading_attention()
        if ordered:
            raise ValueError(compaction_refusal(ordered))
        return position_ids

    def order_reading_attention(self) -> str | None:
        """The class name of the first layer's attention that reads the sequence order, or None."""
        for layer in self.layers:
            attention = layer.attention.attention
            if getattr(attention, "reads_sequence_order", True):
                return type(attention).__name__
        return None


def compaction_refusal(attention: str) -> str:
    """Why compacted inputs (``position_ids``) cannot run through ``attention``, and the fixes."""
    return (f"{attention} reads the sequence order, so it cannot run on compacted inputs (position_ids): "
            "turn the data's compaction off (compact_masked: false) or use an attention that sees tokens "
            "as a set (softmax, YOSO without conv_window, YOSO-E, Performer)")


POSITION_INITS: tuple[str, ...] = ("normal", "sincos_2d")


def sincos_2d_positions(length: int, dim: int) -> torch.Tensor:
    """``[length, dim]`` rows for the pixels of a square image, ``length = side²`` in row-major order:
    ``[sin(r·w), cos(r·w), sin(c·w), cos(c·w)]`` with ``dim / 4`` frequencies ``w`` from π/2
    (a period of 4 pixels) down to π/(2·side)."""
    side = math.isqrt(length)
    if side * side != length or dim % 4:
        raise ValueError(f"position_init='sincos_2d' needs max_length a square (the image's pixels) and dim"
                         f" a multiple of 4, got max_length={length}, dim={dim}")
    frequencies = (math.pi / 2) * side ** (-torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    index = torch.arange(length)
    rows = (index // side).double()[:, None] * frequencies
    cols = (index % side).double()[:, None] * frequencies
    return torch.cat([rows.sin(), rows.cos(), cols.sin(), cols.cos()], dim=1).float()


def repeat_position_rows(table: torch.Tensor, length: int, offset: int = 0) -> torch.Tensor:
    """A learned position table grown to ``length`` positions by repeating its trained rows.

    The copy initialisation that took 512-position encoders to 4096 (Longformer): row
    ``offset + i`` of the result is trained row ``offset + i % trained``, so the first rows
    are unchanged and every new row starts from a position the model already knows. The
    ``offset`` rows before position 0 (``transformers``' padding offset) are kept as they are.
    """
    trained = table.shape[0] - offset
    if trained < 1 or length < trained:
        raise ValueError(f"cannot grow a table of {trained} positions to {length}")
    rows = torch.arange(length, device=table.device) % trained + offset
    return torch.cat([table[:offset], table[rows]])

