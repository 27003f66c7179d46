"""Shared fixtures: one simulated mini cohort per test run, and plink2 when it is installed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from comical.data_io.simulate import write_cohort


def write_showcase(cohort: Path, path: Path, *, gaps: bool = True) -> dict[str, list[int]]:
    """A cohort's tables as a UK Biobank showcase export (field-ID columns through the default map, a recruitment
    visit's age that must not be read, ICD-10 codes in 41270 array columns); with `gaps`, blanks and negative codes
    in a few cells. Returns the cohort column -> rows made missing."""
    import polars as pl

    from comical.data_io.showcase import load_map
    from comical.data_io.tables import read_table
    from comical.data_io.ukb_fields import COVARIATES, DISEASES, IDPS

    mapping = load_map()
    idps = read_table(cohort / "idps.csv", columns=IDPS)
    cov = read_table(cohort / "covariates.csv", columns=COVARIATES)
    dx = read_table(cohort / "diagnoses.csv", columns=DISEASES)
    columns = {"eid": idps["eid"]}
    columns |= {mapping.idps[c]: idps[c].cast(pl.String) for c in IDPS}
    columns |= {mapping.covariates[c]: cov[c].cast(pl.String) for c in COVARIATES}
    columns["21003-0.0"] = (cov["age"] - 9).cast(pl.String)
    planted = {"Volume_of_Left_Hippocampus": ([3, 11], [None, ""]), "height": ([5], ["-1"]),
               "smoking": ([7, 8], ["-3", "-3"]), "bmi": ([11], ["NA"])} if gaps else {}
    for column, (rows, values) in planted.items():
        name = mapping.idps.get(column) or mapping.covariates[column]
        columns[name] = columns[name].scatter(rows, values)
    codes = [[mapping.codes[d][0] + "1" for d in DISEASES if dx[d][i]] for i in range(idps.height)]  # G30 -> G301
    for a in range(max(map(len, codes)) + 1):  # one empty array column, as real exports have
        columns[f"41270-0.{a}"] = pl.Series([c[a] if a < len(c) else None for c in codes], dtype=pl.String)
    pl.DataFrame(columns).write_csv(path)
    return {column: rows for column, (rows, _) in planted.items()}


@pytest.fixture(scope="session")
def mini_cohort(tmp_path_factory) -> Path:
    """The mini cohort (seed 0). Read-only by convention: tests that damage files use `cohort_copy`."""
    out = tmp_path_factory.mktemp("mini")
    write_cohort(out, preset="mini", seed=0)
    return out


@pytest.fixture(scope="session")
def image_cohort(tmp_path_factory):
    """The mini cohort with T1 and T2 volumes at 12 mm (about 16^3 voxels): small enough for every test."""
    from comical.data_io.simulate import write_cohort

    out = tmp_path_factory.mktemp("mini_images")
    write_cohort(out, preset="mini", seed=0, images=("t1", "t2"), voxel_mm=12)
    return out


@pytest.fixture
def cohort_copy(mini_cohort, tmp_path) -> Path:
    copy = tmp_path / "cohort"
    shutil.copytree(mini_cohort, copy)
    return copy


@pytest.fixture(scope="session")
def plink2():
    """Run plink2 quietly; tests that compare with it skip where it is not installed."""
    exe = shutil.which("plink2")
    if exe is None:
        pytest.skip("plink2 not installed (apt-get install -y plink2); skipping the comparison with it")

    def run(*args: str, cwd: Path | None = None) -> None:
        subprocess.run([exe, "--threads", "1", *map(str, args)], check=True, capture_output=True, cwd=cwd)

    return run


@pytest.fixture(scope="session")
def mini_pairs(mini_cohort, tmp_path_factory) -> Path:
    """`comical pairs --top-n-perc 5` on the mini cohort (runs QC and PheWAS itself)."""
    from comical.cli import main

    out = tmp_path_factory.mktemp("pairs") / "store"
    assert main(["pairs", "--cohort", str(mini_cohort), "--top-n-perc", "5", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray session for the whole test run (starting Ray costs seconds); always a new one, never a
    cluster another test started."""
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage reporting from tests (and no network)
    # 4 logical CPUs on a 2-core box: a Train run that Tune stops (ASHA) leaves its resource request with Ray
    # Data's AutoscalingCoordinator for up to 180 s, and the coordinator splits what is left in whole CPUs, so
    # after a few such runs a 2-CPU session starves the next run's Parquet reads until the requests expire.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_pairs(mini_pairs, mini_cohort, tmp_path_factory) -> Path:
    """The mini cohort's pairs at --top-n-perc 1 (about 76k training pairs), reusing mini_pairs' QC and PheWAS."""
    from comical.cli import main

    out = tmp_path_factory.mktemp("small") / "store"
    assert main(["pairs", "--cohort", str(mini_cohort), "--top-n-perc", "1", "--out", str(out), "--qc",
                 str(mini_pairs / "qc"), "--phewas", str(mini_pairs / "phewas")]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_pairs(mini_pairs, mini_cohort, tmp_path_factory) -> Path:
    """small_pairs' settings with 500 of its subjects (`--max-subjects`, about 27k training pairs): for runs that
    check plumbing (a Tune sweep's trials), not learning."""
    from comical.cli import main

    out = tmp_path_factory.mktemp("tiny") / "store"
    assert main(["pairs", "--cohort", str(mini_cohort), "--top-n-perc", "1", "--max-subjects", "500", "--out",
                 str(out), "--qc", str(mini_pairs / "qc"), "--phewas", str(mini_pairs / "phewas")]) == 0
    return out


TRAIN_ARGS = ["--workers", "2", "--zero-stage", "2", "--epochs", "3", "--batch-size", "1024"]  # the Ray runs'
IN_PROCESS_ARGS = ["--workers", "1", "--zero-stage", "2", "--epochs", "3", "--batch-size", "1024"]


@pytest.fixture(scope="session")
def trained_run(small_pairs, ray_session, tmp_path_factory) -> Path:
    """`comical train --zero-stage 2` (DeepSpeed) on the small store, 3 epochs, one worker in this process
    (`training_in_process`): the model the tests of what comes after training read. The same settings on two Ray
    Train workers are test_train's fault drill."""
    from comical.cli import main

    out = tmp_path_factory.mktemp("run") / "run"
    with training_in_process():
        assert main(["train", "--pairs", str(small_pairs), "--out", str(out), *IN_PROCESS_ARGS]) == 0
    return out


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """The toy task's data (two noisy views of a Gaussian latent), streamed through Ray Data."""
    from comical.distributed.tasks.toy import write_toy_data

    out = tmp_path_factory.mktemp("toy") / "data"
    write_toy_data(out, seed=0)
    return out


@pytest.fixture
def hold_cpus(ray_session):
    """Hold `n` of the session's CPUs, as another job on the cluster would (released at the end of the test)."""
    holders = []

    @ray_session.remote
    class Holder:
        def ready(self) -> bool:
            return True

    def hold(n: float):
        holder = Holder.options(num_cpus=n).remote()
        ray_session.get(holder.ready.remote())
        holders.append(holder)

    yield hold
    for holder in holders:
        ray_session.kill(holder)


def destroy_process_group() -> None:
    """Tear down this process's torch.distributed group and DeepSpeed's references to it: DeepSpeed caches its groups,
    and a later engine in this process would find them stale ("Group ... is not registered"). Safe to call when
    nothing is up, or after a test tore the group down through torch alone."""
    import deepspeed.comm
    import torch.distributed as dist
    from deepspeed.utils import groups

    if dist.is_initialized():
        dist.destroy_process_group()
    groups._release_process_group_references(None)
    deepspeed.comm.comm.cdb = None


class _InProcessResult:
    """What `run_training`'s callers read of Ray's Result."""

    def __init__(self, best_checkpoints: list):
        self.best_checkpoints, self.error = best_checkpoints, None


@contextlib.contextmanager
def training_in_process():
    """`comical train` (and everything that trains through `run_training`: heads, CGNI's stages, the simulation
    benchmark) as one worker in this process: the same worker loop, engine (DeepSpeed or DDP over a gloo group of
    one), checkpoints, resume, best-epoch choice, export and test as a Ray Train fit, without starting Ray Train's
    controller and workers (seconds instead of a minute). Streamed tasks still read through Ray Data, so a Ray
    session must be up. What only a real fit shows (several workers, restarts, the watchdog, placement, Tune) is
    tested by the few Ray Train runs kept for it (test_train, test_tune, the demo)."""
    import socket
    from types import SimpleNamespace

    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from comical.distributed import run as driver
    from comical.distributed import scaling
    from comical.distributed import train as engine
    from comical.distributed.task import RESIDENT, get_task

    class Quiet(engine.Watchdog):  # its os._exit would end pytest itself
        def __init__(self, seconds, rank, stall_file):
            super().__init__(0, rank, None)

    def run_training(config, storage, info, *, name=engine.RUN_NAME, callbacks=()):
        assert config.engine.workers == 1, "in-process training is one worker"
        task = get_task(config.task).bind(info)
        datasets = task.datasets(config) if task.input_path != RESIDENT else {}
        folder = Path(storage) / name
        folder.mkdir(parents=True, exist_ok=True)
        # Ray Train keeps every reported checkpoint with its metrics in the run's storage (a resumed run's too)
        reported = [(ray.train.Checkpoint.from_directory(str(c)), json.loads((c / "_metrics.json").read_text()))
                    for c in sorted(folder.glob("checkpoint_*"))]
        latest = reported[-1][0] if reported else None

        def report(metrics, checkpoint=None):
            kept = folder / f"checkpoint_{len(reported):06d}"
            shutil.copytree(checkpoint.path, kept)
            (kept / "_metrics.json").write_text(json.dumps(metrics))
            reported.append((ray.train.Checkpoint.from_directory(str(kept)), dict(metrics)))
            for callback in callbacks:
                callback.after_report(None, [metrics], reported[-1][0])

        context = SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(ray.train, "get_context", lambda: context)
            patch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
            patch.setattr(ray.train, "get_checkpoint", lambda: latest)
            patch.setattr(ray.train, "report", report)
            patch.setattr(ray.train, "get_dataset_shard", lambda split: datasets[split].iterator())
            for key, value in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1",
                                   LOCAL_RANK="0").items():
                patch.setenv(key, value)
            destroy_process_group()  # whatever an earlier test left
            dist.init_process_group("gloo", rank=0, world_size=1)
            try:
                engine.train_loop_per_worker({"config": config.to_dict(), "info": info, "stall_file": None})
            finally:
                destroy_process_group()
        return _InProcessResult(reported)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "Watchdog", Quiet)
        patch.setattr(engine, "run_training", run_training)
        patch.setattr(driver, "run_training", run_training)
        patch.setattr(driver, "check_cluster_fits", lambda *args, **kwargs: None)
        patch.setattr(scaling, "run_training", run_training)
        yield


@pytest.fixture
def in_process(ray_session):
    """Training in this process for one test (`training_in_process`)."""
    with training_in_process():
        yield


class ValidationShard:
    """A streamed validation split as `evaluate` reads it (Ray Data's `iter_torch_batches`), over tensors."""

    def __init__(self, columns: dict):
        self.columns = columns

    def iter_torch_batches(self, batch_size: int, prefetch_batches: int):
        n = len(next(iter(self.columns.values())))
        for i in range(0, n, batch_size):
            yield {k: v[i:i + batch_size] for k, v in self.columns.items()}
