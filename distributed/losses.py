"""The symmetric CLIP loss, with negatives gathered from every worker and optional soft targets.

Imports only torch. `rank` and `world_size` are arguments, so the loss runs on one CPU in a unit test.

Each worker scores its own B queries against the B x world_size candidates of all workers (open_clip's
`local_loss` with `gather_with_grad`): the mean of the workers' losses is the loss of the concatenated batch,
and since the gather passes gradients back to the worker that owns each feature, the engines' usual gradient
average is exactly the concatenated batch's gradient, at 1/world_size of the compute of the full B_total^2 logits.

Targets: `onehot` is the paper's (pair k's partner is candidate k). `soft` treats identical inputs as positives:
with a few dozen SNPs x 3 genotypes, most in-batch "negatives" of a SNP are inputs identical to its positive,
which one-hot targets punish the model for matching. A query's target spreads evenly over the candidates whose
SNP input or whose IDP input equals the query pair's.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn import functional as F


class _GatherWithGrad(torch.autograd.Function):
    """All workers' tensors concatenated in rank order; backward returns each worker the summed gradient of its
    slice (an all-reduce, which gloo supports, then a slice)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, local.shape[0]
        parts = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


def gather_features(local: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Every worker's features (equal batch sizes), differentiable; the identity with one worker."""
    return local if world_size == 1 else _GatherWithGrad.apply(local, rank, world_size)


def input_keys(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One int64 per pair naming its SNP input (snp, genotype token) and its IDP input (idp, PLE bin, fraction)."""
    snp_key = batch["snp"].long() * 256 + batch["genotype_token"].long()
    frac_bits = batch["idp_frac"].float().contiguous().view(torch.int32).long() & 0xFFFFFFFF
    idp_key = (batch["idp"].long() << 48) | (batch["idp_bin"].long() << 32) | frac_bits
    return snp_key, idp_key


def clip_loss(snp: torch.Tensor, idp: torch.Tensor, logit_scale: torch.Tensor, *, targets: str = "onehot",
              snp_key: torch.Tensor | None = None, idp_key: torch.Tensor | None = None,
              rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This worker's share of the symmetric CLIP loss: mean over its queries of the SNP->IDP and IDP->SNP
    cross-entropies against all workers' candidates. Averaged over workers: the concatenated batch's loss."""
    all_snp = gather_features(snp, rank, world_size)
    all_idp = gather_features(idp, rank, world_size)
    snp_to_idp = logit_scale * snp @ all_idp.T  # (B, B_total)
    idp_to_snp = logit_scale * idp @ all_snp.T
    own = torch.arange(snp.shape[0], device=snp.device) + rank * snp.shape[0]
    if targets == "onehot":
        return (F.cross_entropy(snp_to_idp, own) + F.cross_entropy(idp_to_snp, own)) / 2
    if targets != "soft":
        raise ValueError(f"targets {targets!r}: expected onehot or soft")
    all_snp_key = _gather_keys(snp_key, world_size)
    all_idp_key = _gather_keys(idp_key, world_size)
    same = (snp_key[:, None] == all_snp_key[None, :]) | (idp_key[:, None] == all_idp_key[None, :])
    target = same.to(snp_to_idp.dtype)
    target = target / target.sum(dim=1, keepdim=True)  # the relation is symmetric: one target for both ways
    return (-(target * F.log_softmax(snp_to_idp, dim=1)).sum(dim=1).mean()
            - (target * F.log_softmax(idp_to_snp, dim=1)).sum(dim=1).mean()) / 2


def _gather_keys(keys: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size == 1:
        return keys
    parts = [torch.empty_like(keys) for _ in range(world_size)]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)
