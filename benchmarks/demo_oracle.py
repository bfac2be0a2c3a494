"""The demo archive's ceiling per modality: the AP macro of an oracle that knows which S2 spectral
groups and which S1 backscatter groups a patch contains and scores each class by its posterior.

Usage: python benchmarks/demo_oracle.py [--draws 400000] [--splits 200]

The posterior P(class | groups present) is counted on ``--draws`` label draws of the demo's
generative model (:func:`mmvit.data.demo.draw_labels`, :data:`mmvit.data.demo.CLASS_GROUPS`); the
oracle is then scored like a model, with :func:`mmvit.train.metrics.compute_metrics`, on
``--splits`` fresh 150-patch test splits (the default demo's size). It ignores what cell counts
and areas could add, so it is a lower bound of the Bayes-optimal AP, and it says how far a
study's learned models are from what each modality allows: the known-answer ranking
S2+S1 > S2 > S1 is the ranking of these ceilings.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmvit.data.demo import CLASS_GROUPS, draw_labels  # noqa: E402
from mmvit.data.labels import LABELS_19  # noqa: E402
from mmvit.train.metrics import compute_metrics  # noqa: E402

S2_GROUP = [CLASS_GROUPS[name][0] for name in LABELS_19]
S1_GROUP = [CLASS_GROUPS[name][1] for name in LABELS_19]
VIEWS = {
    "S1": lambda classes: frozenset(S1_GROUP[c] for c in classes),
    "S2": lambda classes: frozenset(S2_GROUP[c] for c in classes),
    "S2+S1": lambda classes: (frozenset(S2_GROUP[c] for c in classes), frozenset(S1_GROUP[c] for c in classes)),
}


def observations(labels: np.ndarray, view) -> list:
    return [view(np.flatnonzero(row)) for row in labels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=400_000)
    parser.add_argument("--splits", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    train = draw_labels(rng, args.draws)
    prior = train.mean(axis=0)
    tests = [draw_labels(rng, 150) for _ in range(args.splits)]
    for name, view in VIEWS.items():
        totals, counts = defaultdict(lambda: np.zeros(len(LABELS_19))), defaultdict(int)
        for key, row in zip(observations(train, view), train):
            totals[key] += row
            counts[key] += 1
        posterior = {key: totals[key] / counts[key] for key in totals}
        scores = []
        for test in tests:
            predicted = np.array([posterior.get(key, prior) for key in observations(test, view)])
            scores.append(compute_metrics(predicted, test.astype(np.float32), 0.5)["ap_macro"])
        print(f"{name:6s} oracle test AP macro on 150-patch splits: {np.mean(scores):.3f} ± {np.std(scores):.3f}")


if __name__ == "__main__":
    main()
