"""The ``mmvit-study`` command line: each command parses options and calls one library function.

User errors (:class:`mmvit.errors.MMViTError`) are caught once, in :class:`_Commands`, and printed
as a message with exit code 1 — never as a traceback.

Both consoles read no markup: messages, paths, arm names and values print exactly as written (an
error naming ``pip install -e '.[postgres]'`` keeps its ``[postgres]``). Fixed labels are styled with
:func:`_labelled`, never with markup in an f-string.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from mmvit.errors import MMViTError

console = Console(soft_wrap=True, markup=False)  # long paths stay on one line
errors = Console(stderr=True, markup=False)


def _labelled(label: str, style: str, text: object) -> Text:
    """A styled fixed ``label``, then ``text`` printed literally (square brackets and all)."""
    return Text.assemble((label, style), " ", str(text))


class _Commands(TyperGroup):
    """Root command group that turns an MMViTError anywhere below it into a clean exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MMViTError as error:
            errors.print(_labelled("Error:", "bold red", error), highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


app = typer.Typer(cls=_Commands, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ablation studies of multi-modal Vision Transformers on BigEarthNet-MM.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, generate and cache BigEarthNet-MM archives.")
bench_app = typer.Typer(no_args_is_help=True, help="Measure throughput.")
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
slurm_app = typer.Typer(no_args_is_help=True, help="Run a study as a SLURM job: Ray over the allocation, requeued "
                                                  "at the time limit while work remains.")
app.add_typer(slurm_app, name="slurm")

RootArg = Annotated[Optional[Path], typer.Argument(
    help="Archive root (v1: BigEarthNet-v1.0/ + BigEarthNet-S1-v1.0/; v2: BigEarthNet-S2/, "
         "BigEarthNet-S1/, metadata.parquet). Default: the demo archive.")]


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time: while the live view runs, rich puts a proxy
    there that prints above the table — a handler holding the original stream would be drawn over."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False) -> None:
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


def _root(root: Path | None) -> Path:
    if root is not None:
        return root
    from mmvit.data.demo import ensure_demo_archive

    return ensure_demo_archive()


RequireComplete = Annotated[bool, typer.Option(
    "--require-complete", help="Refuse an archive that holds only part of a split (default: use the patches present).")]


@data_app.command("check")
def data_check(
    root: RootArg = None,
    deep: Annotated[bool, typer.Option(help="Open every file and check sizes and types (slow).")] = False,
    require_complete: RequireComplete = False,
) -> None:
    """Report an archive's layout, patches per split, and missing or unreadable files."""
    from mmvit.data.archive import open_archive
    from mmvit.data.check import check_archive

    archive = open_archive(_root(root))
    report = check_archive(archive, deep=deep, progress=console.is_terminal)
    console.print(Text.assemble((archive.describe(), "bold"), f" (layout {report.layout})"))
    console.print(f"splits from: {report.split_source}")
    if report.on_disk is not None:
        console.print(f"S2 patch folders on disk: {report.on_disk:,}")
    table = Table("split", "patches", "listed", "missing files", "unreadable" if deep else "unreadable (use --deep)")
    for split in report.splits:
        table.add_row(split.split, f"{split.patches:,}", f"{split.presence.listed:,}", str(len(split.missing)),
                      str(len(split.unreadable)) if deep else "-")
    console.print(table)
    for split in report.splits:
        if not split.presence.complete:
            console.print(f"{split.presence.describe()}; first missing: {', '.join(split.presence.missing)}",
                          highlight=False, markup=False, soft_wrap=True)
    problems = [(s.split, p, what) for s in report.splits for p, what in s.missing + s.unreadable]
    for split, patch, what in problems[:20]:
        console.print(f"  {split}: {patch}: {what}", highlight=False, soft_wrap=True)
    if problems:
        more = f" (first 20 of {len(problems)} shown)" if len(problems) > 20 else ""
        raise MMViTError(
            f"{len(problems)} patch(es) of {archive.root} have missing or unreadable files{more}. "
            "Re-extract them, or train with skip_unreadable (they are then left out and logged)."
        )
    if require_complete and not report.complete:
        raise MMViTError(
            f"The archive at {archive.root} is incomplete: "
            + "; ".join(s.presence.describe() for s in report.splits if not s.presence.complete)
            + ". Download or extract the missing patches, or leave out --require-complete to use the "
            "patches present."
        )


@data_app.command("demo")
def data_demo(
    out: Annotated[Path, typer.Option(help="Folder to write the archive into.")],
    patches: Annotated[int, typer.Option(min=3, help="Number of patch pairs.")] = 600,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write a synthetic archive in the exact BigEarthNet v1 layout (real GeoTIFFs)."""
    from mmvit.data.demo import write_demo_archive

    path = write_demo_archive(out, patches=patches, seed=seed, progress=console.is_terminal)
    console.print(f"Demo archive with {patches} patch pairs (seed {seed}) at {path}")


@data_app.command("cache")
def data_cache(
    root: RootArg = None,
    split: Annotated[list[str], typer.Option(help="Split(s) to convert.")] = ["train", "validation", "test"],
    modalities: Annotated[str, typer.Option(help="s2, s1, rgb, s2+s1 or rgb+s1.")] = "s2+s1",
    resampling: Annotated[str, typer.Option(help="Upsampling of the 20 m bands.")] = "bilinear",
    speckle_filter: Annotated[str, typer.Option(help="none, median<k> or lee<k>.")] = "none",
    s1_dtype: Annotated[str, typer.Option(help="float32 or float16.")] = "float32",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Default: $MMVIT_CACHE_DIR or ~/.cache/mmvit-study/cache.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Processes (default: all cores).")] = None,
    skip_unreadable: Annotated[bool, typer.Option(help="Leave out unreadable patches (logged by name).")] = False,
    require_complete: RequireComplete = False,
    shard: Annotated[Optional[str], typer.Option(
        help="K/N: convert only part K of N (a job array: --array=1-N, --shard $SLURM_ARRAY_TASK_ID/N); "
             "the last part to finish writes the cache.")] = None,
) -> None:
    """Convert archive splits into the memory-mapped cache (once; later runs reuse it, and an
    interrupted run goes on where it stopped)."""
    from mmvit.data.cache import cache_shard, default_cache_dir, parse_shard

    if shard is not None:
        part = parse_shard(shard)
        for name in split:
            console.print(cache_shard(_root(root), name, part, modalities=modalities, resampling=resampling,
                                      speckle_filter=speckle_filter, s1_dtype=s1_dtype,
                                      cache_dir=cache_dir or default_cache_dir(), workers=workers,
                                      skip_unreadable=skip_unreadable, require_complete=require_complete,
                                      progress=True))
        return
    from mmvit.data.bigearthnet import BigEarthNetMM

    for name in split:
        dataset = BigEarthNetMM(
            _root(root), name, modalities, resampling=resampling, speckle_filter=speckle_filter,
            cache_dir=cache_dir or default_cache_dir(), s1_dtype=s1_dtype, workers=workers,
            skip_unreadable=skip_unreadable, require_complete=require_complete,
            progress=True,  # a bar on a terminal, plain lines in a batch job's log
        )
        note = f", {len(dataset.skipped)} skipped as unreadable" if dataset.skipped else ""
        if not dataset.presence.complete:
            note += f" ({dataset.presence.listed:,} listed: the archive is partial)"
        console.print(f"{name}: {len(dataset):,} patches cached{note}")


@bench_app.command("data")
def bench_data(
    root: RootArg = None,
    batches: Annotated[int, typer.Option(help="Batches timed per measurement.")] = 20,
    batch_size: Annotated[int, typer.Option()] = 256,
    workers: Annotated[int, typer.Option(help="Workers of the per-sample DataLoader (the reference).")] = 2,
    per_sample: Annotated[bool, typer.Option(help="Also time the per-sample DataLoader.")] = True,
    cache_dir: Annotated[Optional[Path], typer.Option()] = None,
) -> None:
    """Patches/s: the batch loader (with and without augmentation) against the memory-map gather limit."""
    from mmvit.bench.data import run_data_benchmark

    result = run_data_benchmark(_root(root), batches=batches, batch_size=batch_size, per_sample=per_sample,
                                workers=workers, cache_dir=cache_dir)
    console.print(result.summary(), soft_wrap=True, highlight=False, markup=False)


@bench_app.command("train")
def bench_train(
    config: Annotated[list[str], typer.Option(help="small and/or thesis.")] = ["small", "thesis"],
    batch_size: Annotated[int, typer.Option()] = 64,
    patches: Annotated[int, typer.Option(help="Patches in the synthetic cache (one epoch).")] = 1024,
    rounds: Annotated[int, typer.Option(help="Rounds; each side's fastest is kept.")] = 2,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda (default: cuda if present).")] = None,
    compile: Annotated[bool, typer.Option(help="torch.compile both sides.")] = False,
) -> None:
    """A trial's training samples/s next to timm's own train step of the same network."""
    from mmvit.bench.models import keep_freed_memory
    from mmvit.bench.train import CONFIGS, run_train_benchmark

    unknown = [c for c in config if c not in CONFIGS]
    if unknown:
        raise MMViTError(f"--config must be small or thesis, but got {', '.join(unknown)}.")
    keep_freed_memory()
    for name in config:
        result = run_train_benchmark(name, batch_size=batch_size, patches=patches, device=device,
                                     rounds=rounds, compile=compile)
        console.print(result.summary(), soft_wrap=True, highlight=False, markup=False)


@bench_app.command("gpu")
def bench_gpu(
    patches: Annotated[int, typer.Option(help="Patches in the synthetic cache.")] = 20_000,
    batch_size: Annotated[int, typer.Option()] = 1024,
) -> None:
    """The thesis config on a CUDA device: train step, trial loop on a 20,000-patch cache, their
    ratio, peak GPU memory and the projected epoch of the training split (a few minutes)."""
    import torch

    from mmvit.bench.train import run_train_benchmark

    if not torch.cuda.is_available():
        raise MMViTError("bench gpu needs a CUDA device, and torch sees none here. Run it on a GPU "
                         "machine, or use `mmvit-study bench train` on this one.")
    result = run_train_benchmark("thesis", batch_size=batch_size, patches=patches, device="cuda", rounds=2)
    console.print(result.summary(), soft_wrap=True, highlight=False, markup=False)


@app.command("train")
def train(
    config: Annotated[Optional[Path], typer.Option(help="YAML trial configuration (model/data/augment/train/seed).")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a key, e.g. --set model.depth=4.")] = [],
    data: Annotated[Optional[Path], typer.Option(help="Archive root (default: the demo archive).")] = None,
    checkpoint_dir: Annotated[Optional[Path], typer.Option(help="Checkpoint here; rerun to resume.")] = None,
) -> None:
    """Train one configuration and print its validation and test tables."""
    from mmvit.config import load_trial_config
    from mmvit.train.loop import train_trial
    from mmvit.train.tables import print_trial_result

    trial = load_trial_config(config, set_, data)
    from mmvit.models import check_settings

    check_settings(trial.model.fusion, trial.model.model_fields_set - {"fusion"}, type(trial.model).model_fields)
    result = train_trial(trial, checkpoint_dir=checkpoint_dir, progress=console.is_terminal)
    print_trial_result(console, trial, result)


@bench_app.command("models")
def bench_models(
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    steps: Annotated[int, typer.Option(help="Timed steps per network and round.")] = 10,
    rounds: Annotated[int, typer.Option(help="Rounds; the fastest is kept.")] = 3,
    config: Annotated[list[str], typer.Option(help="small and/or thesis.")] = ["small", "thesis"],
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda (default: cuda if present).")] = None,
) -> None:
    """Training samples/s and peak memory of every model next to timm's VisionTransformer."""
    from mmvit.bench.models import SMALL, THESIS, run_model_benchmark, summary

    chosen = {"small": SMALL, "thesis": THESIS}
    unknown = [c for c in config if c not in chosen]
    if unknown:
        raise MMViTError(f"--config must be small or thesis, but got {', '.join(unknown)}.")
    rows = run_model_benchmark([chosen[c] for c in config], batch_size=batch_size, steps=steps,
                               rounds=rounds, device=device)
    console.print(summary(rows), soft_wrap=True, highlight=False)


@bench_app.command("study")
def bench_study(
    epochs: Annotated[int, typer.Option(help="Epochs per trial (longer trials hide fixed costs).")] = 6,
    cpu: Annotated[float, typer.Option(help="CPUs per trial.")] = 1.0,
    data: Annotated[Optional[Path], typer.Option(help="Archive root (default: the demo archive).")] = None,
    floor: Annotated[bool, typer.Option(help="Also run bare Ray Tune with the same trial times (the floor).")] = True,
) -> None:
    """Wall time of a 12-trial study against Σ trial time ÷ concurrency (the runner's overhead)."""
    from mmvit.bench.study import run_study_benchmark, run_tune_floor

    result = run_study_benchmark(epochs=epochs, cpu=cpu, data=str(data) if data else None)
    trial = result.trial_s
    console.print(f"{result.trials} trials × {epochs} epochs, {result.concurrency} at a time: "
                  f"trial time {min(trial):.1f}–{max(trial):.1f} s (Σ {sum(trial):.1f} s)\n"
                  f"wall {result.wall_s:.1f} s vs ideal "
                  f"Σ ÷ {result.concurrency} = {result.ideal_s:.1f} s → ratio {result.ratio:.3f} "
                  f"(target ≤ 1.05)\nfirst trial started after {result.first_start_s:.1f} s; "
                  f"end of the last trial to exit {result.tail_s:.1f} s; Σ storage/set-up time "
                  f"inside trials beyond their own {result.gaps_s:.1f} s", highlight=False)
    if floor:
        bare = run_tune_floor(trial, result.concurrency)
        console.print(f"baseline, bare Ray Tune with the same trial times (import torch+timm, sleep): wall "
                      f"{bare:.1f} s → ratio {bare / result.ideal_s:.3f}; the study runner takes "
                      f"{result.wall_s / bare:.3f}× that", highlight=False)


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="A study file (YAML).")],
    train_patches: Annotated[Optional[int], typer.Option(help="Training patches for the cost estimate (default: the v1 train split).")] = 269_695,
    profile: Annotated[Optional[str], typer.Option(help="full, quick or smoke (default: the one `run` chooses: full with --data, $MMVIT_DATA or data.root, quick on the demo archive).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="The archive `run` will get (only its presence chooses the profile; it is not read).")] = None,
    keep_checkpoints: Annotated[bool, typer.Option(help="Estimate the disk as `run --keep-checkpoints` keeps it (search trials' best weights too).")] = False,
) -> None:
    """Check a study file and print the plan `run` runs: arms, seeds, trials, a rough cost, the checkpoints' disk."""
    from mmvit.study.plan import REFERENCE_TFLOPS, choose_profile, plan_study
    from mmvit.study.spec import load_spec

    spec = load_spec(file)
    chosen = choose_profile(spec, profile, str(data) if data else None)
    if profile is None and chosen == "quick":
        console.print("No --data, $MMVIT_DATA or data.root: `run` trains on the demo archive in the quick profile "
                      "(pass --data or --profile full for the plan on a real archive).", highlight=False)
    profile = chosen
    plan = plan_study(spec, train_patches, profile=profile)
    console.print(Text.assemble((spec.study, "bold"), f" — {spec.description or 'no description'}"))
    table = Table("arm", "parameters", "tokens", "epochs", "search trials", "seed trials")
    table.columns[0].no_wrap = True
    for arm in plan.arms:
        table.add_row(arm.name, f"{arm.parameters / 1e6:.2f}M", str(arm.tokens), str(arm.epochs),
                      str(arm.search_trials), str(arm.seed_trials))
    console.print(table)
    seeds = plan.seeds
    console.print(f"{len(plan.arms)} arm(s) × {len(seeds)} seed(s) {seeds}"
                  + (f" + {plan.search_trials} {spec.search.sampler} search trial(s) per arm on seed {spec.search_seed}"
                     if spec.search else "")
                  + f" = {plan.total_trials} trial(s) ({profile} profile); selection on validation {spec.metric} "
                    f"({spec.direction})")
    if len(seeds) < 3:
        console.print(_labelled("Warning:", "bold yellow", f"{len(seeds)} seed(s): fewer than three paired seeds, so "
                                "no paired test will run (the report shows means without tests); use "
                                "`seeds: [0, 1, 2]` or more."), highlight=False)
    if plan.gpu_hours is not None:
        console.print(f"rough cost: {plan.gpu_hours:,.1f} GPU-hours at {REFERENCE_TFLOPS:.0f} TFLOP/s effective "
                      f"(6·params·tokens per sample-pass, {plan.arms[0].train_patches:,} training patches, "
                      "no early stopping)")
    from mmvit.study.checkpoints import estimate_disk

    console.print(estimate_disk(plan, keep=keep_checkpoints).line(), highlight=False)


@app.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="A study file (YAML).")],
    data: Annotated[Optional[Path], typer.Option(help="Archive root (default: the demo archive, quick profile).")] = None,
    studies_dir: Annotated[Path, typer.Option(help="Where studies/<study>/ lives.")] = Path("studies"),
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: SQLite in studies/<study>/).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="full, quick (15 epochs, width 64; default on the demo archive) or smoke (1 epoch, 128 patches, first seed, 2 search trials per arm).")] = None,
    address: Annotated[Optional[str], typer.Option(help="Join a running Ray cluster (auto or HOST:PORT).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run failed trials again.")] = False,
    reports_dir: Annotated[Path, typer.Option(help="Where the live report reports/<study>/ is written.")] = Path("reports"),
    storage_path: Annotated[Optional[str], typer.Option(help="Checkpoints and Ray results: a folder every node of the cluster mounts, or an s3:// / gs:// URI (default: --studies-dir).")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option(help="GPUs per trial; 0.5 puts two trials on a GPU (default: resources.gpu of the file, else 1 when the cluster has GPUs, else 0).")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option(help="CPUs per trial (default: resources.cpu of the file, else a fair share of a GPU node's CPUs, or 1 without GPUs).")] = None,
    require_complete: RequireComplete = False,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep search trials' best weights after their arm's search (default: removed; finished trials always drop their resume state).")] = False,
    verbose: Annotated[bool, typer.Option(help="Show Ray's logs.")] = False,
) -> None:
    """Run (or resume) a study: every arm × seed, recorded in Optuna storage."""
    from mmvit.study.cluster import use_cluster_token

    use_cluster_token(address)  # before Ray is imported: it reads its auth mode once
    from mmvit.study.runner import run_study
    from mmvit.study.spec import read_study
    from mmvit.storage.connection import redact, storage_url

    study_file = read_study(file, check_models=False)  # read once; run_study checks the models while Ray starts
    name = study_file.spec.study
    where = redact(storage_url(name, studies_dir, storage))
    try:
        summary = run_study(study_file, studies_dir=studies_dir, storage=storage,
                            data=str(data) if data else None, profile=profile, address=address,
                            retry_failed=retry_failed, verbose=verbose, console=console,
                            reports_dir=reports_dir, storage_path=storage_path,
                            cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
                            require_complete=require_complete, keep_checkpoints=keep_checkpoints)
    except KeyboardInterrupt:
        console.print(f"Stopped at once. Everything finished is in {where}; trials that were running "
                      f"resume from their last epoch checkpoint when you run the same command again.")
        raise typer.Exit(130) from None
    _print_summary(summary, where, name)
    if summary.interrupted or summary.stopped:
        console.print(f"Interrupted: {summary.interrupted} running trial(s) stopped; {summary.left} of "
                      f"{summary.planned} planned trial(s) still to do. Run the same command again: stopped "
                      "trials resume from their last epoch checkpoint.")
        raise typer.Exit(130)


def _print_summary(summary, where: str, name: str) -> None:
    """What a driver did: trials planned, done, run, failed, and where to look next."""
    searched = f", {summary.search_trials} search trial(s)" if summary.search_trials else ""
    others = f", {summary.by_others} by another driver" if summary.by_others else ""
    console.print(f"{summary.planned} trial(s) planned: {summary.already_done} already done, "
                  f"{summary.ran} run now{others}{searched}, {len(summary.failed)} failed · {summary.seconds:,.0f} s")
    for line in summary.failed:
        console.print(f"  failed: {line}", highlight=False)
    for arm in summary.unsearched_arms:
        console.print(f"  not trained: {arm} — no search trial of this arm completed (see `status`).")
    console.print(f"storage: {where} — see `mmvit-study status {name}`")
    if summary.report:
        console.print(f"report: {summary.report}", highlight=False)


@app.command("report")
def report(
    study: Annotated[str, typer.Argument(help="Study name.")],
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: SQLite in studies/<study>/).")] = None,
    studies_dir: Annotated[Path, typer.Option(help="Where studies/<study>/ lives.")] = Path("studies"),
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: reports/<study>).")] = None,
) -> None:
    """Write the HTML report and table exports of a study, from its Optuna storage only."""
    from mmvit.report.cli import report_command

    index = report_command(study, storage, studies_dir, out)
    console.print(f"report: {index}  (tables in {index.parent / 'tables'})", highlight=False)


@app.command("status")
def status(
    study: Annotated[str, typer.Argument(help="Study name.")],
    studies_dir: Annotated[Path, typer.Option(help="Where studies/<study>/ lives.")] = Path("studies"),
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL.")] = None,
    storage_path: Annotated[Optional[str], typer.Option(help="Where the study's checkpoints are, if it ran with --storage-path (default: where its last run recorded them).")] = None,
) -> None:
    """The arms × seeds table of a study, from storage, and the disk its checkpoints hold."""
    from mmvit.metric_names import AGGREGATE
    from mmvit.record_schema import StoredStudy, StoredTrial
    from mmvit.study.claims import state_label
    from mmvit.study.runner import status_rows

    loaded, trials = status_rows(study, studies_dir=studies_dir, storage=storage)
    recorded = StoredStudy.from_study(loaded)
    metric = (recorded.spec or {}).get("metric", "ap_macro")
    from rich import box

    table = Table("arm", "seed", "state", "epochs", "val", "AP micro", "AP macro", "F2", "HL", "host",
                  title=f"{study} ({recorded.profile or '?'} profile)", box=box.SIMPLE_HEAD,
                  padding=(0, 1), caption=f"val: validation {metric}; AP micro … HL: test split at the "
                                          "best validation epoch")
    for column in table.columns:
        column.no_wrap = True
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    for trial in trials:
        stored = StoredTrial.from_trial(trial)
        test = stored.test or {}
        table.add_row(str(stored.arm), str(stored.seed), state_label(trial), str(len(stored.history or [])),
                      fmt(trial.value), *(fmt(test.get(k)) for k in AGGREGATE),
                      stored.host or "—")  # on a cluster: where it runs or ran
    console.print(table)
    _print_slurm_jobs(loaded)
    from mmvit.storage.paths import StudyPaths
    from mmvit.study.checkpoints import status_candidates, status_line

    explicit = StudyPaths(study, studies_dir, storage_path=storage_path).checkpoints if storage_path else None
    console.print(status_line(status_candidates(recorded.checkpoint_disk, StudyPaths(study, studies_dir).checkpoints,
                                                explicit), recorded.checkpoint_disk), highlight=False)


def _print_slurm_jobs(study) -> None:
    """The study's SLURM job history (``slurm submit``), one line a job run, oldest first."""
    from mmvit.record_schema import StoredSlurmJob

    jobs = StoredSlurmJob.all_of(study)
    if not jobs:
        return
    restarts = max(job.restart for job in jobs)
    console.print(f"SLURM jobs: {len({job.job_id for job in jobs})} job(s), {len(jobs)} run(s), "
                  f"{restarts} restart(s)", highlight=False)
    for job in jobs:
        ended = job.ended[11:19] if job.ended else "…"
        trials = "" if job.trials_run is None else f", {job.trials_run} trial(s) run"
        left = "" if job.left is None else f", {job.left} left"
        reason = f" ({job.reason})" if job.reason else ""
        console.print(f"  job {job.job_id} restart {job.restart}: {job.started[:10]} {job.started[11:19]}–{ended} UTC "
                      f"on {','.join(job.nodes)} ({job.cpus_per_node} CPU, {job.gpus_per_node} GPU per node)"
                      f"{trials}{left} — {job.outcome}{reason}", highlight=False)


RUN_OPTIONS_HELP = "Options of `mmvit-study run` the job's driver gets."


def _run_option_args(data: Path | None, storage: str | None, profile: str | None, retry_failed: bool,
                     storage_path: str | None, gpus_per_trial: float | None, cpus_per_trial: float | None,
                     require_complete: bool, keep_checkpoints: bool, reports_dir: Path) -> list[str]:
    """The driver's ``run`` options as arguments of ``slurm job`` (paths made absolute: the job
    may start in another folder)."""
    args = [f"--reports-dir={reports_dir.resolve()}"]
    if data is not None:
        args.append(f"--data={data.resolve()}")
    for name, value in (("--storage", storage), ("--profile", profile), ("--storage-path", storage_path),
                        ("--gpus-per-trial", gpus_per_trial), ("--cpus-per-trial", cpus_per_trial)):
        if value is not None:
            args.append(f"{name}={value}")
    for name, flag in (("--retry-failed", retry_failed), ("--require-complete", require_complete),
                       ("--keep-checkpoints", keep_checkpoints)):
        if flag:
            args.append(name)
    return args


@slurm_app.command("submit")
def slurm_submit(
    file: Annotated[Path, typer.Argument(help="A study file (YAML).")],
    nodes: Annotated[int, typer.Option(help="Nodes: Ray's head on the first, a worker on each other.")] = 1,
    gpus_per_node: Annotated[Optional[int], typer.Option(help="GPUs per node (#SBATCH --gpus-per-node; default: none asked).")] = None,
    cpus_per_node: Annotated[Optional[int], typer.Option(help="CPUs per node (#SBATCH --cpus-per-task; default: the partition's).")] = None,
    mem: Annotated[Optional[str], typer.Option(help="Memory per node (#SBATCH --mem, e.g. 128G).")] = None,
    time: Annotated[Optional[str], typer.Option(help="The job's time limit (e.g. 04:00:00); the job requeues itself before it.")] = None,
    partition: Annotated[Optional[str], typer.Option(help="SLURM partition.")] = None,
    account: Annotated[Optional[str], typer.Option(help="SLURM account.")] = None,
    qos: Annotated[Optional[str], typer.Option(help="SLURM QOS.")] = None,
    signal_lead: Annotated[int, typer.Option(help="Seconds before the time limit that SLURM signals the driver to stop and requeue.")] = 300,
    max_restarts: Annotated[int, typer.Option(help="At most this many requeues; then the job ends and says so.")] = 10,
    sbatch: Annotated[Optional[list[str]], typer.Option("--sbatch", help="A further #SBATCH option, as written (repeatable): --sbatch=--constraint=a100.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Write the script and print it; do not submit.")] = False,
    data: Annotated[Optional[Path], typer.Option(help=RUN_OPTIONS_HELP + " Archive root.")] = None,
    studies_dir: Annotated[Path, typer.Option(help="Where studies/<study>/ lives (on the shared filesystem).")] = Path("studies"),
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: SQLite in studies/<study>/; PostgreSQL for several nodes).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="full, quick or smoke (as for run).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run failed trials again (first job only).")] = False,
    reports_dir: Annotated[Path, typer.Option(help="Where the live report reports/<study>/ is written.")] = Path("reports"),
    storage_path: Annotated[Optional[str], typer.Option(help="Checkpoints and Ray results (default: --studies-dir).")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option(help="GPUs per trial (as for run).")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option(help="CPUs per trial (as for run).")] = None,
    require_complete: RequireComplete = False,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep search trials' best weights (as for run).")] = False,
) -> None:
    """Write the study's sbatch script (studies/<study>/slurm/) and submit it."""
    from mmvit.slurm.script import JobRequest, submit, write_script
    from mmvit.storage.connection import redact, storage_url
    from mmvit.study.spec import read_study

    spec = read_study(file, check_models=False).spec  # a bad file is refused before it waits in a queue
    request = JobRequest(file, spec.study, nodes=nodes, gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node,
                         mem=mem, time=time, partition=partition, account=account, qos=qos,
                         signal_lead=signal_lead, max_restarts=max_restarts, extra=list(sbatch or []),
                         studies_dir=studies_dir,
                         run_options=_run_option_args(data, storage, profile, retry_failed, storage_path,
                                                      gpus_per_trial, cpus_per_trial, require_complete,
                                                      keep_checkpoints, reports_dir))
    request.check()
    url = storage_url(spec.study, studies_dir, storage)
    if nodes > 1 and url.startswith("sqlite"):
        errors.print(_labelled("Warning:", "bold yellow", f"{nodes} nodes with SQLite storage ({redact(url)}): "
                               "trials on every node write to that file, which needs a shared filesystem with "
                               "working locks. Prefer --storage postgresql://… (docs/slurm.md)."), highlight=False)
    script = write_script(request)
    if dry_run:
        console.print(script.read_text(), highlight=False, markup=False)
        console.print(f"Written {script} (not submitted): `sbatch {script}` submits it.", highlight=False)
        return
    job = submit(script)
    console.print(f"Submitted job {job}: {script}\nlog: {request.folder / f'job-{job}.out'} · follow it with "
                  f"`squeue -j {job}` and `mmvit-study status {spec.study}`.", highlight=False)


@slurm_app.command("job")
def slurm_job(
    file: Annotated[Path, typer.Argument(help="A study file (YAML).")],
    max_restarts: Annotated[int, typer.Option(help="Requeue at most this many times.")] = 10,
    data: Annotated[Optional[Path], typer.Option(help="Archive root.")] = None,
    studies_dir: Annotated[Path, typer.Option(help="Where studies/<study>/ lives.")] = Path("studies"),
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL.")] = None,
    profile: Annotated[Optional[str], typer.Option(help="full, quick or smoke.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Run failed trials again.")] = False,
    reports_dir: Annotated[Path, typer.Option(help="Where the live report is written.")] = Path("reports"),
    storage_path: Annotated[Optional[str], typer.Option(help="Checkpoints and Ray results.")] = None,
    gpus_per_trial: Annotated[Optional[float], typer.Option(help="GPUs per trial.")] = None,
    cpus_per_trial: Annotated[Optional[float], typer.Option(help="CPUs per trial.")] = None,
    require_complete: RequireComplete = False,
    keep_checkpoints: Annotated[bool, typer.Option(help="Keep search trials' best weights.")] = False,
    verbose: Annotated[bool, typer.Option(help="Show Ray's logs.")] = False,
) -> None:
    """Inside a SLURM job (what the submitted script runs): start Ray over the allocation, run the
    study, stop Ray, requeue the job while planned trials remain."""
    from mmvit.slurm.job import requeue, run_job

    retry = retry_failed and int(os.environ.get("SLURM_RESTART_COUNT") or 0) == 0  # the first run only
    result = run_job(file, max_restarts=max_restarts, studies_dir=studies_dir, storage=storage, verbose=verbose,
                     console=console, data=str(data) if data else None, profile=profile, retry_failed=retry,
                     reports_dir=reports_dir, storage_path=storage_path, gpus_per_trial=gpus_per_trial,
                     cpus_per_trial=cpus_per_trial, require_complete=require_complete,
                     keep_checkpoints=keep_checkpoints)
    if result.summary is not None:
        from mmvit.storage.connection import redact, storage_url

        _print_summary(result.summary, redact(storage_url(result.study, studies_dir, storage)), result.study)
    console.print(result.message, highlight=False)
    if result.requeue:
        requeue(result.job_id)  # SLURM ends this process: the last thing the job does
    if result.exit_code:
        raise typer.Exit(result.exit_code)
