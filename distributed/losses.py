"""The symmetric CLIP loss, with negatives gathered from every worker and optional soft targets.

Imports only torch. `rank` and `world_size` are arguments, so the loss runs on one CPU in a unit test.

Each worker scores its own B queries against the B x world_size candidates of all workers (open_clip's
`local_loss` with `gather_with_grad`): the mean of the workers' losses is the loss of the concatenated batch,
and since the gather passes gradients back to the worker that owns each feature, the engines' usual gradient
average is exactly the concatenated batch's gradient, at 1/world_size of the compute of the full B_total^2 logits.
The one-hot loss is a fused autograd function (`_SymmetricClip`); `clip_loss_reference` is the same loss in
plain autograd ops, the reference it is tested against and the path of soft targets.

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


# The fused losses below compute exp(logits) once. Features are L2-normalised, so logits = scale * cosine and
# one shift, the batch's largest logit, keeps every exponent <= 0. An entry underflows (exp < 1e-38) only when
# it is more than 87 below that largest logit; a whole row or column underflows only if its best cosine is
# 87/scale (>= 0.87, since CLIP caps the scale at 100) below the batch's best pair; its sum is then floored
# at 1e-38 rather than being exact.
_TINY = 1e-38


class _SymmetricClip(torch.autograd.Function):
    """One-hot symmetric CLIP loss, fused, for this worker's rows of the (B_total x B_total) logits.

    Rows are the local SNP queries against every worker's IDPs; the IDP->SNP direction is the columns, whose
    softmax denominators are the column sums all-reduced over workers (B_total floats), so no SNP features
    are gathered. Forward: one B x B_total product and one exp pass (autograd: two products, four exp passes);
    backward: two products. Each worker's backward is the gradient of world_size x the batch loss through its
    block, so the engines' gradient average is exactly the concatenated batch's gradient.
    """

    @staticmethod
    def forward(ctx, snp: torch.Tensor, idp_all: torch.Tensor, scale: torch.Tensor, rank: int,
                world_size: int) -> torch.Tensor:
        b = snp.shape[0]
        offset = rank * b
        logits = (snp @ idp_all.T).mul_(scale)
        shift = logits.max()
        if world_size > 1:
            dist.all_reduce(shift, op=dist.ReduceOp.MAX)
        weights = logits.sub_(shift).exp_()  # in place: exp(logits - shift)
        rows = weights.sum(dim=1).clamp_min(_TINY)
        cols = weights.sum(dim=0)
        if world_size > 1:
            dist.all_reduce(cols)
        cols = cols.clamp_min(_TINY)
        own = scale * (snp * idp_all[offset:offset + b]).sum(dim=1)
        ctx.offset = offset
        ctx.save_for_backward(snp, idp_all, scale, weights, rows, cols)
        return ((rows.log() + shift - own).mean() + (cols[offset:offset + b].log() + shift - own).mean()) / 2

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        snp, idp_all, scale, weights, rows, cols = ctx.saved_tensors
        b = snp.shape[0]
        g = weights * (1 / rows)[:, None] + weights * (1 / cols)[None, :]  # softmax over rows + over columns
        g[:, ctx.offset:ctx.offset + b].diagonal().sub_(2.0)
        g.mul_(grad / (2 * b))  # d loss / d logits
        g_idp = g @ idp_all
        grad_scale = (snp * g_idp).sum().reshape(1)  # sum(g * cosine): logits = scale * cosine
        return scale * g_idp, scale * (g.T @ snp), grad_scale, None, None


def clip_onehot(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, *, rank: int = 0, world_size: int = 1,
                **_) -> torch.Tensor:
    """The paper's symmetric CLIP loss (row k's partner is candidate k), fused; negatives from every worker."""
    return _SymmetricClip.apply(a, gather_features(b, rank, world_size), logit_scale, rank, world_size)


def clip_soft(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, *, a_key: torch.Tensor,
              b_key: torch.Tensor, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """CLIP with soft targets: candidates whose input equals the partner's (same key) are positives too."""
    return clip_loss_reference(a, b, logit_scale, targets="soft", snp_key=a_key, idp_key=b_key, rank=rank,
                               world_size=world_size)


# Contrastive loss terms by name, each (a, b, logit_scale, *, rank, world_size, [a_key, b_key]) -> this worker's
# share. Tasks combine them (a momentum model's queue loss joins here; CGNI's four terms, `cgni_loss` below, take
# class labels and a fixed temperature instead).
LOSSES = {"onehot": clip_onehot, "soft": clip_soft}


def clip_loss(snp: torch.Tensor, idp: torch.Tensor, logit_scale: torch.Tensor, *, targets: str = "onehot",
              snp_key: torch.Tensor | None = None, idp_key: torch.Tensor | None = None,
              rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This worker's share of the symmetric CLIP loss: mean over its queries of the SNP->IDP and IDP->SNP
    cross-entropies against all workers' candidates. Averaged over workers: the concatenated batch's loss.

    One-hot targets take fused autograd functions (tested against `clip_loss_reference`); soft targets
    take the plain autograd path.
    """
    if targets == "onehot":
        return clip_onehot(snp, idp, logit_scale, rank=rank, world_size=world_size)
    return clip_soft(snp, idp, logit_scale, a_key=snp_key, b_key=idp_key, rank=rank, world_size=world_size)


def clip_loss_reference(snp: torch.Tensor, idp: torch.Tensor, logit_scale: torch.Tensor, *,
                        targets: str = "onehot", snp_key: torch.Tensor | None = None,
                        idp_key: torch.Tensor | None = None, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """`clip_loss` written with plain autograd ops: the reference for the fused path, and the soft-target path."""
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


# ---------------------------------------------------------------- CGNI (paper 002, eqs. 1-5)


def cross_modal_term(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. (1)/(2) as printed: mean over i of -log(exp(a_i.b_i / tau) / sum_{j != i} exp(a_i.b_j / tau)). The
    partner is left out of the denominator (a decoupled contrastive loss); the paper sums over i, we average, so the
    weights mean the same for any batch size."""
    logits = a @ b.T / tau
    own = torch.eye(len(a), dtype=torch.bool, device=a.device)
    return (torch.logsumexp(logits.masked_fill(own, float("-inf")), dim=1) - logits.diagonal()).mean()


def supervised_term(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. (3)/(4): supervised contrast within one modality. For each i with positives P(i) (the other rows of
    its label): -1/|P(i)| sum_{p in P(i)} log(exp(z_i.z_p / tau) / sum_{j != i} exp(z_i.z_j / tau)), averaged over
    the rows that have a positive (0 if none has)."""
    logits = z @ z.T / tau
    own = torch.eye(len(z), dtype=torch.bool, device=z.device)
    log_prob = logits - torch.logsumexp(logits.masked_fill(own, float("-inf")), dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~own
    count = positive.sum(1)
    per_row = -(log_prob * positive).sum(1) / count.clamp(min=1)
    has = count > 0
    return (per_row * has).sum() / has.sum().clamp(min=1)


def cgni_loss(zv: torch.Tensor, zg: torch.Tensor, labels: torch.Tensor, weights, tau: float) -> torch.Tensor:
    """Eq. (5): lambda L(v,g) + sigma L(g,v) + gamma L(v,v) + theta L(g,g) on L2-normalised embeddings of one
    batch (a term of weight 0 is not computed)."""
    zv, zg = F.normalize(zv, dim=-1), F.normalize(zg, dim=-1)
    terms = (lambda: cross_modal_term(zv, zg, tau), lambda: cross_modal_term(zg, zv, tau),
             lambda: supervised_term(zv, labels, tau), lambda: supervised_term(zg, labels, tau))
    return sum(w * term() for w, term in zip(weights, terms) if w)


def queue_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None, tau: float) -> torch.Tensor:
    """InfoNCE with a queue (MoCo): each query's positive is its own key k_i; its negatives are the batch's other
    keys and the queue's (all normalised): mean over i of
    -log(exp(q_i.k_i / tau) / (sum_j exp(q_i.k_j / tau) + sum_m exp(q_i.queue_m / tau))).
    The batch's own keys are negatives too: with batch norm in the towers a positive shares its batch's statistics
    and the queue's keys do not, so with queue negatives only a model could find the positive by those statistics
    (what MoCo's shuffled batch norm prevents). `queue` None: the batch's keys only."""
    logits = q @ k.T if queue is None else torch.cat([q @ k.T, q @ queue.T], 1)
    return F.cross_entropy(logits / tau, torch.arange(len(q), device=q.device))
