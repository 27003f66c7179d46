"""The metrics every task and evaluation shares: retrieval in a contrastive batch, each with the level a model
without genotype-phenotype signal reaches, and the cross-validated ridge R^2 of a planted latent.

Imports torch and numpy (scikit-learn inside `ridge_r2`). For a batch of B pairs and logits[a, b] = scale *
snp_a . idp_b, each pair is queried both ways (SNP -> IDP over the columns, IDP -> SNP over the rows):
- bucket_accuracy (the paper's `pair accuracy`): the top-1 retrieved partner shares the query's disease bucket.
  Every SNP of a bucket is paired with every IDP of it, so identities alone reach 1.0: it measures bucket
  membership, not association. `bucket_accuracy_chance`: a uniformly random pick (share of same-bucket candidates).
- within_bucket_accuracy: the query retrieves among the batch's candidates of its own bucket only; correct =
  its own partner, or a candidate whose input is identical to the partner's. Two reference levels:
  `within_bucket_accuracy_chance`: a uniformly random pick among the bucket's candidates (per query: correct
  candidates / bucket candidates, averaged);
  `within_bucket_accuracy_null`: the model's own picks scored as if the partner's value (genotype, or IDP value)
  were independent of the query. The partner's identity (which SNP, which IDP) is known, so under that null the
  partner is exchangeable with the bucket's candidates of the same identity, and a query is right with
  probability 1[picked identity == partner's] x (candidates whose input equals the pick / candidates of the
  partner's identity). It is exact per query, whatever the model prefers: a model that always picks the
  commonest genotype, or maps each IDP to one SNP, beats `_chance` but not `_null`. Only an association
  between genotype and IDP value lifts the accuracy above `_null`; `comical associate` tests it per pair.
- top1_accuracy (strict, over the whole batch): the retrieved candidate is the partner or identical to it.
"""

from __future__ import annotations

import numpy as np
import torch


def retrieval_metrics(logits: torch.Tensor, disease: torch.Tensor, snp_key: torch.Tensor, idp_key: torch.Tensor,
                      snp_id: torch.Tensor, idp_id: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Sums over the batch's 2B queries (divide by 2B for means), and per-row strict top-1 hits.

    `snp_key`/`idp_key` name each pair's whole input (identity and value), `snp_id`/`idp_id` its identity.

    Returned as tensors on the batch's device, so evaluation never syncs with the host per batch.
    """
    own = torch.arange(logits.shape[0], device=logits.device)
    same_bucket = disease[:, None] == disease[None, :]  # symmetric: candidate b of query a, and a of b
    same_snp = snp_key[:, None] == snp_key[None, :]
    same_idp = idp_key[:, None] == idp_key[None, :]
    bucket_size = same_bucket.sum(dim=1).float()
    to_idp = logits.argmax(dim=1)  # SNP query a -> IDP column
    to_snp = logits.argmax(dim=0)  # IDP query b -> SNP row
    masked = logits.masked_fill(~same_bucket, float("-inf"))
    in_idp = masked.argmax(dim=1)
    in_snp = masked.argmax(dim=0)
    idp_kin = (idp_id[:, None] == idp_id[None, :]) & same_bucket  # candidates of the partner's identity
    snp_kin = (snp_id[:, None] == snp_id[None, :]) & same_bucket
    within = {
        "correct_snp_to_idp": (idp_key[in_idp] == idp_key).float(),
        "null_snp_to_idp": (same_idp[in_idp] & same_bucket).sum(dim=1).float() / idp_kin.sum(dim=1)
                           * (idp_id[in_idp] == idp_id).float(),
        "correct_idp_to_snp": (snp_key[in_snp] == snp_key).float(),
        "null_idp_to_snp": (same_snp[in_snp] & same_bucket).sum(dim=1).float() / snp_kin.sum(dim=1)
                           * (snp_id[in_snp] == snp_id).float(),
    }
    strict_idp = (to_idp == own) | (idp_key[to_idp] == idp_key)
    strict_snp = (to_snp == own) | (snp_key[to_snp] == snp_key)
    # per row, its two queries' within-bucket hits above their nulls: the standard error of the lift comes from these
    rows = {"top1_correct": strict_idp.float() + strict_snp.float(),
            "within_bucket_lift": (within["correct_snp_to_idp"] - within["null_snp_to_idp"]
                                   + within["correct_idp_to_snp"] - within["null_idp_to_snp"]) / 2}
    sums = {
        "bucket_accuracy": (disease[to_idp] == disease).sum() + (disease[to_snp] == disease).sum(),
        "bucket_accuracy_chance": 2 * same_bucket.float().mean(dim=1).sum(),
        "within_bucket_accuracy": within["correct_snp_to_idp"].sum() + within["correct_idp_to_snp"].sum(),
        "within_bucket_accuracy_chance": ((same_idp & same_bucket).sum(dim=1) / bucket_size).sum()
                                         + ((same_snp & same_bucket).sum(dim=1) / bucket_size).sum(),
        "within_bucket_accuracy_null": within["null_snp_to_idp"].sum() + within["null_idp_to_snp"].sum(),
        "top1_accuracy": strict_idp.sum() + strict_snp.sum(),
        "top1_accuracy_chance": same_idp.float().mean(dim=1).sum() + same_snp.float().mean(dim=1).sum(),
    }
    return sums, rows


def paired_top1(a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tasks of paired views (one row, two views: toy, GEMCONT): top-1 retrieval of each row's other view among the
    batch's rows, both ways, summed over rows; its chance is 1/B per row (summed: 1)."""
    sim = a @ b.T
    own = torch.arange(len(a), device=a.device)
    hits = ((sim.argmax(dim=1) == own).float() + (sim.argmax(dim=0) == own).float()) / 2
    return {"top1_accuracy": hits.sum(), "top1_accuracy_chance": torch.ones((), device=a.device)}


def paired_epoch_line(m: dict, unit: str = "samples") -> str:
    return (f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}, val loss {m['val_loss']:.4f}, val top-1 "
            f"{m['val_top1_accuracy']:.3f} (chance {m['val_top1_accuracy_chance']:.4f}), "
            f"{m['samples_per_s']:,.0f} {unit}/s")


def ridge_predictions(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """5-fold out-of-fold predictions of y by a ridge regression on x (scikit-learn; penalty chosen in each fold)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_predict

    return cross_val_predict(RidgeCV(alphas=np.logspace(-3, 3, 13)), x, y, cv=5)


def ridge_r2(x: np.ndarray, y: np.ndarray) -> float:
    """5-fold cross-validated R^2 of a ridge regression of y on x, averaged over y's columns."""
    from sklearn.metrics import r2_score

    return float(r2_score(y, ridge_predictions(x, y)))
