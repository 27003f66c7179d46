"""Why CGNI's transfer CNN failed its positive control: its batch-norm statistics (issue 32).

    python benchmarks/cgni_cnn_probe.py COHORT [--n-train 2000] [--epochs 5] [--age-subjects 4000] [--seed 0]

COHORT: a simulated cohort with T1 volumes and working memory (`comical simulate --preset paper --signal 10 --images
t1 --voxel-mm 8`). On CGNI's own inputs (pipelines/cgni/inputs.py: groups and folds), in process with the package's
network (distributed/tasks/cgni.py BrainCNN): brain age pre-trained on --age-subjects of the subjects outside the two
groups (lr 1e-3, 3 epochs, statistics re-estimated at the end as `cgni-age` does), then paper 002's transfer (first
two blocks frozen, new output, lr 3e-4 as `cgni-cnn`) trained on --n-train rows of folds 1-4 and scored on fold 0
after every epoch, three ways:
- `frozen`: every fine-tuned block's batch norm keeps the pre-trained statistics (CGNI before 2026-12-07);
- `running`: batch statistics in training, their running average (momentum 0.1) in evaluation (plain PyTorch);
- `re-estimated`: batch statistics in training, re-estimated over all training rows before evaluation (CGNI now).
Each line: balanced accuracy at logit 0 and the AUC (threshold-free) on fold 0. A linear read-out of the same voxels
(standardised, L2 logistic, penalty by inner CV) is the reference. Paper cohort at K = 10, 8 mm, `--n-train 2000
--epochs 4`, 2026-12-07, 2 cores: last epoch frozen 0.59/0.72, running 0.89/0.96, re-estimated 0.85/0.95; linear
0.907/0.972. Mini cohort at K = 10, `--epochs 8` (176 training rows): re-estimated 0.64/0.70 at the last
epoch, linear 0.777/0.891 (SCIENCE.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import update_bn

from comical.data_io.images import open_image_store
from comical.distributed.tasks.cgni import BrainCNN, CgniCnnConfig
from comical.pipelines.cgni.inputs import prepare_cgni_inputs


def volumes(store, eids: np.ndarray) -> torch.Tensor:
    order = np.argsort(eids)
    read, stored = store.read("t1", eids[order])
    assert (stored == eids[order]).all()
    out = np.empty_like(read)
    out[order] = read
    return torch.from_numpy(out[:, None].astype(np.float32))


def batches(n: int, size: int, generator=None):
    return torch.randperm(n, generator=generator).split(size) if generator is not None else torch.arange(n).split(size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--age-subjects", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        prepare_cgni_inputs(args.cohort, f"{folder}/inputs", seed=args.seed, age_subjects=args.age_subjects)
        subjects = pq.read_table(f"{folder}/inputs/subjects.parquet").to_pandas()
    store = open_image_store(f"{args.cohort}/images")
    config = CgniCnnConfig()

    others = subjects[subjects.age_split == "train"]
    x_age = volumes(store, others.eid.to_numpy())
    age = torch.tensor(others.age.to_numpy(), dtype=torch.float32)
    age = (age - age.mean()) / age.std()
    base = BrainCNN(config, x_age.shape[2:])
    optimizer = torch.optim.AdamW(base.parameters(), 1e-3, weight_decay=1e-4)
    start = time.time()
    for _ in range(3):
        base.train()
        for rows in batches(len(age), 16, generator):
            loss = F.mse_loss(base({"image": x_age[rows]}), age[rows])
            optimizer.zero_grad(), loss.backward(), optimizer.step()
    update_bn(({"image": x_age[rows]} for rows in batches(len(age), 64)), base)
    print(f"brain age pre-trained on {len(age):,} subjects ({time.time() - start:.0f} s)", flush=True)
    pretrained = base.state_dict()

    groups = subjects[subjects.fold >= 0]
    x, y, fold = volumes(store, groups.eid.to_numpy()), groups.label.to_numpy(), groups.fold.to_numpy()
    val = fold == 0
    train = np.random.default_rng(args.seed).permutation(np.flatnonzero(~val))[:args.n_train]
    flat = x.flatten(1).numpy()
    linear = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=8, max_iter=2000, random_state=args.seed))
    linear.fit(flat[train], y[train])
    print(f"linear read-out of the voxels ({len(train):,} training rows, {val.sum():,} in fold 0): balanced accuracy "
          f"{balanced_accuracy_score(y[val], linear.predict(flat[val])):.3f}, AUC "
          f"{roc_auc_score(y[val], linear.decision_function(flat[val])):.3f}", flush=True)

    x_train, y_train = x[train], torch.tensor(y[train], dtype=torch.float32)
    for way in ("frozen", "running", "re-estimated"):
        torch.manual_seed(args.seed)
        model = BrainCNN(config, x.shape[2:])
        model.load_state_dict(pretrained)
        model.out = nn.Linear(model.out.in_features, 1)  # a class, not an age
        trunk = model.blocks[:config.frozen_blocks]
        trunk.requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 3e-4, weight_decay=1e-4)
        start, line = time.time(), []
        for epoch in range(args.epochs):
            model.train()
            trunk.eval()
            if way == "frozen":
                model.apply(lambda m: m.eval() if isinstance(m, nn.BatchNorm3d) else None)
            for rows in batches(len(y_train), 16, generator):
                loss = F.binary_cross_entropy_with_logits(model({"image": x_train[rows]}), y_train[rows])
                optimizer.zero_grad(), loss.backward(), optimizer.step()
            if way == "re-estimated":  # the fine-tuned blocks' statistics only; the trunk keeps its own
                tail = nn.Sequential(*model.blocks[config.frozen_blocks:])
                with torch.no_grad():
                    update_bn((trunk(x_train[rows]) for rows in batches(len(y_train), 64)), tail)
            model.eval()
            with torch.no_grad():
                logit = torch.cat([model({"image": x[val][rows]}) for rows in batches(int(val.sum()), 256)]).numpy()
            line.append(f"{balanced_accuracy_score(y[val], logit > 0):.2f}/{roc_auc_score(y[val], logit):.2f}")
        print(f"{way}: balanced accuracy/AUC by epoch {' '.join(line)} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
