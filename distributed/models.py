"""Contrastive models: two towers, two projections to a joint space, L2-normalised (paper 000, section 2.4).

Imports only torch, so it runs in a unit test and in a Ray worker alike. A tower maps its modality's inputs
to features (B x width); `ContrastiveModel` projects both, normalises them and carries the CLIP temperature.

COMICAL's towers (paper: 2 layers, width 64, 4 heads, feed-forward 64; GPT-2 style pre-norm blocks):
- SNP tower: learned embeddings of the SNP's identity and of its genotype token;
- IDP tower: a linear map of the IDP's PLE vector and a learned embedding of its identity.
Two token layouts: `paper`, as the published reference: identity and value concatenated into one token, so
the transformer sees a sequence of length one (attention reduces to its value/output projections); and
`separate`: identity and value are two tokens (plus learned positions), so attention has something to relate.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from comical.data_io.configs import Config
from comical.data_io.errors import InputError


@dataclasses.dataclass(frozen=True)
class ModelConfig(Config):
    layout: str = "paper"  # paper: identity+value in one token; separate: two tokens
    width: int = 64  # transformer model dimension (paper Table 1: 64)
    layers: int = 2  # transformer layers (paper: 2)
    heads: int = 4  # attention heads per layer (paper: 4)
    ff_dim: int = 64  # feed-forward dimension (paper Table 1: 64)
    embed_dim: int = 64  # joint space dimension of the projections W_s, W_i
    dropout: float = 0.0
    init_temperature: float = 0.07  # CLIP's initial temperature; logit scale = 1/T, clamped at 100
    targets: str = "onehot"  # contrastive targets (losses.LOSSES): onehot (the paper's) or soft (identical inputs
    #                          are positives too)
    # A store's SNP inputs (identity x genotype token) take 4 x n_snps values: when a batch is larger, encode each
    # once and look rows up (the same maths and gradients; the tower's cost no longer grows with the batch).
    dedupe_snp_inputs: bool = True

    def __post_init__(self):
        if self.targets not in ("onehot", "soft"):
            raise InputError(f"targets {self.targets!r}: expected onehot or soft")
        if self.layout not in ("paper", "separate"):
            raise InputError(f"model layout {self.layout!r}: expected paper or separate")
        if self.width % self.heads:
            raise InputError(f"model width {self.width} is not divisible by heads {self.heads}")


class Encoder(nn.Module):
    """A stack of GPT-2 style (pre-LayerNorm, GELU) bidirectional transformer blocks, mean-pooled."""

    def __init__(self, config: ModelConfig, seq_len: int):
        super().__init__()
        block = nn.TransformerEncoderLayer(config.width, config.heads, config.ff_dim, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, config.layers, enable_nested_tensor=False)
        self.position = nn.Parameter(torch.zeros(1, seq_len, config.width)) if seq_len > 1 else None
        self.norm = nn.LayerNorm(config.width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, L, width) -> (B, width)
        if self.position is not None:
            tokens = tokens + self.position
        return self.norm(self.blocks(tokens)).mean(dim=1)


class _IdentityValueTower(nn.Module):
    """Identity embedding + value embedding, laid out as one concatenated token or as two tokens."""

    def __init__(self, config: ModelConfig, n_items: int):
        super().__init__()
        self.layout = config.layout
        # paper: identity and value share one token's width; separate: each is a full-width token
        self.value_dim = config.width // 2 if config.layout == "paper" else config.width
        identity_dim = config.width - self.value_dim if config.layout == "paper" else config.width
        self.identity = nn.Embedding(n_items, identity_dim)
        self.encoder = Encoder(config, seq_len=1 if config.layout == "paper" else 2)

    def _encode(self, identity: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        if self.layout == "paper":
            tokens = torch.cat([identity, value], dim=-1).unsqueeze(1)  # (B, 1, width)
        else:
            tokens = torch.stack([identity, value], dim=1)  # (B, 2, width)
        return self.encoder(tokens)


class SnpTower(_IdentityValueTower):
    def __init__(self, config: ModelConfig, n_snps: int, n_tokens: int):
        super().__init__(config, n_snps)
        self.genotype = nn.Embedding(n_tokens, self.value_dim)

    def forward(self, snp: torch.Tensor, genotype_token: torch.Tensor) -> torch.Tensor:
        return self._encode(self.identity(snp), self.genotype(genotype_token))


class IdpTower(_IdentityValueTower):
    def __init__(self, config: ModelConfig, n_idps: int, n_bins: int):
        super().__init__(config, n_idps)
        self.value = nn.Linear(n_bins, self.value_dim)

    def forward(self, idp: torch.Tensor, ple: torch.Tensor) -> torch.Tensor:
        return self._encode(self.identity(idp), self.value(ple))


class ContrastiveModel(nn.Module):
    """Two towers, two bias-free projections, L2 normalisation and a learnable CLIP logit scale.

    `forward(batch)` returns (snp_embeddings, idp_embeddings, logit_scale); the loss is separate (losses.py).
    """

    def __init__(self, config: ModelConfig, snp_tower: nn.Module, idp_tower: nn.Module,
                 snp_token_table: torch.Tensor | None = None):
        super().__init__()
        self.snp_tower, self.idp_tower = snp_tower, idp_tower
        self.snp_projection = nn.Linear(config.width, config.embed_dim, bias=False)  # W_s
        self.idp_projection = nn.Linear(config.width, config.embed_dim, bias=False)  # W_i
        # Shape [1], not a 0-dim tensor: DeepSpeed 0.19.8 cannot broadcast 0-dim parameters.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / config.init_temperature)))
        # Every SNP input the store can hold: per SNP, the missing token (0) and its tokens of 0, 1, 2 copies.
        self.dedupe_snp_inputs = config.dedupe_snp_inputs and snp_token_table is not None
        if self.dedupe_snp_inputs:
            table = torch.as_tensor(snp_token_table, dtype=torch.long)
            self.register_buffer("snp_inputs", torch.cat([torch.zeros(len(table), 1, dtype=torch.long), table], 1),
                                 persistent=False)

    def encode_snps(self, snp: torch.Tensor, genotype_token: torch.Tensor) -> torch.Tensor:
        """Unit-norm SNP embeddings. With a token table and a batch larger than the SNP vocabulary, each of the
        store's (SNP, token) inputs is encoded once and rows are gathered: shapes fixed by the store, no host
        synchronisation (so the step can be compiled and captured in a CUDA graph)."""
        if not self.dedupe_snp_inputs or len(snp) <= self.snp_inputs.numel():
            return self._encode_snps(snp, genotype_token)
        n_snps, width = self.snp_inputs.shape
        everything = self._encode_snps(torch.arange(n_snps, device=snp.device).repeat_interleave(width),
                                       self.snp_inputs.reshape(-1))
        slot = (self.snp_inputs[snp] == genotype_token.unsqueeze(1)).int().argmax(dim=1)  # which of the SNP's inputs
        return everything[snp * width + slot]

    def _encode_snps(self, snp: torch.Tensor, genotype_token: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.snp_projection(self.snp_tower(snp, genotype_token)), dim=-1)

    def encode_idps(self, idp: torch.Tensor, ple: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.idp_projection(self.idp_tower(idp, ple)), dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        snp = self.encode_snps(batch["snp"], batch["genotype_token"])
        idp = self.encode_idps(batch["idp"], batch["ple"])
        return snp, idp, self.logit_scale.clamp(max=math.log(100)).exp()  # CLIP clamps the scale at 100


def build_comical_model(config: ModelConfig, *, n_snps: int, n_tokens: int, n_idps: int, n_bins: int,
                        snp_token_table=None) -> ContrastiveModel:
    """COMICAL's SNP and IDP towers for a pair store of these sizes (from its manifest)."""
    return ContrastiveModel(config, SnpTower(config, n_snps, n_tokens), IdpTower(config, n_idps, n_bins),
                            snp_token_table)
