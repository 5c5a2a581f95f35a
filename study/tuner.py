"""The Ray Tune study, one experiment with two stages (`StudySearch`): search trials — OptunaSearch (seeded
TPE over the space's define-by-run sampler) + ASHA, both seeing only validation metrics — and confirm
trials: each variant's best configurations re-run with fresh seeds to the full budget (no ASHA), started
as soon as that variant's search has ended.

A one-worker trial trains inside its own Tune actor (Ray's plain-Tune pattern: the worker loop with a
`TuneSession`, checkpoints through `tune.report`, actors reused between trials), so it starts in
seconds. A multi-worker trial is a small driver (Ray's documented Train V2 + Tune pattern): it builds
the trial's TorchTrainer, named by the trial id under the study's storage, and forwards every epoch's
report to Tune with `TuneReportCallback`; restored, it re-creates the TorchTrainer with the same name
and Train V2 resumes it from its latest checkpoint. Both run the same loop function, with the same
checkpoints and reports, and read the study's dataset from Ray's object store.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import cloudpickle
import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study.confirm import TEST_PREFIX, SearchTrial, SeedRounds, stage_of
from study.console import StudyConsole
from study.optuna_store import ORPHAN_ATTR, TRANSFER_ATTR, TRANSFER_POINTS, TRIAL_NAME_ATTR, SearchJournal
from study.plan import StudyPlan, from_tune, in_actor
from study.record import StudyRecord
from study.signals import detach_hung_up, handlers_found, terminal_fds
from study.storage import Location
from study.trial import FINAL_FILE, trial_driver
from trainables.records import SEARCH_VARIANT_ATTR, TRANSFER_TAG, Stage


TRIAL_NAME_KEY = "trial_name"  # a Tune config's trial name, `<variant>-<n>` (`StudySearch` numbers them)


def trial_name(trial: Trial) -> str:
    """Tune's name of a trial (its console, its MLflow run): the one its config was handed out with."""
    return trial.config.get(TRIAL_NAME_KEY) or f"trial_{trial.trial_id}"


def trial_dirname(trial: Trial) -> str:
    """A trial's folder: its name and, for uniqueness, its id."""
    return f"{trial_name(trial)}_{trial.trial_id}"


class FinishedTrials(tune.Callback):
    """Marks each finished trial in its Train folder, so a study restored from a snapshot taken just
    before the trial ended does not run it again (the relaunched driver reports the final result and exits)."""

    def __init__(self, train_storage: str):
        self.train_storage = train_storage

    def _mark(self, trial, status: str) -> None:
        final = Location.of(self.train_storage) / trial.trial_id / FINAL_FILE
        final.write_text(json.dumps({"status": status, "result": _jsonable(trial.last_result)}))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._mark(trial, "terminated")


def _jsonable(result: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str, bool)) and k != "done"}


def trainable(plan: StudyPlan, record: StudyRecord, max_failures: int, data_ref: Any = None):
    fn = tune.with_parameters(trial_driver, plan=plan, train_storage=str(record.train_dir),
                              max_failures=max_failures, data_ref=data_ref)
    space = plan.space
    if in_actor(plan):  # the actor is the worker: it holds the worker's CPU/GPU reservation
        return tune.with_resources(fn, {"CPU": space.cpus_per_worker, "GPU": space.gpus_per_worker})
    # The driver only waits on its Train run; its workers hold the real CPU/GPU reservations.
    return tune.with_resources(fn, {"CPU": 0.01})



def without_test_metrics(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A trial result as the searcher and ASHA see it: every test-set metric removed."""
    return None if result is None else {k: v for k, v in result.items() if not k.startswith(TEST_PREFIX)}


# A searched trial enqueued before Optuna asks for it: its variant, the values it must take (the transfer's
# predictions; none for a plain draw) and what it is (`TRANSFER_ATTR`, "" for a plain draw).
Enqueued = tuple[str, dict[str, Any], str]


class StudySearch(Searcher):
    """Both stages of a study in one Tune experiment (no idle slots or cold actors between them).

    Search trials first: Optuna's TPE over the space's define-by-run sampler, shown each result with its
    test metrics removed, its study persisted in the study's `SearchJournal`; the batch-size transfer's
    predictions (`first`, `study.transfer`) are the first trials, then the variants take turns. Then, as soon
    as every search trial of a variant has ended, that variant's confirm trials (`study.confirm.confirm_configs`:
    its best configurations by the validation metric, each with fresh seeds) — while other variants may still
    be searching. Saved and restored with the
    experiment, so `--resume` continues whichever stage a trial belongs to; the study's ASHA (`scheduler`)
    is saved with it, as Tune saves no scheduler.
    """

    def __init__(self, plan: StudyPlan, seed: int, journal: SearchJournal, first: list[Enqueued] = (),
                 scheduler: ValidationASHA | None = None):
        space = plan.space
        if space.metric.startswith(TEST_PREFIX):
            raise ValueError(f"metric: a study selects on validation metrics, not {space.metric!r}")
        super().__init__(metric=space.metric, mode=space.mode)
        self.plan = plan
        self.journal = journal
        self.optuna = OptunaSearch(space=plan.define_by_run, metric=space.metric, mode=space.mode,
                                   sampler=optuna.samplers.TPESampler(seed=seed), storage=journal.storage(),
                                   study_name=journal.study_name)
        self.first = list(first)  # enqueued before any other search trial
        self.search_left = space.total_samples
        self.searched: dict[str, SearchTrial] = {}  # trial id → what the search learned of it
        self.ready: list[dict[str, Any]] = []  # confirm trials to hand out
        self.confirmed: set[str] = set()  # variants whose confirm trials were chosen
        self.rounds = SeedRounds(plan)  # the sequential confirm's seeds and readings
        self.numbered: dict[str, int] = {}  # variant → trials handed out, both stages (names `<variant>-<n>`)
        self.scheduler = scheduler  # Tune's, whose rungs this searcher's saved state carries

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.optuna.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.search_left:
            variant, values, what = self._next_search_trial()
            name = self._next_name(variant)
            # the trial Optuna asks for next: its variant and given values, named as its Tune trial
            self._study.enqueue_trial(values, user_attrs={SEARCH_VARIANT_ATTR: variant, TRIAL_NAME_ATTR: name,
                                                          **({TRANSFER_ATTR: what} if what else {})})
            config = self.optuna.suggest(trial_id)
            self.search_left -= 1
            self.searched[trial_id] = SearchTrial(config["variant"], from_tune(config))
            # a transfer's trial carries its point (`TRANSFER_POINTS`) under the key its MLflow run is tagged with
            return {**config, TRIAL_NAME_KEY: name, **({TRANSFER_TAG: what} if what else {})}
        self._choose_confirm_trials()
        if self.ready:
            config = self.ready.pop(0)
            config = {**config, TRIAL_NAME_KEY: self._next_name(config["variant"])}
            self.rounds.started(trial_id, config)
            return config
        done = self.confirmed == set(self.plan.space.variants) and self.rounds.settled()
        return Searcher.FINISHED if done else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.searched:
            self.searched[trial_id].seen(result, self.metric, self.mode)
            # an epoch without evaluation (eval_every) has nothing to tell Optuna
            if self.metric in result and self._optuna_open(trial_id):
                self.optuna.on_trial_result(trial_id, without_test_metrics(result))
        else:
            self.rounds.seen(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.searched:
            self.searched[trial_id].end(result, error, self.metric, self.mode)
            if self._optuna_open(trial_id):
                self.optuna.on_trial_complete(trial_id, without_test_metrics(result), error)
        else:
            self.ready += self.rounds.ended(trial_id, error)
            for line in self.rounds.verdict_lines():
                print(line, flush=True)

    @property
    def _study(self) -> optuna.Study:
        return self.optuna._ot_study  # Ray's OptunaSearch keeps its study here (no accessor)

    def _optuna_open(self, trial_id: str) -> bool:
        """Whether the trial's Optuna trial still takes results: one that finished after the snapshot a resumed
        study restarts from (the journal is written as trials go; Tune's snapshot lags) keeps what it was told."""
        trial = self.optuna._ot_trials.get(trial_id)  # Ray's OptunaSearch: Tune trial id → Optuna trial
        return trial is not None and self._study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING

    def _next_search_trial(self) -> Enqueued:
        """The transfer's next prediction, else a plain draw for the variant with the fewest search trials so
        far (the space's order breaks ties): each variant gets its `num_samples`, predictions included."""
        if self.first:
            return self.first.pop(0)
        taken = [t.variant for t in self.searched.values()]
        return min(self.plan.space.variants, key=taken.count), {}, ""

    def _next_name(self, variant: str) -> str:
        """A trial's name, `<variant>-<n>`: numbered per variant across both stages; the count is saved with
        the searcher, so a resumed study goes on numbering."""
        self.numbered[variant] = self.numbered.get(variant, 0) + 1
        return f"{variant}-{self.numbered[variant]}"

    def _choose_confirm_trials(self) -> None:
        """The confirm trials of every variant whose search trials have all ended (once per variant)."""
        for variant in self.plan.space.variants:
            trials = [t for t in self.searched.values() if t.variant == variant]
            if variant not in self.confirmed and all(t.ended for t in trials):
                self.confirmed.add(variant)
                self.ready += self.rounds.first_round(variant, trials)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(cloudpickle.dumps(self.__dict__))
        self.journal.stage(Path(checkpoint_path).parent)

    def restore(self, checkpoint_path: str) -> None:
        scheduler = self.__dict__.get("scheduler")  # the one Tune runs (restored with the tuner, rungs empty)
        saved = cloudpickle.loads(Path(checkpoint_path).read_bytes())
        self.__dict__.update(saved)
        self.scheduler = scheduler
        if scheduler is not None:
            scheduler.resume(saved.get("scheduler"))
        self.__dict__.setdefault("numbered", {})  # saved before trials were named: theirs were Tune's
        self.__dict__.setdefault("rounds", SeedRounds(self.plan))  # saved before the sequential confirm: one round
        self.__dict__.setdefault("first", [])
        self._close_orphans()

    def _close_orphans(self) -> None:
        """Optuna trials asked after the snapshot this study resumes from (Tune will not run them): FAIL, marked
        `orphaned`, so the persisted study holds each trial that ran once and none that hang as RUNNING."""
        if not hasattr(self, "journal"):  # saved before the search was persisted: an in-memory study
            return
        study, known = self._study, {t._trial_id for t in self.optuna._ot_trials.values()}
        storage = study._storage
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
            if trial._trial_id not in known:
                storage.set_trial_user_attr(trial._trial_id, ORPHAN_ATTR, True)
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


class ValidationASHA(ASHAScheduler):
    """ASHA over the search trials only, never shown a test-set metric; confirm trials and the batch-size
    transfer's prediction run to the end (the prediction's results still count in the rungs).

    Why the prediction: ASHA's first rung comes soon after a warm-up, where high learning rates trail. In the
    transfer bench (commit 943e146, batch 1,024, rung at epoch 2 after a 1-epoch warm-up), the predicted lr 10 read
    12.8% val top-1 at epoch 2 and was stopped in round 2; let run in rounds 1 and 3, it ended at 47.5%, above
    every unseeded search's best (34.3–40.8%). A search seeded by a transfer learns what the fit predicted.
    """

    def resume(self, saved: ValidationASHA | None) -> None:
        """Take the rungs a saved copy had recorded. Tune saves no scheduler state (`TuneController.__getstate__`
        drops it), so without them a resumed study ranks only the results reported after the resume, and judges
        anew the rung a restored trial repeats from its checkpoint, where it had been let go on before."""
        if saved is None:  # saved before the rungs were kept
            return
        # the rungs into the brackets in use, not ASHA's own `restore` (its whole `__dict__`): trials added before
        # keep pointing at the brackets that now hold them
        for bracket, kept in zip(self._brackets, saved._brackets, strict=True):
            bracket._rungs = kept._rungs
        self._num_stopped = saved._num_stopped

    def on_trial_add(self, tune_controller, trial) -> None:
        if stage_of(trial.config) == Stage.SEARCH:
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if stage_of(trial.config) != Stage.SEARCH:
            return self.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, without_test_metrics(result))
        return self.CONTINUE if trial.config.get(TRANSFER_TAG) == TRANSFER_POINTS[0] else decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if stage_of(trial.config) == Stage.SEARCH:
            super().on_trial_complete(tune_controller, trial, without_test_metrics(result))

    def on_trial_remove(self, tune_controller, trial) -> None:
        if stage_of(trial.config) == Stage.SEARCH:
            super().on_trial_remove(tune_controller, trial)


def scheduler(plan: StudyPlan) -> ASHAScheduler:
    space = plan.space
    metric, mode = space.scheduler_metric or (space.metric, space.mode)
    return ValidationASHA(time_attr="epoch", metric=metric, mode=mode, max_t=plan.max_epoch,
                          grace_period=space.grace_period, reduction_factor=space.reduction_factor)


def run_config(plan: StudyPlan, record: StudyRecord, callbacks: list, max_failures: int) -> tune.RunConfig:
    """The study's Tune run config: its folder, callbacks, checkpoints and retries; the study's own console
    (`StudyConsole`) instead of Tune's, whose box of every trial's configuration is in MLflow already."""
    return tune.RunConfig(
        name=record.name, storage_path=str(record.storage), verbose=0,
        callbacks=[*callbacks, FinishedTrials(str(record.train_dir)), StudyConsole(plan)],
        # in-actor trials: Tune keeps their checkpoints and retries a crashed one from its latest;
        # Ray Train trials do both themselves (retrying those here too would square the retries)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=max_failures if in_actor(plan) else 0))


def planned_trials(plan: StudyPlan) -> int:
    """Trials a study runs at most: its search trials, then per variant its confirm trials' first round and,
    when the sequential confirm may add seeds, up to `max_seeds` for the configuration it re-runs."""
    space = plan.space
    extra = max(0, space.max_seeds - space.seeds) if SeedRounds(plan).pairs else 0
    return space.total_samples + len(space.variants) * (space.confirm * space.seeds + extra)


def new_tuner(plan: StudyPlan, record: StudyRecord, callbacks: list, max_failures: int,
              data_ref: Any = None, first: list[Enqueued] = ()) -> tune.Tuner:
    """The study: `num_samples` search trials per variant (Optuna TPE + ASHA on validation metrics; `first`
    enqueued before the others), then the confirm trials (`planned_trials` at most; `StudySearch` ends the
    experiment when done)."""
    asha = scheduler(plan)
    search = StudySearch(plan, record.seed, SearchJournal.of(record), first, asha)
    return tune.Tuner(
        trainable(plan, record, max_failures, data_ref),
        tune_config=tune.TuneConfig(search_alg=search, scheduler=asha,
                                    num_samples=planned_trials(plan),
                                    max_concurrent_trials=plan.concurrency,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_dirname,
                                    reuse_actors=True),  # a trial's actor, process and imports serve the next
        run_config=run_config(plan, record, callbacks, max_failures))


def restored_tuner(plan: StudyPlan, record: StudyRecord, max_failures: int, data_ref: Any = None,
                   errored: bool = False) -> tune.Tuner:
    """Continue an interrupted study: finished trials stay finished, unfinished ones (and errored ones, when
    `errored`) resume from checkpoints.

    The run config (and with it the MLflow callback, parent run and store, and the console) and the trial
    namers come back from the study's own saved state (`Tuner.restore` takes no new callbacks); Tune restores
    the searcher too (Optuna's history, the confirm trials chosen so far, the trials numbered so far, ASHA's
    rungs), its Optuna study from the study's journal.
    """
    SearchJournal.of(record).fetch()
    return tune.Tuner.restore(str(record.study_dir), trainable(plan, record, max_failures, data_ref),
                              resume_unfinished=True, resume_errored=errored)


def fit_until_stopped(tuner: tune.Tuner) -> tuple[tune.ResultGrid, int | None]:
    """`tuner.fit()`, and the signal that stopped it before the study was done (SIGINT, SIGUSR1 or a
    `STOP_SIGNALS` one), or None.

    Tune stops on SIGINT (Ctrl+C) or SIGUSR1, saves its state and returns as if finished, saying so only in a log
    line. For the fit it replaces the main thread's SIGINT handler with its own, which puts back the one it found
    when the signal comes (ray/tune/tune.py: `_setup_signal_catching`, Ray 2.60): the handler found in place after
    the fit tells. `STOP_SIGNALS` take the same stop for the fit; a second one, like a second Ctrl+C, ends the
    process at once. A signal the process was started ignoring (`nohup`'s SIGHUP) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread() or int(
            os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")):  # as Tune decides whether to catch the signal
        return tuner.fit(), None
    before = signal.getsignal(signal.SIGINT)
    found = handlers_found()
    consoles = terminal_fds()
    terminated = []

    def stop_like_ctrl_c(signum: int, frame) -> None:
        """Tune's SIGINT stop while its handler is in place; otherwise what the signal did before the fit."""
        if signum == signal.SIGHUP:
            detach_hung_up(consoles)
        tunes = signal.getsignal(signal.SIGINT)
        if callable(tunes) and tunes is not before:
            terminated.append(signum)
            tunes(signal.SIGINT, frame)
        elif callable(found[signum]):
            found[signum](signum, frame)
        else:
            signal.signal(signum, found[signum])
            signal.raise_signal(signum)

    for signum in found:
        signal.signal(signum, stop_like_ctrl_c)
    try:
        results = tuner.fit()
    finally:
        stopped = signal.getsignal(signal.SIGINT) is before
        signal.signal(signal.SIGINT, before)  # Tune leaves its own handler installed after a fit it ended
        for signum, handler in found.items():
            signal.signal(signum, handler)
    return results, (terminated[0] if terminated else signal.SIGINT) if stopped else None
