"""Retrieval metrics of a contrastive batch: pair accuracy (paper), strict top-1, their chance levels.

Imports only torch. For a batch of B pairs and logits[a, b] = scale * snp_a . idp_b:
- pair_accuracy (the paper's and the reference's): the top-1 retrieved partner of each query shares its disease
  bucket; SNP->IDP and IDP->SNP averaged;
- top1_accuracy (strict): the retrieved partner is the pair's own, or an input identical to it;
- *_chance: the expected value of each when the partner is drawn uniformly from the batch.
"""

from __future__ import annotations

import torch

METRICS = ("pair_accuracy", "top1_accuracy", "pair_accuracy_chance", "top1_accuracy_chance")


def retrieval_metrics(logits: torch.Tensor, disease: torch.Tensor, snp_key: torch.Tensor,
                      idp_key: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Sums over the batch's queries (divide by 2B for means) and per-pair correct counts (0-2, strict top-1).

    Returned as tensors on the batch's device, so evaluation never syncs with the host per batch.
    """
    to_idp = logits.argmax(dim=1)  # SNP query a -> IDP column
    to_snp = logits.argmax(dim=0)  # IDP query b -> SNP row
    own = torch.arange(logits.shape[0], device=logits.device)
    same_disease = disease[:, None] == disease[None, :]
    same_snp = snp_key[:, None] == snp_key[None, :]
    same_idp = idp_key[:, None] == idp_key[None, :]
    strict_idp = (to_idp == own) | (idp_key[to_idp] == idp_key)
    strict_snp = (to_snp == own) | (snp_key[to_snp] == snp_key)
    sums = {
        "pair_accuracy": (disease[to_idp] == disease).sum() + (disease[to_snp] == disease).sum(),
        "top1_accuracy": strict_idp.sum() + strict_snp.sum(),
        "pair_accuracy_chance": 2 * same_disease.float().mean(dim=1).sum(),
        "top1_accuracy_chance": same_idp.float().mean(dim=1).sum() + same_snp.float().mean(dim=1).sum(),
    }
    return sums, strict_idp.long() + strict_snp.long()
