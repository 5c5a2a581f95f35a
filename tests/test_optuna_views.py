"""The report's view of the persisted Optuna search, from a real journal logged on a known store's parent run:
its trials per variant, fANOVA importance on a known function (lr dominates λ), Optuna's slice and contour
plots placed in the report, and a store without a journal reporting as before."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import matplotlib
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from known_store import STAGED, TRIALS, build_store
from reports import optuna_views
from reports.build import build_report
from trainables.records import OPTUNA_JOURNAL_ARTIFACT, SEARCH_VARIANT_ATTR

LR = FloatDistribution(0.1, 10.0, log=True)
LAM = FloatDistribution(1e-6, 1e-2, log=True)
CLIP = FloatDistribution(0.5, 20.0)
HEADING = "Hyperparameter importance (Optuna fANOVA, per variant)"
SEARCHED = 12  # completed tvlars_bs512 trials: lr from 0.1 to 10, λ's order shuffled against lr's
TV_POINTS = [(10 ** (-1 + 2 * i / 11), 10 ** (-6 + 4 * ((5 * i) % 12) / 11)) for i in range(SEARCHED)]


def known_value(lr: float, lam: float) -> float:
    """Validation top-1 (%) peaking at lr = 1, 10 points lower a decade away; λ moves it by 0.04 at most."""
    return 70.0 - 10.0 * math.log10(lr) ** 2 + 0.01 * math.log10(lam)


def _add(study: optuna.Study, variant: str, values: dict, distributions: dict, value: float | None = None,
         state: TrialState = TrialState.COMPLETE) -> None:
    study.add_trial(optuna.trial.create_trial(
        params={f"{variant}/{k}": v for k, v in values.items()},
        distributions={f"{variant}/{k}": distributions[k] for k in values},
        value=value, state=state, user_attrs={SEARCH_VARIANT_ATTR: variant}))


def write_journal(path: Path) -> Path:
    """A study's journal as `study.optuna_store` writes one: 12 tvlars trials over lr × λ (`TV_POINTS`), 3 of
    lars_warmup over lr, 5 of lambc over lr × τ, and a failed, a pruned, a running trial."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(storage=storage, study_name="known-study", direction="maximize")
    for lr, lam in TV_POINTS:
        _add(study, "tvlars_bs512", {"lr": lr, "lam": lam}, {"lr": LR, "lam": LAM}, known_value(lr, lam))
    for lr, value in ((0.5, 60.0), (1.0, 70.0), (2.0, 65.0)):
        _add(study, "lars_warmup_bs512", {"lr": lr}, {"lr": LR}, value)
    for i in range(5):
        _add(study, "lambc_bs512", {"lr": 0.2 * (i + 1), "clip_upper": 1.0 + 4 * i}, {"lr": LR, "clip_upper": CLIP},
             50.0 + i)
    _add(study, "tvlars_bs512", {"lr": 9.0, "lam": 1e-3}, {"lr": LR, "lam": LAM}, state=TrialState.FAIL)
    _add(study, "tvlars_bs512", {"lr": 0.2, "lam": 1e-5}, {"lr": LR, "lam": LAM}, state=TrialState.PRUNED)
    running = study.ask({"lars_warmup_bs512/lr": LR})
    study._storage.set_trial_user_attr(running._trial_id, SEARCH_VARIANT_ATTR, "lars_warmup_bs512")
    return path


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> tuple[str, str, str, Path]:
    """A confirmed store whose study logged its journal, beside an older study without one; (uri, the
    journal's parent, the older parent, root), the report in root/out."""
    root = tmp_path_factory.mktemp("searched")
    uri, pid = build_store(root, "searched", STAGED)
    _, older = build_store(root, "older", TRIALS)
    journal = write_journal(root / "optuna.journal")
    MlflowClient(uri).log_artifact(pid, str(journal), "optuna")
    build_report(uri, "searched", root / "out", metric="final", formats=("md", "csv", "latex", "html"), log=False)
    return uri, pid, older, root


def test_the_search_is_read_from_the_parents_that_logged_a_journal(searched):
    uri, pid, older, _ = searched
    client = MlflowClient(uri)
    assert {a.path for a in client.list_artifacts(pid, "optuna")} == {OPTUNA_JOURNAL_ARTIFACT}
    trials = optuna_views.load_search(client, [client.get_run(older), client.get_run(pid)])
    states = pd.Series([t.state.name for t in trials]).value_counts().to_dict()
    assert states == {"COMPLETE": SEARCHED + 3 + 5, "FAIL": 1, "PRUNED": 1, "RUNNING": 1}
    assert optuna_views.load_search(client, [client.get_run(older)]) == []


class _Lines(logging.Handler):
    """The messages a logger emits."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_each_variant_is_a_study_of_its_completed_trials_by_key(searched):
    uri, pid, _, _ = searched
    client = MlflowClient(uri)
    said = _Lines()
    optuna.logging.get_logger("optuna").addHandler(said)
    try:
        studies = optuna_views.variant_studies(optuna_views.load_search(client, [client.get_run(pid)]))
    finally:
        optuna.logging.get_logger("optuna").removeHandler(said)
    # quietly: "A new study created in memory", once per variant in every study's log, read as an unpersisted search
    assert not [line for line in said.lines if "A new study created" in line], said.lines
    assert list(studies) == ["tvlars_bs512", "lars_warmup_bs512", "lambc_bs512"]
    assert [len(s.trials) for s in studies.values()] == [SEARCHED, 3, 5]
    tv = studies["tvlars_bs512"]
    assert {t.state for t in tv.trials} == {TrialState.COMPLETE}
    assert all(set(t.params) == {"lr", "lam"} and t.distributions["lr"] == LR for t in tv.trials)
    assert sorted((t.params["lr"], t.params["lam"], t.value) for t in tv.trials) == sorted(
        (lr, lam, known_value(lr, lam)) for lr, lam in TV_POINTS)  # exactly: the journal keeps every float
    assert set(studies["lambc_bs512"].best_params) == {"lr", "clip_upper"}


def test_importance_ranks_lr_above_lambda(searched):
    uri, pid, _, _ = searched
    client = MlflowClient(uri)
    table = optuna_views.importance(optuna_views.variant_studies(optuna_views.load_search(client, [client.get_run(pid)])))
    assert list(table.index) == ["tvlars_bs512", "lambc_bs512"]  # lars_warmup: 3 trials of one param
    assert table.loc["tvlars_bs512", "lr"] > 0.8 > 0.2 > table.loc["tvlars_bs512", "lam"]
    assert table.loc["tvlars_bs512", "trials"] == SEARCHED
    assert math.isnan(table.loc["tvlars_bs512", "clip_upper"])


def _study(values: list[float], params: int = 2) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for i, value in enumerate(values):
        study.add_trial(optuna.trial.create_trial(params={f"p{k}": float(i + k) for k in range(params)},
                                                  distributions={f"p{k}": FloatDistribution(0, 100) for k in range(params)},
                                                  value=value))
    return study


def test_importance_skips_what_it_cannot_compute_and_says_why():
    studies = {"few": _study([1.0, 2.0, 3.0]), "flat": _study([5.0] * 6), "one": _study([1.0, 3.0, 2.0, 4.0], 1),
               "ok": _study([1.0, 3.0, 2.0, 4.0, 0.0])}
    table = optuna_views.importance(studies)
    assert list(table.index) == ["ok"] and table.loc["ok", ["p0", "p1"]].sum() == pytest.approx(1.0, abs=0.011)
    caption = optuna_views.caption(studies, table)
    assert "few (3 completed trials, fewer than 4)" in caption
    assert "flat (the same validation top-1 in every trial)" in caption and "one (searches one param only, p0)" in caption
    empty = optuna_views.importance({"few": studies["few"]})
    assert empty.empty and empty.index.name == "variant"


def test_a_param_whose_range_varies_between_trials_still_counts():
    """A bound set by an earlier draw (`at_most`) gives each trial its own lr range: fANOVA keeps lr all the same."""
    trials = [optuna.trial.create_trial(
        params={"tvlars_bs512/lr": lr, "tvlars_bs512/lam": lam},
        distributions={"tvlars_bs512/lr": FloatDistribution(0.1, max(lr, 3.0 + i), log=True), "tvlars_bs512/lam": LAM},
        value=known_value(lr, lam), user_attrs={SEARCH_VARIANT_ATTR: "tvlars_bs512"}) for i, (lr, lam) in enumerate(TV_POINTS)]
    study = optuna_views.variant_studies(trials)["tvlars_bs512"]
    assert {t.distributions["lr"] for t in study.trials} == {FloatDistribution(0.1, 14.0, log=True)}
    assert optuna_views.importance({"tvlars_bs512": study}).loc["tvlars_bs512", "lr"] > 0.8


def _block(markdown: str, heading: str) -> str:
    return markdown.split(f"\n## {heading}")[1].split("\n## ")[0]


def test_the_report_shows_the_importance_and_optunas_plots(searched):
    _, _, _, root = searched
    out = root / "out"
    markdown = (out / "table.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, re.M)
    assert headings.index(HEADING) == next(i for i, h in enumerate(headings) if h.startswith("Search stage")) + 1
    block = _block(markdown, HEADING)
    row = next(line for line in block.splitlines() if line.startswith("| tvlars_bs512"))
    assert float(row.split("|")[2]) > 0.8  # the lr column comes first: the most important on average
    assert "lars_warmup_bs512 (3 completed trials, fewer than 4)" in block
    made = {p.name for p in (out / "figures").glob("*.png")}
    optuna_made = {"slice_tvlars_bs512.png", "slice_lars_warmup_bs512.png", "slice_lambc_bs512.png",
                   "contour_tvlars_bs512.png", "contour_lambc_bs512.png"}
    assert optuna_made <= made and "accuracy_vs_lambda.png" not in made
    assert not any(p.startswith("contour_lars") for p in made)  # one param searched: no contour
    search = _block(markdown, "Search stage")
    for name in optuna_made:
        assert f"](figures/{name})" in search  # right after the search section, with the other search figures
    assert "lr × λ" in search and "lr × τ" in search
    csv = pd.read_csv(out / "importance.csv", index_col="variant")
    assert csv.loc["tvlars_bs512", "lr"] > 0.8 and csv.loc["tvlars_bs512", "trials"] == SEARCHED
    assert HEADING in (out / "table.html").read_text() and "fANOVA" in (out / "table.tex").read_text()
    assert matplotlib.rcParams["axes.facecolor"] == "white"  # Optuna's ggplot style did not stay behind


def test_a_study_without_a_journal_reports_as_before(tmp_path):
    uri, _ = build_store(tmp_path, "plain", STAGED)
    build_report(uri, "plain", tmp_path / "out", formats=("md", "csv"), log=False)
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert "Hyperparameter importance" not in markdown and "Optuna" not in markdown
    assert not (tmp_path / "out" / "importance.csv").exists()
    made = {p.name for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert not any(n.startswith(("slice_", "contour_", "accuracy_vs_lambda")) for n in made)
