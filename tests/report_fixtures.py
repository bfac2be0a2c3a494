"""Optuna storages with known trials, written the way the study runner writes them.

Used by the report tests and by ``benchmarks/report.py``. Only Optuna is used here (no runner,
no torch): the storage contract — study and trial user attributes — is the interface under test,
and the attributes are written through the runner's own record classes
(:mod:`mmvit.record_schema`), so a key the runner renames is renamed here too.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from mmvit.record_schema import StoredArm, StoredSearchStudy, StoredStudy, StoredTrial, write_study as write_attrs

CLASSES = [
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands",
    "Inland waters", "Marine waters",
]
"""BigEarthNet-MM's 19 classes in canonical order (as the runner records them)."""

METRIC_KEYS = ("ap_micro", "ap_macro", "f2", "f2_macro", "hamming_loss", "precision_micro", "recall_micro",
               "precision_macro", "recall_macro")
T0 = datetime(2024, 5, 1, 9, 0, 0)
SEARCH_SPACE: dict[str, BaseDistribution] = {"train.lr": FloatDistribution(1e-5, 1e-2, log=True),
                                             "model.drop_path_rate": FloatDistribution(0.0, 0.5),
                                             "model.num_heads": IntDistribution(2, 8)}


def history(curve: list[float], metric: str = "ap_macro") -> list[dict[str, Any]]:
    """Per-epoch records with ``metric`` following ``curve`` (other metrics derived from it)."""
    out = []
    for epoch, value in enumerate(curve, start=1):
        record = {"epoch": epoch, "train_loss": 1.0 / epoch, "seconds": 30.0}
        record.update({k: value * 0.9 for k in METRIC_KEYS})
        record["hamming_loss"] = 0.2 - value * 0.1
        record[metric] = value
        out.append(record)
    return out


def final_trial(*, arm: str, arm_index: int, seed: int, state: TrialState = TrialState.COMPLETE,
                test: dict[str, float] | None = None, per_class: list[float | None] | None = None,
                class_counts: list[int] | None = None, curve: list[float] | None = None,
                wall_s: float | None = None, parameters: int | None = None, samples_per_s: float | None = None,
                error: str | None = None, start: datetime = T0, end: datetime | None = None,
                metric: str = "ap_macro") -> FrozenTrial:
    """A main-study trial of one arm × seed. COMPLETE trials carry the full result attributes."""
    curve = curve or []
    record = StoredTrial.start(arm=arm, arm_index=arm_index, seed=seed, phase="final", config={"seed": seed},
                               config_key=f"{arm_index}-{seed}", history=history(curve, metric), error=error)
    value = None
    if state == TrialState.COMPLETE:
        test = dict(test or {})
        best = max(range(len(curve)), key=lambda i: curve[i]) if curve else 0
        value = curve[best] if curve else test.get(metric, 0.5)
        record = replace(record, validation={metric: value}, test=test, ap_per_class_validation=per_class,
                         ap_per_class_test=per_class, best_epoch=best + 1, parameters=parameters,
                         samples_per_s=samples_per_s, peak_memory_mb=1000.0 + arm_index, wall_s=wall_s,
                         epochs_run=len(curve), device="cpu", class_counts=class_counts)
    attrs = record.to_attrs()
    finished = state != TrialState.RUNNING
    return FrozenTrial(number=0, state=state, value=value, datetime_start=start,
                       datetime_complete=(end or start + timedelta(minutes=30)) if finished else None,
                       params={}, distributions={}, user_attrs=attrs, system_attrs={},
                       intermediate_values={i + 1: v for i, v in enumerate(curve)}, trial_id=0)


def search_trial(*, arm: str, state: TrialState, params: dict[str, Any], curve: list[float],
                 pruned_at: int | None = None, start: datetime = T0, minutes: float = 10.0,
                 metric: str = "ap_macro") -> FrozenTrial:
    """A search trial as ArmSearch records it: params with distributions, per-epoch values."""
    attrs = StoredTrial.start(arm=arm, seed=0, phase="search", history=history(curve, metric), pruned_at_epoch=pruned_at,
                              error="RuntimeError: diverged" if state == TrialState.FAIL else None).to_attrs()
    value = max(curve) if state == TrialState.COMPLETE and curve else None
    finished = state != TrialState.RUNNING
    return FrozenTrial(number=0, state=state, value=value, datetime_start=start,
                       datetime_complete=start + timedelta(minutes=minutes) if finished else None,
                       params=params, distributions={k: SEARCH_SPACE[k] for k in params}, user_attrs=attrs,
                       system_attrs={}, intermediate_values={i + 1: v for i, v in enumerate(curve)}, trial_id=0)


def write_study(url: str, name: str, *, spec: dict[str, Any], arms: list[dict[str, Any]],
                trials: list[FrozenTrial], labels: list[str] | None = CLASSES, reference: dict | None = None,
                profile: str = "full", search: dict[str, list[FrozenTrial]] | None = None,
                direction: str = "maximize", planned_seeds: list[int] | None = None,
                archive_presence: dict[str, list[int]] | None = None) -> None:
    """Create the main study (identity attributes as the runner records them), its trials, and
    one search study per arm in ``search``."""
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage, study_name=name, direction=direction)
    compared = all("compare_with" in arm for arm in arms)
    write_attrs(study, StoredStudy.identity(
        spec=spec, spec_hash="0123456789abcdef", archive="/data/bigearthnet", profile=profile,
        environment={"versions": {"mmvit-study": "0.1.0", "optuna": optuna.__version__, "torch": "2.5.1"},
                     "git_commit": "abc123def456"},
        arms=[StoredArm.from_attrs(arm) for arm in arms] if compared else None,
        search_studies=[f"{name}/search/{arm}" for arm in (search or {})], labels=labels, reference=reference,
        planned_seeds=planned_seeds, archive_presence=archive_presence))
    if not compared:  # arms as studies stored before per-axis comparisons hold them (no compare_with)
        study.set_user_attr("arms", arms)
    study.add_trials(trials)
    for index, (arm, arm_trials) in enumerate((search or {}).items()):
        child = optuna.create_study(storage=storage, study_name=f"{name}/search/{arm}", direction=direction)
        write_attrs(child, StoredSearchStudy.of(name, arm, index))
        child.add_trials(arm_trials)


def spec(name: str, *, seeds: list[int], ablate: Any, description: str = "", search: dict | None = None,
         metric: str = "ap_macro", baseline: Any = None) -> dict[str, Any]:
    """A resolved spec dict (the fields the report reads)."""
    return {"study": name, "description": description, "base": {}, "ablate": ablate, "seeds": seeds,
            "search": search, "metric": metric, "resources": {"cpu": 1.0, "gpu": 0.0}, "max_concurrent": None,
            "baseline": baseline}


def with_comparisons(arms: list[dict[str, Any]], ablate: Any, baseline: Any = None) -> list[dict[str, Any]]:
    """The arms as the runner records them (:func:`mmvit.study.runner.record_identity`): ``baseline``
    flags the study's reference arm, ``compare_with`` and ``axis`` say what each arm's Δ is
    against. Arms written without this are the format of studies stored before per-axis Δ."""
    from mmvit.study.arms import comparisons

    compared = comparisons(ablate, baseline)
    return [{**arm, "baseline": compared[arm["name"]].compare_with is None,
             "compare_with": compared[arm["name"]].compare_with, "axis": compared[arm["name"]].axis} for arm in arms]


def nan_to_none(values: list[float]) -> list[float | None]:
    return [None if math.isnan(v) else v for v in values]


# ---------------------------------------------------------------------------- scenarios

AGG = ("ap_micro", "ap_macro", "f2", "hamming_loss")
XSS = "<script>alert(1)</script>"
ODD = 'sct &<>"'
"""An axis value with every HTML-special character."""


class Scenario:
    """A written storage and the raw numbers it holds, for tests to derive expectations from."""

    def __init__(self, url: str, name: str, arms: list[dict], seeds: list[int]) -> None:
        self.url, self.name, self.arms, self.seeds = url, name, arms, seeds
        self.test: dict[str, dict[int, dict[str, float]]] = {a["name"]: {} for a in arms}
        """arm → seed → test metrics of its COMPLETE trial."""
        self.per_class: dict[str, dict[int, list[float]]] = {a["name"]: {} for a in arms}
        self.class_counts: list[int] = []
        self.hours = 0.0
        """Expected compute: wall_s of complete trials, else complete − start (RUNNING: ≈ now − start)."""
        self.running_hours = 0.0
        self.parameters: dict[str, int] = {}
        self.samples_per_s: dict[str, float] = {}
        self.search_states: dict[str, dict[str, int]] = {}
        self.pruned_at: dict[str, list[int]] = {}

    def arm(self, index: int) -> str:
        return self.arms[index]["name"]


def full_scenario(folder, name: str = "depth", *, per_axis: bool = True) -> Scenario:
    """Two axes (fusion × depth, 2 × 2), four seeds, a quick profile, search studies with
    COMPLETE/PRUNED/FAIL trials, and RUNNING, FAIL, interrupted and missing seeds:

    - arm 0 (early, 2): 4 seeds, clearly better than arm 1 (seed 0 re-run after an interruption);
    - arm 1 (early, 4): 4 seeds;
    - arm 2 (sct…, 2): as good as arm 0; seeds 0–2 complete, seed 3 RUNNING;
    - arm 3 (sct…, 4): seeds 0–1 complete, seed 2 FAIL, seed 3 never started.

    ``per_axis``: arms recorded as the runner records them now — arm 0 is the reference (the first
    listed levels), arms 1 and 2 are compared with it (4 and 3 pairs: tested), arm 3 with arm 2 (2
    pairs: no test). Otherwise the format of studies stored before per-axis Δ: arm 1 flagged as
    the one baseline of every Δ."""
    import numpy as np

    url = f"sqlite:///{folder}/{name}.db"
    fusions, depths = ["early", ODD], [2, 4]
    arms = [{"name": f"model.fusion={f}, model.depth={d}", "labels": {"model.fusion": f, "model.depth": d},
             "settings": {"model.fusion": f, "model.depth": d}, "baseline": (f, d) == ("early", 4)}
            for f in fusions for d in depths]
    ablate = {"model.fusion": fusions, "model.depth": depths}
    if per_axis:
        arms = with_comparisons([{k: v for k, v in a.items() if k != "baseline"} for a in arms], ablate)
    seeds = [0, 1, 2, 3]
    scenario = Scenario(url, name, arms, seeds)
    rng = np.random.default_rng(7)
    base = {m: (0.06 if m == "hamming_loss" else 0.80) + 0.01 * rng.standard_normal(4) for m in AGG}
    shift = [{m: (-0.01 if m == "hamming_loss" else 0.03) for m in AGG}, {m: 0.0 for m in AGG},
             {m: (-0.01 if m == "hamming_loss" else 0.03) for m in AGG}, {m: 0.002 for m in AGG}]
    noise = [0.002, 0.0, 0.006, 0.004]
    complete_seeds = [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2], [0, 1]]
    scenario.class_counts = [1000 * (c + 1) for c in range(19)]
    params = [5_000_000, 8_000_000, 6_000_000, 9_000_000]
    speed = [400.0, 300.0, 350.0, 250.0]
    trials: list[FrozenTrial] = []
    now = datetime.now()
    for i, arm in enumerate(arms):
        scenario.parameters[arm["name"]] = params[i]
        scenario.samples_per_s[arm["name"]] = speed[i]
        for s in seeds:
            if i == 0 and s == 0:  # an interrupted first attempt, then the re-run that completed
                trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, state=TrialState.FAIL,
                                          curve=[0.3], error="interrupted: its driver stopped"))
                scenario.hours += 0.5
            if s in complete_seeds[i]:
                test = {m: float(base[m][s] + shift[i][m] + noise[i] * rng.standard_normal()) for m in AGG}
                per_class = [float(v) for v in 0.5 + 0.4 * rng.random(19)]
                if i == 2:
                    per_class[5] = math.nan  # never a positive test patch of this class: NaN in every seed
                stored: list[float | None] = list(per_class)
                if i == 0 and s == 1:
                    per_class[16] = math.nan  # stored as JSON null, like the runner writes it
                    stored[16] = None
                scenario.test[arm["name"]][s] = test
                scenario.per_class[arm["name"]][s] = per_class
                wall = 1800.0 + 60 * i + s
                scenario.hours += wall / 3600
                curve = [float(v) for v in np.linspace(0.3, test["ap_macro"], 5)]
                trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, test=test, per_class=stored,
                                          class_counts=scenario.class_counts, curve=curve, wall_s=wall,
                                          parameters=params[i], samples_per_s=speed[i]))
            elif i == 2 and s == 3:
                trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, state=TrialState.RUNNING,
                                          curve=[0.3, 0.4], start=now - timedelta(hours=2)))
                scenario.running_hours += 2.0
            elif i == 3 and s == 2:
                trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, state=TrialState.FAIL, curve=[0.3],
                                          error="RuntimeError: CUDA out of memory\nTraceback ..."))
                scenario.hours += 0.5
    search: dict[str, list[FrozenTrial]] = {}
    states = [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE, TrialState.FAIL,
              TrialState.PRUNED, TrialState.COMPLETE]
    for i, arm in enumerate(arms):
        rows = []
        scenario.pruned_at[arm["name"]] = []
        for k, state in enumerate(states):
            lr = 10 ** (-5 + 3 * ((k * 3 + i) % 7) / 6)
            drop = 0.05 * ((k * 5 + i) % 9)
            quality = 0.6 + 0.25 * (1 - abs(math.log10(lr) + 3.5) / 2) - 0.1 * drop
            length = {TrialState.COMPLETE: 5, TrialState.PRUNED: 2 + (k % 2), TrialState.FAIL: 1}[state]
            curve = [quality * (e + 1) / 5 for e in range(length)]
            pruned = length if state == TrialState.PRUNED else None
            if pruned:
                scenario.pruned_at[arm["name"]].append(pruned)
            rows.append(search_trial(arm=arm["name"], state=state, curve=curve, pruned_at=pruned,
                                     params={"train.lr": lr, "model.drop_path_rate": drop}))
            scenario.hours += 10 / 60
        search[arm["name"]] = rows
        scenario.search_states[arm["name"]] = {s.name: states.count(s) for s in set(states)}
    description = f"Fusion × depth {XSS} ablation"
    write_study(url, name, spec=spec(name, seeds=seeds, ablate=ablate, description=description,
                                     search={"sampler": "tpe", "trials_per_arm": 7, "params": {}}),
                arms=arms, trials=trials, search=search, profile="quick",
                reference={"citation": "Thesis Table 7.8 (Early Fusion)",
                           "arms": {arms[0]["name"]: {"ap_micro": 0.8871, "ap_macro": 0.8081}}})
    return scenario


def edge_scenario(folder, name: str = "edge") -> Scenario:
    """List-form arms, no arm flagged baseline, two seeds: ``shallow`` complete twice, ``deep``
    complete once (seed 1 FAIL), ``broken`` never complete (FAIL, RUNNING); a reference naming an arm
    the study does not have; full profile; no search."""
    url = f"sqlite:///{folder}/{name}.db"
    arms = [{"name": n, "labels": {"model.depth": d, "model.fusion_depth": f}, "baseline": False}
            for n, d, f in (("shallow", 6, 2), ("deep", 4, 4), ("broken", 2, 6))]
    scenario = Scenario(url, name, arms, [0, 1])
    values = {"shallow": {0: 0.81, 1: 0.83}, "deep": {0: 0.79}}
    trials = []
    for i, arm in enumerate(arms):
        for s in (0, 1):
            if s in values.get(arm["name"], {}):
                v = values[arm["name"]][s]
                test = {"ap_micro": v, "ap_macro": v - 0.05, "f2": v - 0.1, "hamming_loss": 1 - v}
                scenario.test[arm["name"]][s] = test
                per_class = [v] * 19
                scenario.per_class[arm["name"]][s] = per_class
                trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, test=test, per_class=per_class,
                                          class_counts=list(range(19)), curve=[0.5, v], wall_s=600.0,
                                          parameters=1000 * (i + 1), samples_per_s=10.0))
            elif arm["name"] == "broken" and s == 1:
                trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, state=TrialState.RUNNING,
                                          start=datetime.now() - timedelta(minutes=5)))
            else:
                trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, state=TrialState.FAIL,
                                          error="ValueError: loss is NaN"))
    write_study(url, name, spec=spec(name, seeds=[0, 1], ablate=[a["labels"] for a in arms]), arms=arms,
                trials=trials, reference={"citation": "Somebody et al. 2023",
                                          "arms": {"shallow": {"ap_micro": 0.8, "hamming_loss": 0.2},
                                                   "ghost": {"ap_macro": 0.7}}})
    return scenario


AUGMENTATION = {"standard": {"augment.synchronised": True, "augment.modality_drop": 0.0},
                "desynchronised": {"augment.synchronised": False, "augment.modality_drop": 0.0},
                "modality_drop": {"augment.synchronised": True, "augment.modality_drop": 0.5},
                "all": {"augment.synchronised": False, "augment.modality_drop": 0.5}}
"""The named axis of search_spaces/augmentation.yaml."""


def augmentation_scenario(folder, name: str = "augmentation", *, baseline: Any = None) -> Scenario:
    """search_spaces/augmentation.yaml's product (fusion early/sct × four augmentation labels),
    three seeds, every seed complete. Two arms have zero-variance differences from their
    comparison arm: (early, modality_drop) is (early, standard) + 0.01 in every seed, and
    (sct, desynchronised) repeats (sct, standard) exactly (identical runs)."""
    import numpy as np

    url = f"sqlite:///{folder}/{name}.db"
    ablate = {"model.fusion": ["early", "sct"], "augmentation": AUGMENTATION}
    arms = [{"name": f"model.fusion={f}, augmentation={label}", "labels": {"model.fusion": f, "augmentation": label},
             "settings": {"model.fusion": f, **settings}}
            for f in ("early", "sct") for label, settings in AUGMENTATION.items()]
    arms = with_comparisons(arms, ablate, baseline)
    seeds = [0, 1, 2]
    scenario = Scenario(url, name, arms, seeds)
    rng = np.random.default_rng(11)
    base = {m: (0.06 if m == "hamming_loss" else 0.80) + 0.01 * rng.standard_normal(3) for m in AGG}
    shifts = {"early": 0.0, "sct": 0.01}
    extra = {"standard": 0.0, "desynchronised": 0.001, "modality_drop": 0.004, "all": 0.008}
    trials = []
    for i, arm in enumerate(arms):
        fusion, label = arm["labels"]["model.fusion"], arm["labels"]["augmentation"]
        for s in seeds:
            if (fusion, label) == ("early", "modality_drop"):
                test = {m: v + 0.01 for m, v in scenario.test["model.fusion=early, augmentation=standard"][s].items()}
            elif (fusion, label) == ("sct", "desynchronised"):
                test = dict(scenario.test["model.fusion=sct, augmentation=standard"][s])
            else:
                test = {m: float(base[m][s] + shifts[fusion] + extra[label] + 0.003 * rng.standard_normal())
                        for m in AGG}
            scenario.test[arm["name"]][s] = test
            trials.append(final_trial(arm=arm["name"], arm_index=i, seed=s, test=test, per_class=[0.5] * 19,
                                      class_counts=list(range(19)), curve=[0.4, test["ap_macro"]], wall_s=60.0))
    write_study(url, name, spec=spec(name, seeds=seeds, ablate=ablate, baseline=baseline), arms=arms, trials=trials)
    return scenario
