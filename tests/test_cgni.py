"""CGNI (paper 002): the simulated working memory, the loss terms, the batches, the splits, occlusion, end to end."""

from __future__ import annotations

import math
import shutil

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from torch.nn import functional as F

from comical.data_io.errors import InputError
from comical.distributed.losses import cgni_loss, cross_modal_term, supervised_term


# ---------------------------------------------------------------- the simulated trait


def test_working_memory_is_simulated_with_its_truth(mini_cohort):
    from comical.data_io.simulate_wm import N_CAUSAL, PANEL_SIZE, wm_group

    cognition = pl.read_csv(mini_cohort / "cognition.csv")
    digits = cognition["wm_digits"].to_numpy().astype(float)
    tested = ~np.isnan(digits)
    assert 0.6 < tested.mean() < 0.72 and set(np.unique(digits[tested])) <= set(range(2, 13))
    groups = wm_group(digits)
    assert 0.07 < (groups == 0).sum() / tested.sum() < 0.13 and 0.07 < (groups == 1).sum() / tested.sum() < 0.13
    age = pl.read_csv(mini_cohort / "covariates.csv")["age"].to_numpy()
    assert np.corrcoef(age[tested], digits[tested])[0, 1] < -0.2  # older: shorter span, as planted
    panel = (mini_cohort / "wm_panel.txt").read_text().split()
    effects = pl.read_parquet(mini_cohort / "truth" / "wm_snp_effects.parquet")
    assert len(panel) == PANEL_SIZE and effects["variant_id"].to_list() == panel
    assert effects["causal"].sum() == N_CAUSAL and (effects.filter(~pl.col("causal"))["beta"] == 0).all()
    assert pl.read_parquet(mini_cohort / "truth" / "wm_regions.parquet").height == 7


def test_a_bad_digit_span_is_refused_naming_the_line(cohort_copy, tmp_path):
    from comical.pipelines.cgni.inputs import read_digit_span
    from comical.data_io.cohort import load_cohort

    path = cohort_copy / "cognition.csv"
    lines = path.read_text().splitlines()
    eid = lines[5].split(",")[0]
    lines[5] = f"{eid},13"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"cognition.csv line 6, column wm_digits: 13; expected a whole number 2-12"):
        read_digit_span(path, load_cohort(cohort_copy).eids)


# ---------------------------------------------------------------- the loss (eqs. 1-5)


def _direct_cross(a, b, tau):
    """Eq. (1) written out: -log(exp(a_i.b_i/tau) / sum_{j != i} exp(a_i.b_j/tau)), averaged over i."""
    total = 0.0
    for i in range(len(a)):
        below = sum(math.exp(float(a[i] @ b[j]) / tau) for j in range(len(a)) if j != i)
        total += -math.log(math.exp(float(a[i] @ b[i]) / tau) / below)
    return total / len(a)


def _direct_supervised(z, labels, tau):
    """Eq. (3) written out, with P(i) the other rows of i's label; rows without a positive are left out."""
    per_row = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        below = sum(math.exp(float(z[i] @ z[j]) / tau) for j in range(len(z)) if j != i)
        per_row.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / below) for p in positives) / len(positives))
    return sum(per_row) / len(per_row)


def test_each_loss_term_matches_its_equation():
    g = torch.Generator().manual_seed(0)
    zv, zg = (F.normalize(torch.randn(9, 6, generator=g, dtype=torch.float64), dim=1) for _ in range(2))
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0, 2])  # label 2 has one row: no positive, left out of eq. 3
    tau = 0.1
    assert cross_modal_term(zv, zg, tau).item() == pytest.approx(_direct_cross(zv, zg, tau), rel=1e-10)
    assert cross_modal_term(zg, zv, tau).item() == pytest.approx(_direct_cross(zg, zv, tau), rel=1e-10)
    assert supervised_term(zv, labels, tau).item() == pytest.approx(_direct_supervised(zv, labels, tau), rel=1e-10)
    assert supervised_term(zg, labels, tau).item() == pytest.approx(_direct_supervised(zg, labels, tau), rel=1e-10)
    weights = (0.7, 0.3, 0.2, 0.4)
    expected = (0.7 * _direct_cross(zv, zg, tau) + 0.3 * _direct_cross(zg, zv, tau)
                + 0.2 * _direct_supervised(zv, labels, tau) + 0.4 * _direct_supervised(zg, labels, tau))
    # cgni_loss normalises its inputs: unnormalised embeddings give the same loss
    assert cgni_loss(3 * zv, 2 * zg, labels, weights, tau).item() == pytest.approx(expected, rel=1e-10)
    # a supervised term moves the same-label rows together: its gradient flows
    z = zv.clone().requires_grad_(True)
    supervised_term(z, labels, tau).backward()
    assert z.grad[:8].abs().sum() > 0


# ---------------------------------------------------------------- batches, folds and the hold-out


def _shard(n=113, folds=5, seed=1):
    rng = np.random.default_rng(seed)
    return {"fold": torch.from_numpy(rng.integers(0, folds, n).astype(np.int8)),
            "label": torch.from_numpy((rng.random(n) < 0.45).astype(np.int8)),
            "eid": torch.arange(n), "g": torch.zeros(n, 3)}


def test_every_training_batch_holds_both_labels_for_every_fold():
    from comical.distributed.config import TrainConfig
    from comical.distributed.tasks.cgni import CgniBankTask, fold_masks
    from comical.distributed.train import _train_batches

    task = CgniBankTask().bind({"blocks": {"g": 3}, "folds": 5})
    shard = _shard()
    config = TrainConfig.from_dict({"task": "cgni-bank", "batch_size": 20, "seed": 3})  # 2 x the 10 cells
    checked = 0
    for epoch in range(30):
        batches = list(_train_batches(shard, epoch, 0, config, torch.device("cpu"), task))
        assert len(batches) == len(shard["eid"]) // 20
        seen = torch.cat([b["eid"] for b in batches])
        assert len(seen.unique()) == len(seen)  # a permutation, sliced
        for batch in batches:
            # every (fold, label) cell in every batch (a random order of 20 of 113 rows misses one ~13% of the
            # time per cell), so each member's training rows hold both labels
            assert len(set((2 * batch["fold"] + batch["label"]).tolist())) == 10
            train = fold_masks(batch["fold"], 5, training=True)
            for k in range(5):
                assert set(batch["label"][train[:, k]].tolist()) == {0, 1}
                checked += 1
    assert checked == 30 * 5 * 5


def test_fold_masks_keep_each_members_rows_apart():
    from comical.distributed.tasks.cgni import fold_masks

    fold = torch.tensor([0, 1, 2, -1, 1, 0])
    train, val = fold_masks(fold, 3, True), fold_masks(fold, 3, False)
    assert train.tolist() == [[False, True, True], [True, False, True], [True, True, False], [False] * 3,
                              [True, False, True], [False, True, True]]
    assert val.tolist() == [[True, False, False], [False, True, False], [False, False, True], [False] * 3,
                            [False, True, False], [True, False, False]]
    assert not (train & val).any()


def test_a_folds_batch_norm_is_nn_batch_norm_on_its_own_training_rows():
    """Training: its rows' statistics normalise the batch, as nn.BatchNorm3d on those rows alone; the rows it does not
    train on change neither its output on its rows nor its running statistics."""
    from comical.distributed.tasks.cgni import FoldBatchNorm3d

    torch.manual_seed(0)
    x = torch.randn(12, 4, 3, 3, 2) * 2 + 1
    rows = torch.tensor([True, False] * 6)
    ours, reference = FoldBatchNorm3d(4), torch.nn.BatchNorm3d(4)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2), ours.bias.uniform_(-1, 1)
    reference.load_state_dict(ours.state_dict())
    ours.rows = rows
    out = ours(x)
    torch.testing.assert_close(out[rows], reference(x[rows]))
    torch.testing.assert_close(ours.running_mean, reference.running_mean)
    torch.testing.assert_close(ours.running_var, reference.running_var)
    ours.eval(), reference.eval()
    torch.testing.assert_close(ours(x), reference(x))  # evaluation: the running statistics
    again = FoldBatchNorm3d(4)
    again.load_state_dict(reference.state_dict() | {"running_mean": torch.zeros(4), "running_var": torch.ones(4),
                                                     "num_batches_tracked": torch.tensor(0)})
    again.rows = rows
    other = x.clone()
    other[~rows] = 100.0
    torch.testing.assert_close(again(other)[rows], out[rows])
    torch.testing.assert_close(again.running_mean, ours.running_mean)


def test_each_fold_networks_statistics_come_from_its_training_rows_only():
    """set_statistics: fold k's running statistics are those of its training rows (fold != k) with today's weights;
    changing the images of its held-out rows leaves them as they were, and changes another fold's."""
    from comical.distributed.tasks.cgni import CgniCnnConfig, FoldBatchNorm3d, FoldCNN

    torch.manual_seed(0)
    config = CgniCnnConfig(channels=(4, 6, 8), frozen_blocks=1)
    model = FoldCNN(config, (8, 8, 8), folds=3, pretrained=None)
    image, fold = torch.randn(30, 1, 8, 8, 8), torch.arange(30) % 3

    def statistics(images):
        model.set_statistics([(images[:16], fold[:16]), (images[16:], fold[16:])])
        return [[m.running_mean.clone() for m in tail.modules() if isinstance(m, FoldBatchNorm3d)]
                for tail in model.tails]

    before = statistics(image)
    shared = model.trunk(image[fold != 0])
    first = next(m for m in model.tails[0].modules() if isinstance(m, FoldBatchNorm3d))
    conv = model.tails[0].blocks[0][0]
    torch.testing.assert_close(before[0][0], conv(shared).mean((0, 2, 3, 4)).detach())
    assert first.momentum == 0.1  # restored after the pass
    changed = image.clone()
    changed[fold == 0] += 5
    after = statistics(changed)
    for a, b in zip(before[0], after[0]):
        torch.testing.assert_close(a, b)  # fold 0 validates on those rows: they do not shape it
    assert not torch.allclose(before[1][0], after[1][0])  # fold 1 trains on them


def test_the_fold_cnns_learn_a_planted_region_each_from_its_own_folds():
    """A strong-signal control of the transfer stage, in process (the engine's model, loss, masks and statistics):
    the label is a small cube's brightness in noisy volumes. Every row is scored by the fold network that never saw
    it; they must separate the labels where the untrained networks do not."""
    from sklearn.metrics import balanced_accuracy_score

    from comical.distributed.tasks.cgni import BrainCNN, CgniCnnConfig, FoldCNN, fold_masks, masked_bce

    torch.manual_seed(0)
    n, folds = 200, 5
    label = torch.arange(n) % 2
    image = torch.randn(n, 1, 12, 12, 12)
    image[:, :, 2:6, 6:10, 4:8] += 0.6 * (2 * label.float() - 1).view(-1, 1, 1, 1, 1)
    fold = torch.randperm(n) % folds
    config = CgniCnnConfig(channels=(8, 16, 16), frozen_blocks=1)
    model = FoldCNN(config, (12, 12, 12), folds, BrainCNN(config, (12, 12, 12)).state_dict())

    def held_out_accuracy():
        model.set_statistics([(image, fold)])
        model.eval()
        with torch.no_grad():
            logits = model({"image": image})["logits"]
        return balanced_accuracy_score(label, logits[torch.arange(n), fold] > 0)

    before = held_out_accuracy()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 3e-3)
    for _ in range(6):
        model.train()
        for rows in torch.randperm(n).split(20):
            outputs = model({"image": image[rows], "fold": fold[rows]})
            loss = masked_bce(outputs["logits"], label[rows], fold_masks(fold[rows], folds, True))
            optimizer.zero_grad(), loss.backward(), optimizer.step()
    after = held_out_accuracy()
    assert before < 0.7 < 0.9 < after, (before, after)


@pytest.fixture(scope="module")
def cgni_inputs(image_cohort, tmp_path_factory):
    from comical.pipelines.cgni.inputs import prepare_cgni_inputs

    out = tmp_path_factory.mktemp("cgni") / "inputs"
    manifest = prepare_cgni_inputs(image_cohort, out, seed=0)
    return out, manifest


def test_folds_are_by_subject_and_the_holdout_is_in_no_training_data(cgni_inputs):
    from comical.distributed.tasks.cgni import CgniAgeTask, CgniCnnTask, read_cgni_inputs

    folder, manifest = cgni_inputs
    _, table = read_cgni_inputs(folder)
    s = {c: table.column(c).to_numpy(zero_copy_only=False) for c in ("eid", "label", "fold", "age_split")}
    assert len(np.unique(s["eid"])) == len(s["eid"])  # one row per subject
    groups = s["label"] >= 0
    assert ((s["fold"] >= -1) == groups).all()  # every subject of the two groups has a fold or is held out
    holdout = s["fold"] == -1
    assert holdout.sum() == manifest["subjects"]["holdout"] and 0.08 < holdout.sum() / groups.sum() < 0.12
    for label in (0, 1):  # stratified: both groups held out in proportion
        share = (holdout & (s["label"] == label)).sum() / (groups & (s["label"] == label)).sum()
        assert 0.06 < share < 0.14
    sizes = np.bincount(s["fold"][s["fold"] >= 0])
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 2
    # brain-age pre-training sees only subjects outside the two groups; the groups (hold-out included) are its test
    assert (s["age_split"][groups] == "test").all() and set(s["age_split"][~groups]) == {"train", "val"}
    info = {"data": str(folder), "folds": 5}
    for task in (CgniAgeTask().bind(info), CgniCnnTask().bind(info)):
        for split in ("train", "val"):
            assert not np.isin(task._eids(task._keep(split)), s["eid"][holdout]).any()
    cnn = CgniCnnTask().bind(info)
    assert set(cnn._eids(cnn._keep("train"))) == set(s["eid"][s["fold"] >= 0])


# ---------------------------------------------------------------- occlusion (eq. 6)


def test_occlusion_recovers_a_known_linear_contribution():
    from comical.pipelines.cgni.post import occlusion_contributions, selected

    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (50, 4, 5))
    x -= x.mean(0)  # 50 "volumes" of 20 entries, centred (as standardised dosages are on their training rows)
    w = rng.normal(0, 0.1, (20, 2))
    w[7] = [5.0, -4.0]  # one entry dominates both components
    score = lambda v: v.reshape(len(v), -1) @ w  # noqa: E731
    fill = np.full(20, -1.5)  # e.g. a dosage of 0, standardised
    regions = [np.array([0, 1, 2]), np.array([7]), np.array([3, 10, 19])] + [np.array([j]) for j in (4, 5, 6, 8, 9)]
    out = occlusion_contributions(score, x, regions, fill)
    flat = x.reshape(50, -1)
    expected = np.stack([(flat[:, r] - fill[r]).mean(0) @ w[r] for r in regions])  # mean of u(x) - u(x occluded)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    chosen = selected(out, 2.0)
    assert chosen.tolist() == [False, True] + [False] * 6
    # occluding centred data to its mean (0) would leave every contribution, the dominant one too, at 0
    np.testing.assert_allclose(occlusion_contributions(score, x, regions, np.zeros(20)), 0, atol=1e-12)


def test_truth_score_counts_hits_beside_a_random_selection():
    from comical.pipelines.cgni.post import truth_score

    names = [f"v{i}" for i in range(100)]
    chosen = np.zeros(100, bool)
    chosen[[0, 1, 2, 50]] = True
    score = truth_score(names, chosen, {"v0", "v1", "v2", "v3", "v4"})
    assert (score["selected"], score["selected_planted"], score["planted"]) == (4, 3, 5)
    assert score["precision"] == 0.75 and score["recall"] == 0.6
    assert score["precision_random"] == 0.05 and score["recall_random"] == 0.04
    assert (score["random_planted_low"], score["random_planted_high"]) == (0, 1)  # 4 drawn from 100 with 5 planted


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cgni_end_to_end(image_cohort, tmp_path, in_process, monkeypatch):
    from sklearn.metrics import balanced_accuracy_score

    from comical.cli import main

    out = tmp_path / "cgni"
    # the sparse CCA's grid search is cca-zoo's (scikit-learn's GridSearchCV); its default 5 x 3 grid takes 300 s of
    # 2 cores here, so this run searches 2 x 1 (the search, table and null are the same code)
    monkeypatch.setattr("comical.pipelines.cgni.post.CCA_COMPONENTS", (1, 2))
    monkeypatch.setattr("comical.pipelines.cgni.post.CCA_ALPHAS", (1e-2,))
    # 3 folds and one epoch a stage keep the test short; the fold logic is the same for 5 (the default)
    assert main(["cgni", "--cohort", str(image_cohort), "--out", str(out), "--epochs", "1,1,1,1", "--folds", "3"]) == 0
    table = pl.read_csv(out / "table1.csv")
    assert table["model"].to_list() == ["Imaging CNN", "Sparse genetic NN", "Imaging-genetic SVM (linear)",
                                        "Imaging-genetic NN", "CGNI", "Covariates only (age, sex)",
                                        "True features (age, sex, planted regions)",
                                        "True features + planted SNP score"]
    assert table.select(pl.col("train", "validation", "holdout").is_between(0, 1).all()).row(0) == (True,) * 3
    rows = dict(zip(table["model"], table.iter_rows(named=True)))
    # age drives the planted trait: the trivial reference is well above chance, and every pooled interval holds
    # its estimate
    assert rows["Covariates only (age, sex)"]["cv"] > 0.65
    for row in rows.values():
        assert row["cv_low"] <= row["cv"] <= row["cv_high"]
        assert row["holdout_mean_low"] <= row["holdout_mean"] <= row["holdout_mean_high"]
    assert rows["Covariates only (age, sex)"]["cv_minus_reference"] == 0
    # the ceiling: the planted regions carry a quarter of the trait's variance, so knowing them beats age and sex
    assert rows["True features (age, sex, planted regions)"]["cv_minus_reference_low"] > 0
    # the table's hold-out figure is what the fold networks' stored outputs give (recomputed here)
    inputs = pq.read_table(out / "inputs" / "classify" / "rows.parquet")
    outputs = pq.read_table(out / "runs" / "classify" / "member_outputs.parquet")
    assert outputs.column("eid").to_pylist() == inputs.column("eid").to_pylist()
    held = inputs.column("fold").to_numpy() == -1
    label = inputs.column("label").to_numpy()
    expected = np.mean([balanced_accuracy_score(label[held], outputs.column(f"logit:cgni_f{k}").to_numpy()[held] > 0)
                        for k in range(3)])
    assert table.filter(pl.col("model") == "CGNI")["holdout"][0] == pytest.approx(expected)
    # the second ceiling's planted SNP score is the trait's genetic part (15% of its variance): higher in the high
    # group; betas read against the wrong panel columns would leave no difference
    from scipy import stats

    from comical.data_io.arrow_lists import from_fixed_list
    from comical.pipelines.cgni.run import _planted_score

    score = _planted_score(image_cohort, out / "inputs" / "panel.tsv", from_fixed_list(inputs.column("g"), np.float32))
    assert stats.ttest_ind(score[label == 1], score[label == 0], alternative="greater").pvalue < 1e-3
    # the post-analysis tables, and no per-epoch checkpoints left behind
    cca = pl.read_csv(out / "cca.csv")
    assert 1 <= cca.height <= 2 and cca["train"].abs().max() <= 1
    scores = pl.read_csv(out / "truth_scores.csv")
    assert scores["features"].to_list() == ["SNPs", "SNPs: AD's (also the image latent)", "SNPs: working memory only",
                                            "regions"]
    assert scores.filter(pl.col("features") == "SNPs")["planted"][0] == 40
    contributions = pl.read_csv(out / "contributions_snps.csv")
    assert contributions.height == pl.read_csv(out / "inputs" / "panel.tsv", separator="\t").height
    assert not list(out.glob("runs/*/checkpoints"))
    assert "Table 1" in (out / "cgni.md").read_text()
    shutil.rmtree(out)


def test_accuracy_table_intervals_equal_scikit_learn_on_the_same_resamples():
    from sklearn.metrics import balanced_accuracy_score as bacc

    from comical.pipelines.cgni.run import accuracy_table

    rng = np.random.default_rng(0)
    label = (rng.random(120) < 0.5).astype(int)
    fold = np.where(rng.random(120) < 0.1, -1, rng.integers(0, 3, 120))
    logits = {m: rng.normal(size=(120, 3)) + 0.8 * (label[:, None] - 0.5) * k for k, m in enumerate(["ref", "a"])}
    table = accuracy_table(logits, label, fold, ["a"], reference="ref", resamples=200, seed=5).row(0, named=True)
    # the same stratified draws, scored one by one with scikit-learn
    draw = np.random.default_rng(5)
    cv, held = np.flatnonzero(fold >= 0), np.flatnonzero(fold == -1)
    draws = {n: np.hstack([draw.choice(r[label[r] == c], (200, int((label[r] == c).sum()))) for c in (0, 1)])
             for n, r in (("cv", cv), ("holdout", held))}
    hit = {m: np.zeros(120, bool) for m in logits}
    for m in logits:
        hit[m][cv] = logits[m][cv, fold[cv]] > 0
    a = np.array([bacc(label[d], hit["a"][d]) for d in draws["cv"]])
    ref = np.array([bacc(label[d], hit["ref"][d]) for d in draws["cv"]])
    assert table["cv"] == pytest.approx(bacc(label[cv], hit["a"][cv]))
    assert (table["cv_low"], table["cv_high"]) == pytest.approx(tuple(np.percentile(a, [2.5, 97.5])))
    assert (table["cv_minus_reference_low"], table["cv_minus_reference_high"]) == pytest.approx(
        tuple(np.percentile(a - ref, [2.5, 97.5])))
    mean_hit = logits["a"].mean(1) > 0
    h = np.array([bacc(label[d], mean_hit[d]) for d in draws["holdout"]])
    assert (table["holdout_mean_low"], table["holdout_mean_high"]) == pytest.approx(
        tuple(np.percentile(h, [2.5, 97.5])))


def test_a_crashed_stage_reaches_the_user_as_one_line_naming_it(image_cohort, ray_session, tmp_path, capsys,
                                                                 monkeypatch):
    """A worker that dies inside torch (a native crash, as seen on a default run) surfaces through Ray as an error
    many lines long; `comical cgni` says in one line which stage failed and that its folds shared the job, exits 1,
    and leaves no output folder."""
    from comical.cli import main

    def train(config, out, **kwargs):
        if config.task == "cgni-age":
            return {"mae_test": 5.0, "n_test": 10, "mae_mean_predictor_test": 6.0}
        raise RuntimeError("Worker crashed: the actor died unexpectedly (SIGSEGV)\nat::TensorIteratorBase::...\n...")

    monkeypatch.setattr("comical.distributed.run.train_and_evaluate", train)
    out = tmp_path / "cgni"
    assert main(["cgni", "--cohort", str(image_cohort), "--out", str(out), "--folds", "3"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["comical cgni: error: stage cnn (all 3 folds in one job) failed: Worker crashed: the actor died "
                   "unexpectedly (SIGSEGV)"]
    assert not out.exists()
