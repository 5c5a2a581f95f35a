"""ASHA's rungs across a resume: saved with the study's searcher (Tune saves no scheduler state), so a resumed
study ranks results against every one recorded before its snapshot and lets a restored trial go on at the rung it
had passed."""

from __future__ import annotations

from ray.tune.experiment import Trial

from study.optuna_store import SearchJournal
from study.plan import make_plan
from study.storage import Location
from study.tuner import StudySearch, ValidationASHA, scheduler

METRIC = "val_top1"


def _study(tmp_path) -> tuple[StudySearch, ValidationASHA, dict[str, Trial]]:
    """A demo study's searcher and ASHA (rungs at epochs 1 and 2), and its three search trials, added to ASHA."""
    plan = make_plan("demo", {"grace_period": 1, "reduction_factor": 2, "epochs": 3, "eval_every": 1}, seed=0)
    asha = scheduler(plan)
    search = StudySearch(plan, seed=0, journal=SearchJournal("demo-test", Location.of(tmp_path)), scheduler=asha)
    trials = {name: Trial("trial_driver", config=search.suggest(name), trial_id=name, stub=True)
              for name in ("a", "b", "c")}
    for trial in trials.values():
        asha.on_trial_add(None, trial)
    return search, asha, trials


def _decide(asha: ValidationASHA, trial: Trial, epoch: int, val: float) -> str:
    return asha.on_trial_result(None, trial, {"epoch": epoch, METRIC: val})


def test_a_restored_search_gives_tunes_scheduler_the_rungs_recorded_before_the_snapshot(tmp_path):
    search, asha, trials = _study(tmp_path)
    assert _decide(asha, trials["a"], 1, 30.0) == asha.CONTINUE
    assert _decide(asha, trials["b"], 1, 40.0) == asha.CONTINUE
    assert _decide(asha, trials["a"], 2, 35.0) == asha.CONTINUE  # the first at epoch 2's rung
    assert _decide(asha, trials["c"], 1, 10.0) == asha.STOP
    search.save(str(tmp_path / "searcher.pkl"))

    restored, fresh, again = _study(tmp_path / "resumed")  # the study as `Tuner.restore` rebuilds it: rungs empty
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.scheduler is fresh  # the scheduler Tune runs takes the rungs, not a copy of its own
    # `a`, restored from its epoch-1 checkpoint, repeats epoch 2 lower than before: let go on, as before the kill
    assert _decide(fresh, again["a"], 2, 5.0) == fresh.CONTINUE
    # `b` at epoch 2 is ranked against `a`'s 35.0 recorded before the snapshot
    assert _decide(fresh, again["b"], 2, 20.0) == fresh.STOP
    assert fresh._brackets[0]._rungs[0][1] == {"a": 35.0, "b": 20.0}

    _, forgetful, alone = _study(tmp_path / "forgetful")  # what Tune alone resumes with: each of these goes on
    assert _decide(forgetful, alone["a"], 2, 5.0) == forgetful.CONTINUE
    assert _decide(forgetful, alone["b"], 2, 20.0) == forgetful.CONTINUE


def test_a_searcher_saved_before_the_rungs_were_kept_restores_with_empty_rungs(tmp_path):
    search, asha, trials = _study(tmp_path)
    assert _decide(asha, trials["a"], 1, 30.0) == asha.CONTINUE
    search.scheduler = None  # as a searcher of an earlier version saved it
    search.save(str(tmp_path / "searcher.pkl"))
    restored, fresh, again = _study(tmp_path / "resumed")
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.scheduler is fresh and all(not recorded for _, recorded in fresh._brackets[0]._rungs)
    assert _decide(fresh, again["c"], 1, 10.0) == fresh.CONTINUE
