"""`comical bench gemcont-sim`: paper 001's simulation benchmark (section 3.1, Fig. 2) on rotated characters.

One sweep (n_train, h_g or alpha_max; the others held at their defaults) x four methods (GEMCONT, SimCLR, VAE,
supervised on z; distributed/tasks/rotation.py, each trained by the engine with Ray Train) x five training splits
with a fixed test set. For each trained model, on the test set:
- `r2`: ridge R^2 of z from the test embeddings (5-fold cross-validated within the test set), beside the same for
  an untrained encoder (`r2_untrained`) and the raw pixels (`r2_raw_pixels`);
- `causal_fraction`: the fraction of the S causal variants at p < 5e-8 in the multi-trait GWAS of the test
  embeddings (paper 001 eq. 3: the embedding's principal components, all of its numerical rank (`gwas_dims`),
  rank-based inverse normal, no covariates, as the paper's simulation; the exact Wilks test of `comical gwas
  --multi-trait`, gwas_stats.multi_trait), beside the same for the untrained encoder's embeddings, for the raw
  pixels' top D principal components, and for z itself (1 df: the ceiling, what a perfect embedding of z would
  find at this test size and h_g);
- `null_fraction` and `null_lambda`: the 1,000 null variants at 5e-8 (expected 0) and the genomic inflation of their
  p-values (expected 1): the negative control of the same test on the same embeddings.

Outputs in --out: results.csv (a row per method x setting x split), results.md (mean +- sd over splits per method
and setting, with the untrained-encoder and raw-pixel R^2), results.png (Fig. 2's layout: R^2 on top, causal
fraction below, a bar per method with its sd), sample_sheet.png (test characters at the default setting) and
run.json. Rows already in results.csv of the same run are kept, so an interrupted sweep goes on where it stopped.
`reuse` (`--reuse DIR`): another sweep's finished folder of the same sizes; its rows of a setting this sweep also
has (the default setting, shared by all three sweeps) are copied instead of trained again. The training is the same
(same population, split subjects and seeds), so this is the same experiment, run once.

Sizes (CPU, stated in BENCHMARKS.md): the paper trains on up to 100K+ images with a 100K test set on an H100; here
the defaults fit a CPU run of a few hours per sweep, and larger sizes are flags (`--n-test`, `--n-train-values`).
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from comical.data_io.errors import InputError
from comical.data_io.output_dir import RUN_FILE, check_output_dir, mark_run, write_atomic

GENOME_WIDE = 5e-8
METHODS = ("gemcont", "simclr", "vae", "supervised")
SWEEPS = ("n_train", "h_g", "alpha_max")
COLUMNS = ["method", "sweep", "value", "split", "r2", "r2_untrained", "r2_raw_pixels", "causal_fraction",
           "causal_fraction_untrained", "causal_fraction_raw_pixels", "causal_fraction_z", "null_fraction",
           "null_lambda", "gwas_dims", "best_epoch", "epochs", "n_train", "h_g", "alpha_max", "n_test", "seconds"]


@dataclasses.dataclass(frozen=True)
class SimBench:
    """The benchmark's sizes and the values of each sweep; the default of each parameter is starred in tables."""

    n_train_values: tuple[int, ...] = (1000, 2500, 5000, 10000)
    h_g_values: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
    alpha_max_values: tuple[float, ...] = (10.0, 20.0, 45.0, 90.0)
    n_train: int = 5000  # the defaults held fixed while another parameter is swept
    h_g: float = 0.5
    alpha_max: float = 45.0
    n_test: int = 10000  # fixed test set (the paper: 100K)
    n_val: int = 1000  # each split's validation subjects (the best epoch's selection)
    n_variants: int = 20  # S causal variants (and as many null variants for the GWAS control)
    splits: int = 5
    epochs: int = 15
    batch_size: int = 256
    seed: int = 0
    projector_init: str = "random"  # GEMCONT's genotype projector: random, or gwas (tasks/rotation.py)
    learning_rate: float | None = None  # every method's AdamW rate; None: the tasks' (paper 001's 3e-4)

    def values(self, sweep: str) -> tuple:
        return getattr(self, f"{sweep}_values")

    def setting(self, sweep: str, value) -> dict:
        return {"n_train": self.n_train, "h_g": self.h_g, "alpha_max": self.alpha_max, sweep: value}

    @property
    def pool(self) -> int:
        """Subjects a training split draws from (its own, disjoint from the other splits')."""
        return max(*self.n_train_values, self.n_train) + self.n_val

    @property
    def n_population(self) -> int:
        """The same population (and so the same test set) for every sweep of these sizes."""
        return self.n_test + self.splits * self.pool


QUICK = SimBench(n_train_values=(200, 400), h_g_values=(0.25, 0.5), alpha_max_values=(20.0, 45.0), n_train=400,
                 n_test=400, n_val=100, splits=2, epochs=1, batch_size=64)


def run_benchmark(sweep: str, out: Path, *, bench: SimBench = SimBench(), methods: tuple[str, ...] = METHODS,
                  workers: int = 1, use_gpu: bool = False, force: bool = False, reuse: Path | None = None,
                  say=print) -> pl.DataFrame:
    """Runs one sweep into `out` (see the module docstring); returns the results table."""
    from comical.data_io.characters import CLASSES, sample_sheet
    from comical.data_io.rotation_sim import angles, population, test_images
    from comical.distributed.ray_session import init_ray, shutdown_ray

    if sweep not in SWEEPS:
        raise InputError(f"--sweep {sweep}: expected one of {', '.join(SWEEPS)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"--methods {','.join(methods)}: expected some of {','.join(METHODS)}")
    from comical.distributed.tasks.rotation import RotationConfig

    dims = RotationConfig().embed_dim
    if bench.n_test < dims + 10:  # the multi-trait test needs more subjects than embedding dimensions
        raise InputError(f"--n-test {bench.n_test}: expected at least {dims + 10} (the embedding has {dims} "
                         "dimensions; the paper tests 100K)")
    run = {"command": "bench gemcont-sim", "sweep": sweep, "bench": dataclasses.asdict(bench),
           "methods": list(methods), "workers": workers, "use_gpu": use_gpu}
    reused = _reusable_rows(reuse, run) if reuse else {}
    if reuse:
        run["reuse"] = str(Path(reuse).resolve())
    out = check_output_dir(out, run, force=force, inputs=(reuse,) if reuse else ())
    same_run = (out / RUN_FILE).is_file() and not force
    out.mkdir(parents=True, exist_ok=True)
    done = _done_rows(out / "results.csv") if same_run else []
    mark_run(out, run, "running")
    people = population(bench.n_population, bench.n_variants, seed=bench.seed)
    started = init_ray()
    try:
        rows = _sweep(sweep, out, bench, methods, workers, use_gpu, people, done, reused, say)
    except BaseException as err:
        mark_run(out, run, "failed", err)
        raise
    finally:
        if started:
            shutdown_ray()
    default = test_images(people, h_g=bench.h_g, alpha_max=bench.alpha_max, n_test=min(64, bench.n_test))
    alpha = angles(people.latent(bench.h_g)[:len(default)], bench.alpha_max)
    sample_sheet(default, out / "sample_sheet.png", titles=[f"{CLASSES[c]} {a:+.0f}" for c, a in zip(people.labels, alpha)])
    table = pl.DataFrame(rows, schema=COLUMNS, orient="row")
    write_atomic(out / "results.md", markdown_table(table, bench, sweep))
    figure(table, bench, sweep, out / "results.png")
    mark_run(out, run, "done")
    return table


def _sweep(sweep, out, bench, methods, workers, use_gpu, people, done, reused, say) -> list[list]:
    import time

    from comical.data_io.rotation_sim import test_images, write_split
    from comical.distributed.config import TrainConfig
    from comical.distributed.run import train_and_evaluate

    rows = list(done)
    seen = {(r[0], float(r[2]), int(r[3])) for r in done}
    results = out / "results.csv"
    if not done:
        write_atomic(results, ",".join(COLUMNS) + "\n")
    for value in bench.values(sweep):
        setting = bench.setting(sweep, value)
        todo = [(split, m) for split in range(bench.splits) for m in methods if (m, float(value), split) not in seen]
        if not todo:
            continue
        images = test_images(people, h_g=setting["h_g"], alpha_max=setting["alpha_max"], n_test=bench.n_test)
        genotypes = np.concatenate([people.genotypes, people.null_genotypes], axis=1)  # causal first
        s = bench.n_variants
        pixels = images.reshape(len(images), -1).astype(np.float64)
        baselines = {"raw_pixels": found(multi_trait_p(_top_pcs(pixels, 256), genotypes[:bench.n_test])[0], s),
                     "z": found(multi_trait_p(people.latent(setting["h_g"])[:bench.n_test, None],
                                              genotypes[:bench.n_test])[0], s)}
        for split in sorted({s for s, _ in todo}):
            data = out / "data" / f"{sweep}-{value}-split{split}"
            write_split(data, people, h_g=setting["h_g"], alpha_max=setting["alpha_max"], n_test=bench.n_test,
                        pool=bench.pool, n_train=setting["n_train"], n_val=bench.n_val, split=split,
                        test_images=images)
            for method in [m for s, m in todo if s == split]:
                key = (method, setting["n_train"], setting["h_g"], setting["alpha_max"], split)
                if key in reused:
                    row = [method, sweep, value, *reused[key][3:]]
                    rows.append(row)
                    with open(results, "a", newline="") as f:
                        csv.writer(f).writerow(row)
                    say(f"{sweep}={value} split {split} {method}: the same training's row taken from --reuse")
                    continue
                start = time.perf_counter()
                config = TrainConfig.from_dict({
                    "task": f"sim-{method}", "data": str(data), "epochs": bench.epochs,
                    "batch_size": bench.batch_size, "eval_batch_size": 1024, "seed": bench.seed + split,
                    "engine": {"workers": workers, "use_gpu": use_gpu},
                    "model": {"projector_init": bench.projector_init},  # only GEMCONT's task reads it
                    "optim": {} if bench.learning_rate is None else {"learning_rate": bench.learning_rate}})
                folder = out / "runs" / f"{sweep}-{value}" / f"{method}-split{split}"
                metrics = train_and_evaluate(config, folder, force=True)
                (p, dims), (p_untrained, _) = (multi_trait_p(*_embeddings(folder / f"{name}.parquet", genotypes))
                                               for name in ("test_embeddings", "test_embeddings_untrained"))
                trained = found(p, s)
                row = [method, sweep, value, split, metrics["latent_r2"], metrics["latent_r2_untrained_encoder"],
                       metrics["latent_r2_raw_pixels"], trained["causal"], found(p_untrained, s)["causal"],
                       baselines["raw_pixels"]["causal"], baselines["z"]["causal"], trained["null"],
                       trained["null_lambda"], dims, metrics["best_epoch"], bench.epochs, setting["n_train"],
                       setting["h_g"], setting["alpha_max"], bench.n_test, round(time.perf_counter() - start, 1)]
                rows.append(row)
                with open(results, "a", newline="") as f:
                    csv.writer(f).writerow(row)
                say(f"{sweep}={value} split {split} {method}: R^2 {row[4]:.3f} (untrained {row[5]:.3f}, raw pixels "
                    f"{row[6]:.3f}), causal variants at 5e-8 {row[7]:.2f} (untrained {row[8]:.2f}, raw pixels "
                    f"{row[9]:.2f}, z itself {row[10]:.2f}; null {row[11]:.3f}, lambda {row[12]:.2f}), "
                    f"{row[-1]:.0f} s")
            shutil.rmtree(data)
    return rows


def multi_trait_p(embeddings: np.ndarray, genotypes: np.ndarray) -> tuple[np.ndarray, int]:
    """p-values of the multi-trait test of each genotype column against the embeddings (paper 001 eq. 3, as
    `comical gwas --multi-trait`: principal components, rank-based inverse normal; no covariates, as the paper's
    simulation), and how many components were tested: all of the embedding's numerical rank (singular values above
    1e-6 of the largest; components past it are rounding noise, which the rank transform would blow up into unit-
    variance traits and the test would spend degrees of freedom on)."""
    from comical.pipelines.statgen import gwas_stats
    from comical.pipelines.statgen.gwas import embedding_traits

    n, d = embeddings.shape
    singular = np.linalg.svd(embeddings - embeddings.mean(0), compute_uv=False)
    rank = int((singular > 1e-6 * singular[0]).sum())
    frame = pl.DataFrame({"eid": np.arange(n), **{f"d{i}": embeddings[:, i] for i in range(d)}})
    y = embedding_traits(frame, n_pcs=rank, rank_normalise=True).drop("eid").to_numpy()
    q = np.full((n, 1), 1 / np.sqrt(n))  # the intercept's orthonormal basis
    y = y - q @ (q.T @ y)
    p = gwas_stats.multi_trait(genotypes.astype(np.float64), q, y)["p"]
    if np.isnan(p).any():
        raise InputError(f"the multi-trait test of {n} test subjects on {rank} embedding dimensions gave NA "
                         f"(a monomorphic variant, or too few subjects); raise --n-test")
    return p, rank


def found(p: np.ndarray, s: int) -> dict:
    """Of p (S causal variants first, then the nulls): the fraction of causal and of null variants at 5e-8, and the
    nulls' genomic inflation (median chi-square(1) of their p over its null median)."""
    from scipy import stats

    null = p[s:]
    return {"causal": float(np.mean(p[:s] < GENOME_WIDE)), "null": float(np.mean(null < GENOME_WIDE)),
            "null_lambda": float(stats.chi2.isf(np.median(null), 1) / stats.chi2.isf(0.5, 1)) if null.size else None}


def _embeddings(path: Path, genotypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A run's test embeddings and the genotypes of the same subjects, in the same row order."""
    table = pl.read_parquet(path)
    return table.select(pl.col("^dim.*$")).to_numpy(), genotypes[table["row"].to_numpy()]


def _top_pcs(x: np.ndarray, k: int) -> np.ndarray:
    centred = x - x.mean(0)
    u, singular, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :k] * singular[:k]


def _reusable_rows(folder: Path, run: dict) -> dict[tuple, list]:
    """A finished sweep's rows keyed by (method, n_train, h_g, alpha_max, split); refused unless it ran the same
    sizes, population and engine settings (then a row of the same setting and split is the same training)."""
    import json

    folder = Path(folder)
    try:
        other = json.loads((folder / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        raise InputError(f"--reuse {folder}: no readable {RUN_FILE}; expected a finished gemcont-sim folder") from None
    same = {k: run[k] for k in ("command", "bench", "workers", "use_gpu")}
    if other.get("state") != "done" or {k: other.get(k) for k in same} != json.loads(json.dumps(same)):
        raise InputError(f"--reuse {folder}: expected a finished gemcont-sim run of the same sizes and engine settings "
                         f"(its {RUN_FILE} differs in bench, workers or use_gpu, or is not done)")
    return {(r[0], int(r[COLUMNS.index("n_train")]), float(r[COLUMNS.index("h_g")]),
             float(r[COLUMNS.index("alpha_max")]), int(r[3])): r for r in _done_rows(folder / "results.csv")}


def _done_rows(path: Path) -> list[list]:
    if not path.is_file():
        return []
    table = pl.read_csv(path)
    return [list(r) for r in table.select(COLUMNS).iter_rows()] if table.height else []


def summarise(table: pl.DataFrame) -> pl.DataFrame:
    """Mean and sd over splits per method and setting."""
    means = ("r2", "r2_untrained", "r2_raw_pixels", "causal_fraction", "causal_fraction_untrained",
             "causal_fraction_raw_pixels", "causal_fraction_z", "null_fraction", "null_lambda", "best_epoch")
    return (table.group_by("method", "value", maintain_order=True)
            .agg(*[pl.col(c).mean().alias(f"{c}_mean") for c in means],
                 pl.col("r2").std().alias("r2_sd"), pl.col("causal_fraction").std().alias("causal_fraction_sd"),
                 pl.len().alias("splits")).sort("value", "method"))


def paired_differences(table: pl.DataFrame, against: str = "gemcont") -> pl.DataFrame:
    """Per setting, `against` minus each other method on the same split (the same training subjects), mean and sd
    over splits: the comparison to read, since split-to-split spread is shared by the methods."""
    base = table.filter(pl.col("method") == against).select("value", "split", pl.col("r2").alias("r2_a"),
                                                               pl.col("causal_fraction").alias("cf_a"))
    return (table.filter(pl.col("method") != against).join(base, on=["value", "split"])
            .group_by("value", "method", maintain_order=True)
            .agg((pl.col("r2_a") - pl.col("r2")).mean().alias("r2_diff"),
                 (pl.col("r2_a") - pl.col("r2")).std().alias("r2_diff_sd"),
                 (pl.col("cf_a") - pl.col("causal_fraction")).mean().alias("cf_diff"),
                 (pl.col("cf_a") - pl.col("causal_fraction")).std().alias("cf_diff_sd"), pl.len().alias("splits"))
            .sort("value", "method"))


def markdown_table(table: pl.DataFrame, bench: SimBench, sweep: str) -> str:
    default = bench.setting(sweep, None)
    sd = lambda v: "" if v is None else f" +- {v:.3f}"  # noqa: E731
    lines = [f"Sweep over {sweep} (* the default, held fixed in the other sweeps; others: "
             + ", ".join(f"{k} = {v}" for k, v in default.items() if k != sweep) + f"; test set {bench.n_test}, "
             f"S = {bench.n_variants} causal variants, 1,000 null variants; epochs {bench.epochs}; mean +- sd over "
             "splits). Causal fraction: of the S causal variants at p < 5e-8 in the multi-trait GWAS of the test "
             "embeddings; z itself: the ceiling at this test size.", "",
             f"| {sweep} | method | splits | R^2 | untrained R^2 | raw-pixel R^2 | causal | untrained | raw pixels | "
             "z itself | null at 5e-8 | null lambda | best epoch |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in summarise(table).iter_rows(named=True):
        star = "*" if r["value"] == getattr(bench, sweep) else ""
        lines.append(f"| {r['value']}{star} | {r['method']} | {r['splits']} | {r['r2_mean']:.3f}{sd(r['r2_sd'])} | "
                     f"{r['r2_untrained_mean']:.3f} | {r['r2_raw_pixels_mean']:.3f} | "
                     f"{r['causal_fraction_mean']:.2f}{sd(r['causal_fraction_sd'])} | "
                     f"{r['causal_fraction_untrained_mean']:.2f} | {r['causal_fraction_raw_pixels_mean']:.2f} | "
                     f"{r['causal_fraction_z_mean']:.2f} | {r['null_fraction_mean']:.4f} | "
                     f"{r['null_lambda_mean']:.2f} | {r['best_epoch_mean']:.1f} |")
    differences = paired_differences(table)
    if differences.height:
        lines += ["", "GEMCONT minus each method on the same split (mean +- sd over splits):", "",
                  f"| {sweep} | method | splits | R^2 difference | causal fraction difference |", "|---|---|---|---|---|"]
        for r in differences.iter_rows(named=True):
            lines.append(f"| {r['value']} | {r['method']} | {r['splits']} | {r['r2_diff']:+.3f}{sd(r['r2_diff_sd'])} "
                         f"| {r['cf_diff']:+.2f}{sd(r['cf_diff_sd'])} |")
    return "\n".join(lines) + "\n"


def figure(table: pl.DataFrame, bench: SimBench, sweep: str, path: Path) -> None:
    """Fig. 2's layout for one sweep: R^2 (top) and causal fraction (bottom), a bar per method with its sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(table)
    values = sorted(summary["value"].unique().to_list())
    methods = [m for m in METHODS if m in summary["method"].to_list()]
    fig, axes = plt.subplots(2, 1, figsize=(1.6 + 1.3 * len(values), 5.5), sharex=True)
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        part = summary.filter(pl.col("method") == method).sort("value")
        x = np.array([values.index(v) for v in part["value"]]) + (k - (len(methods) - 1) / 2) * width
        for ax, column in zip(axes, ("r2", "causal_fraction")):
            ax.bar(x, part[f"{column}_mean"], width, yerr=part[f"{column}_sd"].fill_null(0.0), label=method,
                   capsize=2)
    # what trivial models reach, per setting: an untrained encoder, the raw pixels, and (GWAS) z itself
    first = summary.group_by("value").agg(pl.all().first()).sort("value")
    for ax, columns in ((axes[0], ("r2_untrained", "r2_raw_pixels")),
                        (axes[1], ("causal_fraction_untrained", "causal_fraction_raw_pixels", "causal_fraction_z"))):
        for column, style in zip(columns, ("--", ":", "-.")):
            for i, v in enumerate(first[f"{column}_mean"]):
                ax.hlines(v, i - 0.45, i + 0.45, colors="black", linestyles=style, linewidth=1,
                          label=column.split("_", 1 if column.startswith("r2") else 2)[-1] if i == 0 else None)
    axes[0].set_ylabel("R^2 of z (test)")
    axes[1].set_ylabel("causal variants at 5e-8")
    axes[1].set_xticks(range(len(values)), [f"{v}{'*' if v == getattr(bench, sweep) else ''}" for v in values])
    axes[1].set_xlabel(sweep)
    axes[0].legend(fontsize=7, ncol=3)
    handles, labels = axes[1].get_legend_handles_labels()
    lines = [(h, label) for h, label in zip(handles, labels) if label in ("untrained", "raw_pixels", "z")]
    axes[1].legend([h for h, _ in lines], [label.replace("z", "z itself") for _, label in lines], fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

