"""The predictor-guided sampler (issue 12): candidate features, predictor quality, and the sampler itself on
synthetic studies (no model is trained; each test runs in seconds), plus one search end to end."""

import logging
import random

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState

from compress.errors import RecipeError
from compress.policies.quantize import weight_kind
from compress.recipe import load_recipe
from compress.search.features import CandidateFeatures, ModelIO
from compress.search.hypervolume import hypervolume
from compress.search.predictor_sampler import PredictorSampler
from compress.search.predictors import MIN_TRAIN, evaluate_predictors, quality
from compress.search.record import PREDICTED
from compress.search.suggest import quant_backends
from tests.conftest import tiny_recipe

optuna.logging.set_verbosity(optuna.logging.WARNING)

ALL_POLICIES = {"quantize": {"calibration_batches": 2}, "prune": {"enabled": True}, "merge": {"enabled": True},
                "distill": {"enabled": True}}


@pytest.fixture
def every_policy(tmp_path):
    return load_recipe(tiny_recipe(tmp_path, search={"n_trials": 6, "policies": ALL_POLICIES}))


# --------------------------------------------------------------------------------------------------
# Features


def test_features_are_fixed_length_deterministic_and_tell_candidates_apart(every_policy, tiny_space):
    from compress.search.suggest import params_of, suggest_spec

    loaded = every_policy
    features = CandidateFeatures(loaded.space, loaded.recipe, ModelIO(3, 16, 5))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    vectors, specs = [], []
    for _ in range(12):
        trial = study.ask()
        specs.append(suggest_spec(trial, loaded.space, loaded.recipe))
        vectors.append(features(trial.params))
    assert {len(v) for v in vectors} == {len(features.names)}
    assert len(set(features.names)) == len(features.names)
    assert all(np.all(np.isfinite(v)) for v in vectors)
    again = CandidateFeatures(loaded.space, loaded.recipe, ModelIO(3, 16, 5))
    for spec, v in zip(specs, vectors):
        assert np.array_equal(again(params_of(spec, loaded.space, loaded.recipe)), v)  # deterministic, round trip
    distinct = {(s.arch.key(), str(s.policies)) for s in specs}
    assert len({v.tobytes() for v in vectors}) == len(distinct) > 1

    # What changes nothing changes no feature: a layer beyond the stage's depth; what does, does.
    smallest = loaded.space.smallest()
    params = params_of(type(specs[0])(smallest, specs[0].policies), loaded.space, loaded.recipe)
    assert smallest.stages[0].depth == 1
    inactive = {**params, "s0.l1.kernel_size": 5 if params.get("s0.l1.kernel_size") == 3 else 3}
    assert np.array_equal(features(inactive), features(params))
    active = {**params, "s0.l0.kernel_size": 5 if params.get("s0.l0.kernel_size") == 3 else 3}
    assert not np.array_equal(features(active), features(params))


def test_feature_macs_and_params_equal_those_of_the_extracted_subnet(tiny_space, tiny_supernet, every_policy):
    from compress.measure.macs import count_macs
    from compress.supernet import extract_subnet

    costs = CandidateFeatures(tiny_space, every_policy.recipe, ModelIO(3, 16, 5)).costs
    rng = random.Random(1)
    for _ in range(6):
        arch = tiny_space.sample(rng)
        model = extract_subnet(tiny_supernet, arch)
        cost = costs(arch)
        assert cost.total_macs == count_macs(model, torch.zeros(1, 3, 16, 16))
        assert cost.total_params == sum(p.numel() for p in model.parameters())
        assert cost.tokens == (64, 16, 16)  # stem stride 2, then strides 1, 2, 1 on 16x16
        units = {"stem": model.stem, **{f"stages.{i}": st for i, st in enumerate(model.stages)},
                 "classifier": model.classifier}
        for unit, module in units.items():  # the weights a backend may quantize, per kind of layer
            kinds = {}
            for m in module.modules():
                if weight_kind(m):
                    kinds[weight_kind(m)] = kinds.get(weight_kind(m), 0) + m.weight.numel()
            assert {k: n for k, n in cost.weights[unit].items() if n} == kinds, unit


def test_size_estimate_counts_only_what_the_backend_quantizes(every_policy, tmp_path):
    from compress.policies import Policies
    from compress.policies.quantize import QuantPolicy

    on_torch = load_recipe(tiny_recipe(tmp_path, target={"runtime": "torch"}, search={"policies": ALL_POLICIES}))
    # One feature set per runtime: a candidate's backend is one its recipe's runtime offers.
    by_backend = {b: CandidateFeatures(loaded.space, loaded.recipe, ModelIO(3, 16, 5))
                  for loaded in (on_torch, every_policy) for b in (*quant_backends(loaded.recipe), "none")}
    features = by_backend["none"]
    arch, size = every_policy.space.largest(), features.names.index("size_mb_est")
    cost = features.costs(arch)
    assert cost.weights["stem"].get("conv") and not cost.weights["stem"].get("linear")

    def estimate(backend, units):
        f = by_backend[backend]
        return f.of(arch, Policies(quant=QuantPolicy(backend, tuple(units))))[f.names.index("size_mb_est")]

    fp32 = estimate("none", ())
    assert fp32 == pytest.approx(4 * cost.total_params / 1e6)
    # ONNX Runtime's dynamic quantization leaves convolutions fp32: an INT8 stem stores what an fp32 one does.
    assert estimate("ort-dynamic", ["stem"]) == pytest.approx(fp32)
    assert estimate("ort-static", ["stem"]) == pytest.approx(fp32 - 3 * cost.weights["stem"]["conv"] / 1e6)
    linear = cost.weights["classifier"]["linear"]
    assert estimate("ort-dynamic", ["classifier"]) == pytest.approx(fp32 - 3 * linear / 1e6)
    assert estimate("bnb-nf4", ["classifier"]) == pytest.approx(fp32 - 3.5 * linear / 1e6)
    with pytest.raises(ValueError, match="'bnb-nf4' is not one of this recipe's"):
        by_backend["ort-static"].of(arch, Policies(quant=QuantPolicy("bnb-nf4", ("classifier",))))


def test_cost_terms_split_the_macs_and_layers_by_group_and_precision(every_policy):
    from compress.policies import Policies
    from compress.policies.prune import PrunePolicy
    from compress.policies.quantize import QuantPolicy
    from compress.search.features import COST_PREFIX

    features = CandidateFeatures(every_policy.space, every_policy.recipe, ModelIO(3, 16, 5))
    arch = every_policy.space.largest()
    cost = features.costs(arch)
    terms = [features.names[i] for i in features.cost_terms]
    assert terms and all(n.startswith(COST_PREFIX) for n in terms)

    def read(policies):
        v = features.of(arch, policies)
        return {n[len(COST_PREFIX):]: v[i] for n, i in zip(terms, features.cost_terms)}

    def total(t, what):
        return sum(v for k, v in t.items() if k.startswith(what + "."))

    fp32 = read(Policies())
    assert total(fp32, "mmacs") == pytest.approx(cost.total_macs / 1e6)
    assert fp32["mmacs.other.fp32"] == pytest.approx((cost.macs["stem"] + cost.macs["classifier"]) / 1e6)
    family = arch.stages[0].block
    assert fp32[f"layers.{family}.fp32"] >= arch.stages[0].depth
    assert total(fp32, "layers") == 2 + sum(s.depth for s in arch.stages) and fp32["boundaries"] == 0

    # INT8 stem: its MACs move to the backend's column, with a boundary on each side of it.
    stem = read(Policies(quant=QuantPolicy("ort-static", ("stem",))))
    assert stem["mmacs.other.ort-static"] == pytest.approx(cost.macs["stem"] / 1e6)
    assert stem["layers.other.ort-static"] == 1 and stem["boundaries"] == 2
    # ort-dynamic leaves convolutions fp32: an "INT8" stem runs in fp32 and adds no boundary.
    assert read(Policies(quant=QuantPolicy("ort-dynamic", ("stem",)))) == fp32
    every = read(Policies(quant=QuantPolicy("ort-static", tuple(features.units))))
    assert every["boundaries"] == 2 and total(every, "mmacs") == pytest.approx(total(fp32, "mmacs"))
    ends = read(Policies(quant=QuantPolicy("ort-static", ("stem", "classifier"))))
    assert ends["boundaries"] == 4

    # Pruning a stage by r keeps about (1 - r)^2 of its MACs (the estimate the other features use).
    pruned = read(Policies(prune=PrunePolicy(ratios=(0.5,) + (0.0,) * (len(arch.stages) - 1))))
    assert fp32["mmacs." + family + ".fp32"] - pruned["mmacs." + family + ".fp32"] == pytest.approx(
        0.75 * cost.macs["stages.0"] / 1e6)


# --------------------------------------------------------------------------------------------------
# Predictor quality


def test_quality_figures():
    measured = [1.0, 2.0, 4.0, 8.0]
    q = quality([1.05, 2.1, 4.2, 8.4], measured)
    assert q.kendall == pytest.approx(1.0) and q.mape == pytest.approx(0.05) and q.within_10 == 1.0
    q = quality([8.0, 4.0, 2.0, 1.0], measured)
    assert q.kendall == pytest.approx(-1.0) and q.within_10 == 0.0


def test_held_out_quality_tells_a_learnable_target_from_noise():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(40, 5))
    targets = {"latency": np.exp(2 * X[:, 0] + X[:, 1]), "noise": rng.uniform(1, 2, size=40)}
    q = evaluate_predictors(X, targets, holdout=0.25, splits=4)
    assert q["latency"].kendall > 0.7 and q["latency"].mape < 0.15
    assert abs(q["noise"].kendall) < 0.4
    with pytest.raises(ValueError, match="too few"):
        evaluate_predictors(X[:9], targets={"latency": targets["latency"][:9]})


def test_the_additive_predictor_fits_a_sum_of_costs_better_than_the_gp():
    from compress.search.predictors import Predictor, default_kind

    rng = np.random.default_rng(0)
    n, terms = 60, [2, 3, 4, 5]
    X = rng.uniform(0, 1, size=(n, 8))
    X[:, terms] = rng.uniform(0, 4, size=(n, 4)) * rng.integers(0, 2, size=(n, 4))  # a unit in fp32 or INT8
    truth = np.array([0.30, 0.12, 0.05, 0.0])
    latency = (0.2 + X[:, terms] @ truth) * rng.normal(1.0, 0.02, size=n)
    additive = evaluate_predictors(X, {"latency": latency}, splits=8, kind="additive", terms=terms)["latency"]
    gp = evaluate_predictors(X, {"latency": latency}, splits=8, kind="gp")["latency"]
    assert additive.within_10 > 0.9 and additive.within_10 > gp.within_10 and additive.mape < gp.mape
    fitted = Predictor("additive", terms=terms).fit(X, latency).model
    assert np.all(fitted.coef[:-1] >= 0) and fitted.coef[:-1] == pytest.approx(truth, abs=0.02)
    # A constraint's violation (latency minus a limit above every value) fits as well: the intercept is free.
    violation = Predictor("additive", terms=terms).fit(X, latency - 3.0)
    assert violation.predict(X) == pytest.approx(latency - 3.0, abs=0.1)
    with pytest.raises(ValueError, match="cost terms"):
        Predictor("additive").fit(X, latency)

    assert default_kind("latency_ms", True) == default_kind("latency_ms@board", True) == "additive"
    assert default_kind("latency_ms", False) == default_kind("accuracy", True) == default_kind("size_mb", True) == "gp"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names
def test_the_sampler_fits_latency_with_the_additive_model_when_the_features_have_cost_terms():
    class WithCosts(ParamFeaturesForTest):
        cost_terms = [0, 1, 2, 3]

    def objective(trial):
        a, b = synthetic(trial)
        return a, 1.0 + sum(trial.params[f"x{i}"] for i in range(4))

    for features, expected in ((WithCosts, "additive"), (None, "gp")):
        sampler = PredictorSampler(n_warmup=MIN_TRAIN, n_candidates=50, seed=0,
                                   features=(lambda study, f=features: f(study)) if features else None)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        study.set_metric_names(["error", "latency_ms"])
        study.optimize(objective, n_trials=MIN_TRAIN + 1)
        assert predicted(study.trials[-1])["regressors"] == {"error": "gp", "latency_ms": expected}


class ParamFeaturesForTest:
    """Each of the synthetic study's parameters as a number (its x's first, so they are columns 0-3)."""

    def __init__(self, study):
        pass

    def __call__(self, params):
        return np.array([params[f"x{i}"] for i in range(4)] + [["a", "b", "c"].index(params["c"])], dtype=float)


# --------------------------------------------------------------------------------------------------
# The sampler on synthetic studies: four numeric choices and one categorical; the Pareto set, known, is every
# x in [1, 3] with c = "b". A random draw lies 4 * 0.4 + 2 / 3 = 2.27 from it on average (L1, c counting 1).


def synthetic(trial):
    xs = [trial.suggest_categorical(f"x{i}", [0, 1, 2, 3, 4]) for i in range(4)]
    penalty = 0 if trial.suggest_categorical("c", ["a", "b", "c"]) == "b" else 3
    return sum((x - 1) ** 2 for x in xs) + penalty, sum((x - 3) ** 2 for x in xs) + penalty


def distance_to_pareto_set(params) -> float:
    return sum(max(0, 1 - params[f"x{i}"], params[f"x{i}"] - 3) for i in range(4)) + (params["c"] != "b")


def predicted(trial) -> dict:
    return trial.user_attrs.get(PREDICTED, {})


def dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def test_proposals_are_predicted_and_measured_better_than_random_ones():
    from compress.search.predictor_sampler import ParamFeatures
    from compress.search.predictors import fit_predictors

    sampler = PredictorSampler(n_warmup=16, n_candidates=400, explore=0.0, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(synthetic, n_trials=30)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    warmup, steered = trials[:16], trials[16:]
    assert not any(predicted(t) for t in warmup)
    assert all(predicted(t)["how"] == "predicted" for t in steered)
    assert [predicted(t)["fitted_on"] for t in steered] == list(range(16, 30))  # every completed trial

    # Measured: the proposals lie much nearer the Pareto set than random draws (seeds 0-3 measured 1.0, 0.8,
    # 0.3 and 0.1 against 2.27).
    assert np.mean([distance_to_pareto_set(t.params) for t in steered]) < 0.5 * 2.27
    assert any(t.number >= 16 for t in study.best_trials)

    # Predicted: fitted as the sampler was for its first proposal, the predictors rank that proposal above
    # random candidates: none of 300 is predicted to dominate it, and it is predicted to add more hypervolume
    # to the measured front than nearly all of them.
    features = ParamFeatures(warmup[0].distributions)
    fitted = fit_predictors(np.stack([features(t.params) for t in warmup]),
                            {"f1": np.array([t.values[0] for t in warmup]), "f2": np.array([t.values[1] for t in warmup])})
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5), directions=["minimize"] * 2)
    X = []
    for _ in range(300):
        trial = draws.ask()
        synthetic(trial)
        X.append(features(trial.params))
    rows = np.stack(X)
    others = np.stack([fitted["f1"].predict(rows), fitted["f2"].predict(rows)], axis=1)
    first = np.array([fitted[n].predict(features(steered[0].params)[None])[0] for n in ("f1", "f2")])
    assert first == pytest.approx(list(predicted(steered[0])["objectives"].values()))
    assert not any(dominates(o, first) for o in others)
    # the warm-up trials as the predictors see them, scaled as the sampler scales them
    seen = np.stack([fitted[n].predict(np.stack([features(t.params) for t in warmup])) for n in ("f1", "f2")], axis=1)
    reference = tuple(seen.min(axis=0) + 1.1 * np.ptp(seen, axis=0))
    base = hypervolume([tuple(v) for v in seen], reference)
    gain = lambda p: hypervolume([tuple(v) for v in seen] + [tuple(p)], reference) - base  # noqa: E731
    gains = [gain(o) for o in others]
    assert gain(first) > 0 and gain(first) >= np.percentile(gains, 95), (gain(first), sorted(gains)[-10:])


def resume_with_two_workers(storage: str, study_name: str) -> None:
    """A study run by NSGA-II, then continued by two fresh predictor samplers in turn (two workers, or a
    resumed search): each must fit on every stored trial, including the ones the other just measured."""
    first = optuna.create_study(study_name=study_name, storage=storage, directions=["minimize", "minimize"],
                                sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=1))
    first.optimize(synthetic, n_trials=MIN_TRAIN + 1)
    workers = [optuna.load_study(study_name=study_name, storage=storage,
                                 sampler=PredictorSampler(n_warmup=MIN_TRAIN, n_candidates=200, explore=0.0, seed=seed))
               for seed in (11, 12)]
    for _ in range(2):
        for study in workers:
            study.optimize(synthetic, n_trials=1)
    trials = workers[0].get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == MIN_TRAIN + 5
    assert [predicted(t).get("fitted_on") for t in trials[MIN_TRAIN + 1:]] == list(range(MIN_TRAIN + 1, MIN_TRAIN + 5))
    earlier = [tuple(sorted(t.params.items())) for t in trials[:MIN_TRAIN + 1]]
    proposed = [tuple(sorted(t.params.items())) for t in trials[MIN_TRAIN + 1:]]
    assert len(set(proposed)) == 4 and not set(proposed) & set(earlier)  # nothing measured twice


def test_a_study_started_by_another_sampler_is_resumed_and_workers_fit_on_every_trial(tmp_path):
    resume_with_two_workers(f"sqlite:///{tmp_path / 'study.db'}", "s")


@pytest.mark.postgres
def test_workers_on_one_postgresql_study_fit_on_every_trial(postgres):
    from compress.search.study import make_storage

    resume_with_two_workers(make_storage(postgres.url), "predictor-two-workers")


def test_constraints_are_respected(tmp_path):
    def constrained(trial):
        x0, x1 = trial.suggest_int("x0", 0, 9), trial.suggest_int("x1", 0, 9)
        trial.set_constraint("x0 <= 3", x0 - 3)  # the objectives pull the other way
        return -x0 - x1, float(abs(x1 - x0))

    sampler = PredictorSampler(n_warmup=12, n_candidates=300, explore=0.0, seed=3)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(constrained, n_trials=24)
    steered = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if predicted(t)]
    assert len(steered) == 12
    for t in steered:
        assert predicted(t)["how"] == "predicted"
        assert predicted(t)["constraints"]["x0 <= 3"] <= 0  # no candidate predicted infeasible is proposed
    feasible = [t.params["x0"] <= 3 for t in steered]
    assert sum(feasible) >= 10, [t.params for t in steered]  # random draws are feasible 40% of the time


def test_a_predictor_that_cannot_fit_falls_back_with_a_note(caplog):
    calls = {"n": 0}

    def fails_at_first(trial):
        calls["n"] += 1
        values = synthetic(trial)
        if calls["n"] <= 4:
            raise RuntimeError("the candidate could not be built")
        return values

    sampler = PredictorSampler(n_warmup=4, n_candidates=100, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    with caplog.at_level(logging.INFO, logger="compress.search.predictor_sampler"):
        study.optimize(fails_at_first, n_trials=4 + MIN_TRAIN + 2, catch=(RuntimeError,))
    notes = [r.getMessage() for r in caplog.records if "predictor sampler" in r.getMessage()]
    assert len(notes) == 1 and "too few completed trials: 0" in notes[0], notes
    states = [t.state for t in study.trials]
    assert states[:4] == [TrialState.FAIL] * 4 and states[4:] == [TrialState.COMPLETE] * (MIN_TRAIN + 2)
    assert [bool(predicted(t)) for t in study.trials[4:]] == [False] * MIN_TRAIN + [True, True]

    def broken_features(study):
        raise ValueError("no features today")

    caplog.clear()
    sampler = PredictorSampler(n_warmup=2, n_candidates=50, seed=0, features=broken_features)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    with caplog.at_level(logging.INFO, logger="compress.search.predictor_sampler"):
        study.optimize(synthetic, n_trials=MIN_TRAIN + 3)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == MIN_TRAIN + 3
    notes = [r.getMessage() for r in caplog.records if "fitting failed" in r.getMessage()]
    assert len(notes) == 1 and "no features today" in notes[0]


def test_exploration_measures_random_candidates_sometimes():
    sampler = PredictorSampler(n_warmup=8, n_candidates=100, explore=0.5, seed=4)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    study.optimize(synthetic, n_trials=20)
    how = [predicted(t)["how"] for t in study.trials[8:]]
    assert "explore" in how and "predicted" in how


# --------------------------------------------------------------------------------------------------
# Recipes


@pytest.mark.parametrize("sampler, expected", [
    ({"name": "predictor", "explore": 2}, "search.sampler.explore: Input should be less than or equal to 1"),
    ({"name": "predictor", "candidates": 3}, "search.sampler.candidates: Input should be greater than or equal to 10"),
    ({"name": "predictor", "warm_up": 8}, "search.sampler.warm_up: unknown key"),
    ({"name": "nsga2", "warmup": 8}, "warmup: only the predictor sampler takes these, not 'nsga2'"),
])
def test_bad_predictor_settings_name_the_field(tmp_path, sampler, expected):
    path = tiny_recipe(tmp_path, search={"n_trials": 6, "sampler": sampler})
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert expected in str(info.value)


def test_the_recipe_builds_the_predictor_sampler(tmp_path):
    from compress.search.study import make_sampler

    path = tiny_recipe(tmp_path, search={"n_trials": 6, "sampler": {"name": "predictor", "warmup": 9,
                                                                   "candidates": 500, "explore": 0.25}})
    sampler = make_sampler(load_recipe(path))
    assert isinstance(sampler, PredictorSampler)
    assert (sampler.n_warmup, sampler.n_candidates, sampler.explore) == (9, 500, 0.25)


# --------------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_search_with_the_predictor_sampler_records_and_reports_predictions(tiny_run):
    from compress.search.loop import run_search
    from compress.search.outputs import prediction_table, predicted_and_measured

    recipe = tiny_run(search={"n_trials": MIN_TRAIN + 2, "sampler": {"name": "predictor", "warmup": MIN_TRAIN,
                                                                     "candidates": 200},
                              "policies": {"quantize": {"calibration_batches": 2}}})
    loaded = load_recipe(recipe)
    study = run_search(loaded, loaded.run_dir(), log=lambda *_: None)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == MIN_TRAIN + 2
    steered = [t for t in done if predicted(t)]
    assert len(steered) == 2
    for t in steered:
        assert set(predicted(t)["objectives"]) == {"accuracy", "latency_ms", "size_mb"}
    assert study.user_attrs["compress.model_io"] == {"channels": 3, "image_size": 16, "num_classes": 4}
    pairs = predicted_and_measured(study)
    assert set(pairs) == {"accuracy", "latency_ms", "size_mb"} and len(pairs["latency_ms"][0]) == 2
    assert prediction_table(study) is not None
    assert (loaded.run_dir() / "predictions.png").stat().st_size > 0
    assert "predicted_latency_ms" in (loaded.run_dir() / "trials.csv").read_text()


@pytest.mark.parametrize("name", ["random", "predictor"])
def test_a_runs_recipe_copy_loads_back_whatever_the_sampler(tmp_path, name):
    """A run keeps a copy of its recipe written from the model, every default included (the predictor's
    settings too); export and report read it back, so it must validate for every sampler."""
    from compress.rundir import load_run_info, save_run_info

    loaded = load_recipe(tiny_recipe(tmp_path, search={"n_trials": 6, "sampler": {"name": name}}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_run_info(run_dir, loaded, f"sqlite:///{run_dir / 'study.db'}", "tiny")
    again, _, _ = load_run_info(run_dir)
    assert again.recipe.search.sampler == loaded.recipe.search.sampler
