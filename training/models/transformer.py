"""The encoder-decoder Transformer translator, decomposed as in the Annotated Transformer.

Pre-norm residual blocks, sinusoidal positional encoding, optionally one embedding matrix shared
by source, target and output projection (a joint vocabulary). `encode` and `decode` are kept
apart; `decode_step` runs one cached step for any number of rows at different lengths, which is
what export turns into `decoder.onnx`.

Legend: B batch, S source length, T target length, P cached (past) length, R decoder rows,
D model width, H heads, K head width (D / H), L decoder layers, V vocabulary.
Masks: True = may attend (see `masks.py`).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual alias

from training.models.dropout import Dropout
from training.models.masks import pad_mask, target_mask
from training.translator_config import TranslatorConfig

__all__ = ["EncoderDecoder", "TranslatorConfig", "attention", "count_parameters", "make_model"]

NEG_INF = -1e9  # finite fill for masked scores


def clones(module: nn.Module, n: int) -> nn.ModuleList:
    """N independent copies of a module."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(n))


def attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention. q [B, H, Tq, K], k/v [B, H, Tk, K], mask broadcastable to
    [B, H, Tq, Tk] (True = attend) -> (output [B, H, Tq, K], probabilities [B, H, Tq, Tk])."""
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.size(-1))  # [B, H, Tq, Tk]
    if mask is not None:
        scores = scores.masked_fill(~mask, NEG_INF)
    p_attn = scores.softmax(dim=-1)  # [B, H, Tq, Tk]
    if dropout is not None:
        p_attn = dropout(p_attn)
    return p_attn @ value, p_attn  # [B, H, Tq, Tk] x [B, H, Tk, K] -> [B, H, Tq, K]


class MultiHeadedAttention(nn.Module):
    """Multi-head attention whose key/value projection is exposed, for caching."""

    def __init__(self, h: int, d_model: int, dropout: float = 0.1) -> None:
        super().__init__()
        assert d_model % h == 0, f"d_model {d_model} is not divisible by {h} heads"
        self.h, self.d_k = h, d_model // h
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = Dropout(dropout)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b = x.size(0)
        return x.view(b, -1, self.h, self.d_k).transpose(1, 2)  # [B, T, D] -> [B, H, T, K]

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of x [B, T, D] -> ([B, H, T, K], [B, H, T, K])."""
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """query [B, Tq, D] over projected key/value [B, H, Tk, K]; mask [B, Tq|1, Tk]
        -> [B, Tq, D]."""
        b = query.size(0)
        q = self.split(self.q_proj(query))  # [B, Tq, D] -> [B, H, Tq, K]
        m = mask.unsqueeze(1) if mask is not None else None  # [B, 1, Tq|1, Tk]
        x, _ = attention(q, key, value, m, self.dropout)  # [B, H, Tq, K]
        x = x.transpose(1, 2).reshape(b, -1, self.h * self.d_k)  # [B, H, Tq, K] -> [B, Tq, D]
        return self.out_proj(x)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [B, Tq, D], key/value [B, Tk, D], mask [B, Tq|1, Tk] -> [B, Tq, D]."""
        return self.attend(
            query, self.split(self.k_proj(key)), self.split(self.v_proj(value)), mask
        )


ACTIVATION: dict[str, nn.Module] = {"relu": nn.ReLU(), "gelu": nn.GELU(), "swish": nn.SiLU()}


class PositionwiseFeedForward(nn.Module):
    """FFN(x) = W2 dropout(act(W1 x)), act relu unless told. [B, T, D] -> [B, T, D]."""

    def __init__(
        self, d_model: int, d_ff: int, dropout: float = 0.1, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout)
        self.act = ACTIVATION[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(self.act(self.w_1(x))))  # [B, T, D] -> [B, T, F] -> [B, T, D]


class SublayerConnection(nn.Module):
    """Residual around a sublayer. Pre-norm: x + dropout(sublayer(norm(x))); post-norm:
    norm(x + dropout(sublayer(x)))."""

    def __init__(self, size: int, dropout: float, norm_first: bool = True) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(size)
        self.dropout = Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, sublayer: nn.Module) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderLayer(nn.Module):
    """Self-attention, then feed-forward."""

    def __init__(
        self,
        size: int,
        self_attn: MultiHeadedAttention,
        feed_forward: PositionwiseFeedForward,
        dropout: float,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.self_attn, self.feed_forward = self_attn, feed_forward
        self.sublayer = clones(SublayerConnection(size, dropout, norm_first), 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, S, D], mask [B, 1, S] -> [B, S, D]."""
        x = self.sublayer[0](x, lambda h: self.self_attn(h, h, h, mask))
        return self.sublayer[1](x, self.feed_forward)


def final_norm(sublayer: SublayerConnection) -> nn.Module:
    """Pre-norm stacks end with a norm; post-norm ones are normalised already."""
    if sublayer.norm_first:
        return nn.LayerNorm(sublayer.norm.normalized_shape)
    return nn.Identity()


class Encoder(nn.Module):
    """N encoder layers and a final norm (pre-norm needs it)."""

    def __init__(self, layer: EncoderLayer, n: int) -> None:
        super().__init__()
        self.layers = clones(layer, n)
        self.norm = final_norm(layer.sublayer[0])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Masked self-attention over cached plus new positions, source attention, feed-forward."""

    def __init__(
        self,
        size: int,
        self_attn: MultiHeadedAttention,
        src_attn: MultiHeadedAttention,
        feed_forward: PositionwiseFeedForward,
        dropout: float,
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.self_attn, self.src_attn, self.feed_forward = self_attn, src_attn, feed_forward
        self.sublayer = clones(SublayerConnection(size, dropout, norm_first), 3)

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        self_mask: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D] (new positions), past_k/v [B, H, P, K], self_mask [B, T, P+T],
        cross_k/v [B, H, S, K], src_mask [B, 1, S]
        -> (x [B, T, D], present_k [B, H, P+T, K], present_v [B, H, P+T, K])."""
        present: list[torch.Tensor] = []  # this layer's keys and values, [B, H, P+T, K] each

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            k, v = self.self_attn.project_kv(h)  # [B, H, T, K] each
            present.extend((torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)))
            return self.self_attn.attend(h, *present, self_mask)  # [B, T, D]

        x = self.sublayer[0](x, self_attention)
        x = self.sublayer[1](x, lambda h: self.src_attn.attend(h, cross_k, cross_v, src_mask))
        k, v = present
        return self.sublayer[2](x, self.feed_forward), k, v


class Decoder(nn.Module):
    """N decoder layers and a final norm."""

    def __init__(self, layer: DecoderLayer, n: int) -> None:
        super().__init__()
        self.layers = clones(layer, n)
        self.norm = final_norm(layer.sublayer[0])

    def forward(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        self_mask: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D], past_k/v [L, B, H, P, K], self_mask [B, T, P+T], cross_k/v
        [L, B, H, S, K], src_mask [B, 1, S] -> (x [B, T, D], present_k/v [L, B, H, P+T, K])."""
        present_k, present_v = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, past_k[i], past_v[i], self_mask, cross_k[i], cross_v[i], src_mask)
            present_k.append(k)
            present_v.append(v)
        return self.norm(x), torch.stack(present_k), torch.stack(present_v)


class Embeddings(nn.Module):
    """Token embedding scaled by sqrt(D) (unless `scale` is False). [B, T] int64 -> [B, T, D]."""

    def __init__(self, d_model: int, vocab: int, scale: bool = True) -> None:
        super().__init__()
        self.lut = nn.Embedding(vocab, d_model)
        self.scale = math.sqrt(d_model) if scale else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lut(x) * self.scale  # [B, T] -> [B, T, D]


class PositionalEncoding(nn.Module):
    """Adds sinusoidal encodings looked up by explicit positions (rows may be at different
    steps), then dropout."""

    def __init__(
        self, d_model: int, dropout: float, max_len: int, layout: str = "interleaved"
    ) -> None:
        super().__init__()
        self.dropout = Dropout(dropout)
        if layout == "interleaved":  # sin, cos, sin, cos, ... (float32, as trained)
            position = torch.arange(max_len).unsqueeze(1)  # [max_len, 1]
            div_term = torch.exp(torch.arange(0, d_model, 2) * -(math.log(10000.0) / d_model))
            pe = torch.zeros(max_len, d_model)  # [max_len, D]
            pe[:, 0::2] = torch.sin(position * div_term)
            pe[:, 1::2] = torch.cos(position * div_term)
        else:  # "halves": every sin, then every cos, computed in float64 as Marian's
            position = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)  # [max_len, 1]
            exponent = torch.arange(0, d_model, 2, dtype=torch.float64) / d_model
            angle = position / torch.pow(10000.0, exponent)  # [max_len, D/2]
            pe = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1).float()  # [max_len, D]
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], positions [B, T] int64 -> [B, T, D]."""
        return self.dropout(x + self.pe[positions])  # pe[positions]: [B, T, D]


class Generator(nn.Module):
    """Final projection to log-probabilities. [..., D] -> [..., V]."""

    def __init__(self, d_model: int, vocab: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.proj(x), dim=-1)


class EncoderDecoder(nn.Module):
    """The translator. Inputs and outputs are documented per method."""

    def __init__(
        self,
        config: TranslatorConfig,
        encoder: Encoder,
        decoder: Decoder,
        src_embed: Embeddings,
        tgt_embed: Embeddings,
        position: PositionalEncoding,
        generator: Generator,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder, self.decoder = encoder, decoder
        self.src_embed, self.tgt_embed = src_embed, tgt_embed
        self.position, self.generator = position, generator

    @staticmethod
    def positions(ids: torch.Tensor) -> torch.Tensor:
        """0..T-1 for every row. [B, T] -> [B, T] int64."""
        return torch.arange(ids.size(1), device=ids.device).expand(ids.size(0), -1)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """src [B, S] int64, src_mask [B, 1, S] bool -> memory [B, S, D]."""
        x = self.position(self.src_embed(src), self.positions(src))  # [B, S, D]
        return self.encoder(x, src_mask)

    def cross_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every decoder layer's source keys and values. memory [B, S, D]
        -> (cross_k [L, B, H, S, K], cross_v [L, B, H, S, K])."""
        kv = [layer.src_attn.project_kv(memory) for layer in self.decoder.layers]
        return torch.stack([k for k, _ in kv]), torch.stack([v for _, v in kv])

    def decode_cached(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        self_mask: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New target tokens over a key/value cache.

        Inputs: tokens [B, T] int64, positions [B, T] int64, past_k/v [L, B, H, P, K],
        self_mask [B, T, P+T] bool, cross_k/v [L, B, H, S, K], src_mask [B, 1, S] bool.
        Outputs: hidden [B, T, D], present_k/v [L, B, H, P+T, K].
        """
        x = self.position(self.tgt_embed(tokens), positions)  # [B, T, D]
        return self.decoder(x, past_k, past_v, self_mask, cross_k, cross_v, src_mask)

    def decode(
        self,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        tgt: torch.Tensor,
        tgt_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher forcing. memory [B, S, D], src_mask [B, 1, S], tgt [B, T], tgt_mask
        [B, T, T] -> hidden [B, T, D]."""
        cross_k, cross_v = self.cross_kv(memory)  # [L, B, H, S, K] each
        c = self.config
        empty = cross_k.new_zeros(
            c.num_decoder_layers, tgt.size(0), c.num_heads, 0, c.head_dim
        )  # [L, B, H, 0, K]
        hidden, _, _ = self.decode_cached(
            tgt, self.positions(tgt), empty, empty, tgt_mask, cross_k, cross_v, src_mask
        )
        return hidden

    def logits(
        self, src: torch.Tensor, tgt: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced scores before the softmax (training's loss takes these, so the
        log-softmax over V runs once). src [B, S], tgt [B, T] (BOS-prefixed) -> [B, T, V];
        with `keep` [B, T] (bool), only those positions, in row-major order: [N, V]."""
        pad = self.config.pad_id
        src_mask = pad_mask(src, pad)  # [B, 1, S]
        memory = self.encode(src, src_mask)  # [B, S, D]
        hidden = self.decode(memory, src_mask, tgt, target_mask(tgt, pad))  # [B, T, D]
        if keep is not None:
            hidden = hidden[keep]  # [N, D]: the projection skips padded positions
        return self.generator.proj(hidden)  # [B, T, V] or [N, V]

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Teacher-forced log-probabilities. src [B, S], tgt [B, T] -> [B, T, V]."""
        return F.log_softmax(self.logits(src, tgt), dim=-1)

    def decode_step(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        past_mask: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        src_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One decoding step for R independent rows (what `decoder.onnx` computes).

        Inputs: tokens [R, 1] int64 (last token of each row), positions [R, 1] int64 (its
        position), past_k/v [L, R, H, P, K] (P may be 0), past_mask [R, P] bool (which cached
        slots belong to the row), cross_k/v [L, R, H, S, K], src_mask [R, S] bool.
        Outputs: log_probs [R, V], present_k/v [L, R, H, P+1, K].
        """
        ones = torch.ones_like(tokens, dtype=torch.bool)  # [R, 1]
        self_mask = torch.cat([past_mask, ones], dim=1).unsqueeze(1)  # [R, 1, P+1]
        hidden, k, v = self.decode_cached(
            tokens, positions, past_k, past_v, self_mask, cross_k, cross_v, src_mask.unsqueeze(1)
        )
        return self.generator(hidden[:, -1]), k, v  # [R, V], [L, R, H, P+1, K] x2


def make_model(config: TranslatorConfig) -> EncoderDecoder:
    """Build the network from its config: prototypes deep-copied into place, Xavier init, and
    embeddings N(0, D^-0.5) (tied to the generator when `tie_embeddings`)."""
    c = copy.deepcopy
    d, v = config.d_model, config.vocab_size
    attn = MultiHeadedAttention(config.num_heads, d, config.attention_p)
    ff = PositionwiseFeedForward(d, config.d_ff, config.activation_p, config.activation)
    pre, drop = config.norm == "pre", config.dropout
    model = EncoderDecoder(
        config,
        Encoder(EncoderLayer(d, c(attn), c(ff), drop, pre), config.num_encoder_layers),
        Decoder(DecoderLayer(d, c(attn), c(attn), c(ff), drop, pre), config.num_decoder_layers),
        Embeddings(d, v, config.scale_embedding),
        Embeddings(d, v, config.scale_embedding),
        PositionalEncoding(d, drop, config.max_len, config.position_layout),
        Generator(d, v),
    )
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for emb in (model.src_embed, model.tgt_embed):
        nn.init.normal_(emb.lut.weight, mean=0.0, std=d**-0.5)
        with torch.no_grad():
            emb.lut.weight[config.pad_id].zero_()
    if config.tie_embeddings:
        model.tgt_embed.lut.weight = model.src_embed.lut.weight
        model.generator.proj.weight = model.src_embed.lut.weight
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters; `parameters()` yields a tied matrix once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
