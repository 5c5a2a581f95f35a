"""The study's console (`study.console`) on Tune's own `Trial` objects, and the trial names `StudySearch` hands out:
`<variant>-<n>`, numbered per variant across both stages, and going on from the saved count after a restore."""

from __future__ import annotations

import re

from ray.tune.experiment import Trial
from ray.tune.search import Searcher

from study.confirm import STAGE_KEY
from trainables.records import Stage
from study.console import ended_line, epochs_spent, eta_text, progress_line, searched_keys, status_table
from study.optuna_store import TRIAL_NAME_ATTR, SearchJournal
from study.plan import make_plan, to_tune
from study.storage import Location
from study.tuner import TRIAL_NAME_KEY, StudySearch, trial_name

METRIC = "val_top1"


def _trial(name: str, variant: str, drawn: dict, results: list[dict], status: str = Trial.RUNNING,
           stage: str | None = None) -> Trial:
    """A Tune trial of the demo named as the study names it, with these `drawn` values, which has reported `results`."""
    cfg = make_plan("demo", {}).trial_config({"variant": variant, variant: drawn})
    config = to_tune(variant, cfg, **{TRIAL_NAME_KEY: name, **({STAGE_KEY: stage} if stage else {})})
    trial = Trial("trial_driver", config=config, stub=True, trial_name_creator=trial_name)
    for result in results:
        trial.update_last_result(dict(result))
    trial.set_status(status)
    return trial


def test_the_status_table_shows_names_stages_searched_values_epoch_and_the_last_validation_score():
    plan = make_plan("demo", {})
    keys = searched_keys(plan)
    assert keys == ["lr", "lam"]  # the demo's: lr in every variant, λ in TVLARS only
    trials = [_trial("tvlars-2", "tvlars", {"lr": 1.7511347799, "lam": 0.000123456},
                     [{"epoch": 2, METRIC: 31.41592}, {"epoch": 3}]),  # epoch 3 not evaluated (eval_every=2)
              _trial("lars_warmup-4", "lars_warmup", {"lr": 2.0}, [{"epoch": 6, METRIC: 40.0}], Trial.TERMINATED, Stage.CONFIRM)]
    header, rule, *rows = status_table(trials, keys, METRIC).splitlines()
    assert header.split() == ["trial", "variant", "stage", "lr", "lam", "epoch", METRIC, "status"]
    assert rows[0].split() == ["tvlars-2", "tvlars", "search", "1.75", "0.000123", "3", "31.4", "running"]
    assert rows[1].split() == ["lars_warmup-4", "lars_warmup", "confirm", "2", "6", "40", "terminated"]
    assert rows[1][header.index("lam")] == " "  # a value the variant does not search is left blank
    assert ended_line(trials[1], Trial.TERMINATED, METRIC, "max", 6) == \
        "lars_warmup-4 terminated after 6/6 epochs, best val_top1 40"


def test_the_progress_line_counts_an_ended_trial_s_whole_budget_and_says_when_its_eta_is_an_upper_bound():
    lr = {"lr": 1.0}
    trials = [_trial("tvlars-1", "tvlars", lr, [{"epoch": 2}], Trial.TERMINATED),  # stopped by ASHA at 2 of 6
              _trial("tvlars-2", "tvlars", lr, [{"epoch": 3}]), _trial("tvlars-3", "tvlars", lr, [], Trial.PENDING)]
    assert epochs_spent(trials, max_epoch=6) == 6 + 3
    line = progress_line(1, 4, 9, 24, 125.0, eta_text(24 - 9, 0.1, upper_bound=True))
    assert line == ("progress: 1/4 trials done, 9/24 trial-epochs, 2m05s elapsed, "
                    "ETA ≤ 2m30s (an upper bound: ASHA may stop search trials early)")
    assert eta_text(15, 0.1, upper_bound=False) == "ETA 2m30s"
    assert eta_text(15, 0.0, upper_bound=False) == "ETA after the first epochs"


def test_trials_are_named_by_variant_and_number_across_both_stages_and_after_a_restore(tmp_path):
    plan = make_plan("demo", {"confirm": 1, "seeds": 2, "max_seeds": 2}, seed=0)
    journal = SearchJournal("demo-test", Location.of(tmp_path))
    search = StudySearch(plan, seed=0, journal=journal)
    names = {}
    for i in range(5):
        names[f"t{i}"] = search.suggest(f"t{i}")[TRIAL_NAME_KEY]
    search.save(str(tmp_path / "searcher.pkl"))
    restored = StudySearch(plan, seed=0, journal=journal)
    restored.restore(str(tmp_path / "searcher.pkl"))
    for i in range(5, plan.space.total_samples):
        names[f"t{i}"] = restored.suggest(f"t{i}")[TRIAL_NAME_KEY]
    for i, trial_id in enumerate(names):
        restored.on_trial_complete(trial_id, {"epoch": 2, METRIC: float(i)})
    running: list[str] = []
    while True:  # the confirm trials: not finished while one runs (an open comparison may want more seeds)
        trial_id = f"c{len(names)}"
        config = restored.suggest(trial_id)
        if isinstance(config, dict):
            names[trial_id] = config[TRIAL_NAME_KEY]
            running.append(trial_id)
        elif config is None and running:
            for done in running:
                restored.on_trial_complete(done, {"epoch": 2, METRIC: 30.0, "test_top1": 30.0})
            running = []
        else:
            break
    assert config == Searcher.FINISHED
    assert len(set(names.values())) == len(names) == plan.space.total_samples + len(plan.space.variants) * 2
    for variant in plan.space.variants:
        numbers = sorted(int(n.rpartition("-")[2]) for n in names.values() if n.rpartition("-")[0] == variant)
        assert numbers == list(range(1, plan.space.num_samples + 2 + 1)), (variant, names)
    assert all(re.fullmatch(r"[a-z_]+-\d+", n) for n in names.values())
    # the persisted Optuna study: one trial per search trial, named as it, told its value, across the restore
    told = {t.user_attrs[TRIAL_NAME_ATTR]: t.value for t in journal.load().trials}
    assert told == {names[f"t{i}"]: float(i) for i in range(plan.space.total_samples)}
