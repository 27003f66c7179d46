"""The CLIP loss against a plain computation, gathered negatives against one process, and the metrics."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from comical.distributed.losses import clip_loss
from comical.distributed.metrics import retrieval_metrics
from comical.distributed.models import ModelConfig, build_comical_model


def _plain_clip_loss(snp, idp, scale, target):
    """Row by row, in float64: -sum_b t[a,b] log softmax(scale * s_a . i_b) over both directions."""
    s, i, t = snp.double().numpy(), idp.double().numpy(), target.double().numpy()
    total = 0.0
    for logits in (scale * s @ i.T, scale * i @ s.T):
        for a in range(len(s)):
            row = logits[a] - logits[a].max()
            log_p = row - np.log(np.exp(row).sum())
            total -= (t[a] / t[a].sum() * log_p).sum() / len(s)
    return total / 2


def test_onehot_and_soft_losses_equal_the_plain_computation():
    g = torch.Generator().manual_seed(0)
    snp = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    idp = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    scale = torch.tensor([7.5])
    assert clip_loss(snp, idp, scale).item() == pytest.approx(_plain_clip_loss(snp, idp, 7.5, torch.eye(12)), rel=1e-5)
    snp_key = torch.tensor([1, 1, 2, 3, 1, 4, 5, 6, 7, 8, 9, 2])
    idp_key = torch.tensor([10, 11, 12, 13, 14, 10, 16, 17, 18, 19, 20, 21])
    same = ((snp_key[:, None] == snp_key[None]) | (idp_key[:, None] == idp_key[None])).double()
    soft = clip_loss(snp, idp, scale, targets="soft", snp_key=snp_key, idp_key=idp_key)
    assert soft.item() == pytest.approx(_plain_clip_loss(snp, idp, 7.5, same), rel=1e-5)
    assert soft.item() < clip_loss(snp, idp, scale).item() + 1  # sanity: same scale of loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, snp, idp, scale, targets, keys, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = slice(rank * len(snp) // world, (rank + 1) * len(snp) // world)
    s, i = snp[rows].clone().requires_grad_(), idp[rows].clone().requires_grad_()
    snp_key, idp_key = (k[rows] for k in keys)
    loss = clip_loss(s, i, scale, targets=targets, snp_key=snp_key, idp_key=idp_key, rank=rank, world_size=world)
    loss.backward()
    out[rank] = (loss.item(), s.grad, i.grad)
    dist.destroy_process_group()


@pytest.mark.parametrize("targets", ["onehot", "soft"])
def test_gathered_negatives_equal_the_single_process_loss_and_gradient(targets):
    g = torch.Generator().manual_seed(1)
    snp = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    idp = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    keys = (torch.randint(0, 4, (16,), generator=g), torch.randint(0, 6, (16,), generator=g))
    scale = torch.tensor([5.0])
    s, i = snp.clone().requires_grad_(), idp.clone().requires_grad_()
    single = clip_loss(s, i, scale, targets=targets, snp_key=keys[0], idp_key=keys[1])
    single.backward()
    with mp.get_context("spawn").Manager() as manager:  # a forked manager would break the Ray driver's gRPC
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), snp, idp, scale, targets, keys, out), nprocs=2, join=True)
        out = dict(out)  # copied before the manager's process stops with the block
    # The workers' mean loss is the concatenated batch's loss; the engine's gradient mean is its gradient.
    assert (out[0][0] + out[1][0]) / 2 == pytest.approx(single.item(), rel=1e-6)
    torch.testing.assert_close(torch.cat([out[0][1], out[1][1]]) / 2, s.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([out[0][2], out[1][2]]) / 2, i.grad, rtol=1e-5, atol=1e-7)


def test_retrieval_metrics_by_hand():
    logits = torch.tensor([[9.0, 1, 0], [0, 1, 9], [0, 9, 1]])  # SNP rows -> IDP columns 0, 2, 1
    disease = torch.tensor([0, 1, 1])
    snp_id, idp_id = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1])
    snp_key, idp_key = torch.tensor([1, 2, 3]), torch.tensor([7, 8, 8])  # IDPs 1 and 2 are identical inputs
    sums, rows = retrieval_metrics(logits, disease, snp_key, idp_key, snp_id, idp_id)
    # SNP->IDP: 0->0 own; 1->2 (same disease, identical IDP input); 2->1 (same disease, identical input)
    # IDP->SNP: column argmax 0->0, 1->2, 2->1: same disease; SNP keys differ so strict only for 0
    assert sums["bucket_accuracy"].item() == 6 and sums["top1_accuracy"].item() == 4
    assert sums["bucket_accuracy_chance"].item() == pytest.approx(2 * (1 / 3 + 2 / 3 + 2 / 3))
    # Within the bucket {1, 2}: SNP->IDP both IDP inputs are identical and of the partner's identity: right either
    # way; IDP->SNP rows 1 and 2 are different SNPs, so each IDP picks the other SNP: wrong, and null 0.
    assert sums["within_bucket_accuracy"].item() == 4 and sums["within_bucket_accuracy_null"].item() == 4
    assert sums["within_bucket_accuracy_chance"].item() == pytest.approx(3 + 1 + 0.5 + 0.5)
    assert rows["top1_correct"].tolist() == [2, 1, 1]


def _brute_force(logits, disease, snp_key, idp_key, snp_id, idp_id):
    """Each query scored in plain Python loops: within-bucket pick, correctness, uniform chance, null."""
    b = len(disease)
    out = {k: 0.0 for k in ("acc", "chance", "null")}
    for direction, scores, key, ident in (("snp_to_idp", logits, idp_key, idp_id),
                                          ("idp_to_snp", logits.T, snp_key, snp_id)):
        for q in range(b):
            bucket = [c for c in range(b) if disease[c] == disease[q]]
            pick = max(bucket, key=lambda c: (scores[q, c].item(), -c))  # argmax: the first of ties
            correct = float(key[pick] == key[q])
            chance = sum(key[c] == key[q] for c in bucket) / len(bucket)
            kin = [c for c in bucket if ident[c] == ident[q]]  # candidates of the partner's identity
            null = sum(key[c] == key[pick] for c in kin) / len(kin) if ident[pick] == ident[q] else 0.0
            out["acc"] += correct
            out["chance"] += float(chance)
            out["null"] += float(null)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_within_bucket_metrics_equal_a_brute_force_count(seed):
    g = torch.Generator().manual_seed(seed)
    b = 40
    disease = torch.randint(0, 3, (b,), generator=g)
    snp_id, idp_id = disease * 4 + torch.randint(0, 2, (b,), generator=g), disease * 4 + torch.randint(0, 3, (b,), generator=g)
    snp_key = snp_id * 10 + torch.randint(0, 3, (b,), generator=g)  # few distinct SNP inputs: many ties
    idp_key = idp_id * 10 + torch.randint(0, 4, (b,), generator=g)
    logits = torch.randn(b, b, generator=g)
    sums, _ = retrieval_metrics(logits, disease, snp_key, idp_key, snp_id, idp_id)
    expected = _brute_force(logits, disease, snp_key, idp_key, snp_id, idp_id)
    assert sums["within_bucket_accuracy"].item() == pytest.approx(expected["acc"])
    assert sums["within_bucket_accuracy_chance"].item() == pytest.approx(expected["chance"])
    assert sums["within_bucket_accuracy_null"].item() == pytest.approx(expected["null"])


def test_a_model_that_prefers_the_commonest_genotype_beats_chance_but_not_its_null():
    """Preferences without association: within-bucket accuracy rises above the uniform chance but stays at the
    null level, which the reports compare against."""
    g = torch.Generator().manual_seed(0)
    b = 400
    disease = torch.zeros(b, dtype=torch.long)
    genotype = (torch.rand(b, generator=g) < 0.7).long()  # 70% one genotype, independent of the IDP value
    snp_id = torch.zeros(b, dtype=torch.long)
    snp_key, idp_key = genotype, torch.arange(b)
    logits = (genotype[:, None] * 5.0).expand(b, b).contiguous()  # every IDP query picks the commonest genotype
    sums, _ = retrieval_metrics(logits, disease, snp_key, idp_key, snp_id, idp_key)
    within, within_null = (sums[f"within_bucket_accuracy{s}"].item() / (2 * b) for s in ("", "_null"))
    assert within > sums["within_bucket_accuracy_chance"].item() / (2 * b) + 0.04 and abs(within - within_null) < 0.03


@pytest.mark.parametrize("layout", ["paper", "separate"])
def test_model_embeds_to_the_unit_sphere_and_learns(layout):
    torch.manual_seed(0)
    model = build_comical_model(ModelConfig(layout=layout), n_snps=6, n_tokens=4, n_idps=6, n_bins=8)
    batch = {"snp": torch.arange(6), "genotype_token": torch.ones(6, dtype=torch.long), "idp": torch.arange(6),
             "ple": torch.rand(6, 8)}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        snp, idp, scale = model(batch)
        loss = clip_loss(snp, idp, scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert torch.allclose(snp.norm(dim=1), torch.ones(6), atol=1e-5)
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("rows", [7, 64])
def test_fused_loss_equals_autograd_reference_forward_and_backward(rows):
    from comical.distributed.losses import clip_loss_reference

    g = torch.Generator().manual_seed(rows)
    base = [torch.nn.functional.normalize(torch.randn(rows, 16, generator=g), dim=1) for _ in range(2)]
    results = []
    for loss_fn in (clip_loss, clip_loss_reference):
        snp, idp = (x.clone().double().requires_grad_() for x in base)
        scale = torch.tensor([11.0], dtype=torch.float64, requires_grad=True)
        loss = loss_fn(snp, idp, scale)
        loss.backward()
        results.append((loss.detach(), snp.grad, idp.grad, scale.grad))
    for fused, plain in zip(*results):
        torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-12)


def test_snp_dedupe_gives_the_same_embeddings_and_gradients():
    outputs = []
    for dedupe in (True, False):
        torch.manual_seed(3)
        model = build_comical_model(ModelConfig(dedupe_snp_inputs=dedupe), n_snps=5, n_tokens=4, n_idps=3, n_bins=8)
        g = torch.Generator().manual_seed(0)
        batch = {"snp": torch.randint(0, 5, (64,), generator=g), "genotype_token": torch.randint(0, 4, (64,), generator=g),
                 "idp": torch.randint(0, 3, (64,), generator=g), "ple": torch.rand(64, 8, generator=g)}
        snp, idp, scale = model(batch)
        clip_loss(snp, idp, scale).backward()
        outputs.append((snp.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outputs[0][0], outputs[1][0])
    assert outputs[0][1].keys() == outputs[1][1].keys()
    for name in outputs[0][1]:
        torch.testing.assert_close(outputs[0][1][name], outputs[1][1][name], rtol=1e-5, atol=1e-6)
