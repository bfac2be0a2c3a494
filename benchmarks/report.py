"""Report build time on a large study. Usage: python benchmarks/report.py [--seeds N] [--search N] [--epochs N]

Writes an SQLite storage the way the runner does — by default 20 arms (5 fusions × 4 depths) ×
5 seeds = 100 final trials plus 20 search trials per arm = 400 search trials (a third pruned at
ASHA rungs at 1/3/9/27 epochs, every other trial with a 60-epoch history): 500 trials — then times
``build_report`` on it, in a fresh process (imports included: what ``mmvit-study report`` costs)
and then warm, in-process (what the runner's refresh after each trial costs). The issue's target
is under 10 s on a 2-core machine. A second storage puts all 500 trials in the main study.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmvit.report import build_report  # noqa: E402
from tests.report_fixtures import AGG, final_trial, search_trial, spec, write_study  # noqa: E402

COLD = """
import sys, time
started = time.perf_counter()
from pathlib import Path
from mmvit.report import build_report
build_report(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
print(time.perf_counter() - started)
"""
FUSIONS = ["early", "modality_token", "channel_token", "middle", "sct"]
DEPTHS = [2, 4, 8, 12]


def generate(url: str, name: str, *, seeds: int, search_per_arm: int, epochs: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    arms = [{"name": f"model.fusion={f}, model.depth={d}", "labels": {"model.fusion": f, "model.depth": d},
             "baseline": (f, d) == ("sct", 8)} for f in FUSIONS for d in DEPTHS]
    trials, search = [], {}
    for i, arm in enumerate(arms):
        level = 0.78 + 0.02 * rng.random()
        for s in range(seeds):
            curve = [level * (1 - math.exp(-e / 12)) + 0.005 * rng.random() for e in range(1, epochs + 1)]
            test = {m: (0.06 if m == "hamming_loss" else level) + 0.01 * rng.gauss(0, 1) for m in AGG}
            trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, test=test,
                                      per_class=[level + 0.1 * rng.random() for _ in range(19)],
                                      class_counts=[1000 * (c + 1) for c in range(19)], curve=curve,
                                      wall_s=3600.0 * rng.uniform(1, 3), parameters=1_000_000 * (i + 1),
                                      samples_per_s=100.0 + 10 * i))
        rows = []
        for k in range(search_per_arm):
            lr, drop = 10 ** rng.uniform(-5, -2), rng.uniform(0, 0.5)
            pruned = k % 3 == 2
            length = rng.choice([1, 3, 9, 27]) if pruned else epochs
            curve = [(0.7 + 0.1 * rng.random()) * (1 - math.exp(-e / 12)) for e in range(1, length + 1)]
            rows.append(search_trial(arm=arm["name"], state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                                     params={"train.lr": lr, "model.drop_path_rate": drop}, curve=curve,
                                     pruned_at=length if pruned else None))
        if rows:
            search[arm["name"]] = rows
    write_study(url, name, spec=spec(name, seeds=list(range(seeds)), ablate={"model.fusion": FUSIONS,
                                                                              "model.depth": DEPTHS}),
                arms=arms, trials=trials, search=search)
    return len(trials) + sum(len(r) for r in search.values())


def timed(label: str, folder: Path, *, seeds: int, search_per_arm: int, epochs: int, repeats: int) -> float:
    url = f"sqlite:///{folder}/{label}.db"
    started = time.perf_counter()
    count = generate(url, label, seeds=seeds, search_per_arm=search_per_arm, epochs=epochs)
    print(f"[{label}] wrote {count} trials × {epochs} epochs in {time.perf_counter() - started:.1f} s "
          f"({os.path.getsize(folder / f'{label}.db') / 2**20:.1f} MiB)")
    cold = subprocess.run([sys.executable, "-c", COLD, label, url, str(folder / f"{label}-cold")], check=True,
                          capture_output=True, text=True).stdout.strip()
    print(f"[{label}] build_report in a fresh process: {float(cold):.2f} s (imports included)")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        index = build_report(label, url, folder / label)
        times.append(time.perf_counter() - started)
    print(f"[{label}] build_report: best {min(times):.2f} s, first {times[0]:.2f} s of {repeats} "
          f"(index.html {index.stat().st_size / 2**20:.1f} MiB)")
    return float(cold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="final trials per arm (20 arms)")
    parser.add_argument("--search", type=int, default=20, help="search trials per arm")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"CPUs available: {len(os.sched_getaffinity(0))}")
    # tmpfs when there is one: writing 1000 trials through Optuna is fsync-bound on disk (the build
    # reads the file from the page cache either way).
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        folder = Path(tmp)
        mixed = timed("mixed", folder, seeds=args.seeds, search_per_arm=args.search, epochs=args.epochs,
                      repeats=args.repeats)
        total = 20 * (args.seeds + args.search)
        final = timed("final-only", folder, seeds=total // 20, search_per_arm=0, epochs=args.epochs,
                      repeats=args.repeats)
    verdict = "under" if max(mixed, final) < 10 else "OVER"
    print(f"report of {total} trials × {args.epochs} epochs in a fresh process: {mixed:.2f} s "
          f"({20 * args.seeds} final + {20 * args.search} search), {final:.2f} s ({total} final) — {verdict} "
          "the 10 s target")


if __name__ == "__main__":
    main()
