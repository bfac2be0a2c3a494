"""What a new user's first study gives: wall time, whether every arm learned, and the tests.

Usage: python benchmarks/quick_study.py search_spaces/depth.yaml [--demo-seed N] [--profile quick]

Runs ``mmvit-study run FILE`` exactly as a user does (a fresh process, the demo archive of 600
patches of the given seed, the quick profile) in a temporary folder, times it, then reads the
study back from storage and prints per arm: test AP macro and F2 (mean over seeds), the best
epoch of each seed, the comparison arm with Δ and the paired test, and the validation learning
curve (AP macro per optimiser step) of each arm's first seed. The issue's targets: depth.yaml
≤ 10 min on 2 cores with every arm at test AP macro ≥ 0.40 and F2 > 0.2 and no best epoch 1;
known_answer.yaml ≤ 8 min, S2+S1 > S2 > S1 with both steps significant after Holm.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmvit.report.analysis import arm_results, comparison_pairs, comparison_tests  # noqa: E402
from mmvit.report.records import load_study_record  # noqa: E402
from mmvit.study.spec import load_spec  # noqa: E402
from mmvit.storage.connection import storage_url  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--demo-seed", type=int, default=0)
    parser.add_argument("--profile", default="quick")
    args = parser.parse_args()
    spec = load_spec(args.study)
    with tempfile.TemporaryDirectory(prefix="mmvit-bench-") as folder:
        env = dict(os.environ)
        command = ["mmvit-study", "run", str(args.study.resolve()), "--profile", args.profile]
        if args.demo_seed != 0:
            from mmvit.data.demo import ensure_demo_archive

            command += ["--data", str(ensure_demo_archive(patches=600, seed=args.demo_seed))]
        started = time.perf_counter()
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        record = load_study_record(spec.study, storage_url(spec.study, Path(folder) / "studies"))
    results = arm_results(record)
    pairs = comparison_pairs(record)
    tests = comparison_tests(results, pairs)
    print(f"{args.study.name}, demo seed {args.demo_seed}, {args.profile} profile: {wall:.0f} s wall "
          f"({wall / 60:.1f} min), seeds {record.seeds}")
    print(f"{'arm':44s} {'AP macro':>9s} {'F2':>7s}  best epochs  vs.            Δ AP macro  test")
    for name, result in results.items():
        best = [t.best_epoch for t in result.complete.values()]
        test = tests["ap_macro"].get(name)
        versus = pairs.get(name, "—")
        delta = f"{test.mean_difference:+.4f}" if test and math.isfinite(test.mean_difference) else "—"
        print(f"{name:44s} {result.metrics['ap_macro'].mean:9.4f} {result.metrics['f2'].mean:7.4f}  "
              f"{str(best):11s}  {versus:14s} {delta:>10s}  {test.describe() if test else ''}")
    print("\ntest AP macro per seed")
    for name, result in results.items():
        print(f"  {name:44s} " + " ".join(f"{seed}: {value:.4f}" for seed, value in sorted(result.seed_values('ap_macro').items())))
    print("\nvalidation AP macro per epoch (first seed); steps = epoch × ceil(train patches / batch)")
    for name, result in results.items():
        trial = result.complete[min(result.complete)]
        curve = " ".join(f"{h.get('ap_macro', float('nan')):.3f}" for h in trial.history)
        print(f"  {name:44s} {curve}")


if __name__ == "__main__":
    main()
