"""The studies' persisted Optuna search in the report: its trials per variant, how much of the validation top-1's
variance each searched param explains (Optuna's fANOVA) and Optuna's slice and contour plots of what it saw.

Read from the journal each study logs on its parent run (`trainables.records.OPTUNA_JOURNAL_ARTIFACT`); a study
without one (older studies) adds nothing to the report."""

from __future__ import annotations

import contextlib
import posixpath
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Run  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from reports import artifacts  # noqa: E402
from reports.figures import SEARCH, Figure  # noqa: E402
from trainables.records import OPTUNA_JOURNAL_ARTIFACT, SEARCH_VARIANT_ATTR  # noqa: E402

MIN_TRIALS = 4  # completed trials a variant needs for its importance and its contour plot
CONTOURED = {"lam": "λ", "clip_upper": "τ"}  # plotted against lr: TVLARS' decay, LAMBC's clip bound
TARGET = "validation top-1 (%)"
Draw = tuple[dict[str, object], dict[str, BaseDistribution], float]  # a completed trial: params, ranges, value
HEADING = "Hyperparameter importance (Optuna fANOVA, per variant)"
CAPTION = ("Share of the variance of validation top-1 across each variant's completed search trials explained by "
           "each searched param (Optuna's fANOVA, seed 0; a row sums to 1); trials = the completed trials it used.")


def load_search(client: MlflowClient, parents: list[Run]) -> list[FrozenTrial]:
    """Every trial of the Optuna journals the studies logged on their parent runs (none for a study without one)."""
    trials: list[FrozenTrial] = []
    folder = posixpath.dirname(OPTUNA_JOURNAL_ARTIFACT)
    with tempfile.TemporaryDirectory() as tmp:
        for parent in parents:
            run_id = parent.info.run_id
            if OPTUNA_JOURNAL_ARTIFACT in artifacts.listed(client, run_id, folder):
                into = Path(tmp) / run_id
                into.mkdir()
                trials += journal_trials(artifacts.download(client, run_id, OPTUNA_JOURNAL_ARTIFACT, str(into)))
    return trials


def journal_trials(path: str) -> list[FrozenTrial]:
    """All trials of all studies in an Optuna journal file."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return [trial for name in optuna.study.get_all_study_names(storage)
            for trial in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)]


def _variant(trial: FrozenTrial) -> str | None:
    """The trial's variant: its user attr, else the prefix of its params' names."""
    prefixes = {name.split("/", 1)[0] for name in trial.params if "/" in name}
    return trial.user_attrs.get(SEARCH_VARIANT_ATTR) or (prefixes.pop() if len(prefixes) == 1 else None)


def _unprefixed(trial: FrozenTrial, variant: str) -> Draw:
    """A trial's `<variant>/` params and their distributions named by their keys alone (other params dropped)."""
    prefix = f"{variant}/"
    names = {name: name.removeprefix(prefix) for name in trial.params if name.startswith(prefix)}
    return ({new: trial.params[old] for old, new in names.items()},
            {new: trial.distributions[old] for old, new in names.items()}, trial.value)


def _widest(distributions: list[BaseDistribution]) -> BaseDistribution | None:
    """One range covering all of a param's numeric distributions (a bound set by an earlier draw, `at_most`, or
    studies' different ranges), so that fANOVA keeps the param; None where they differ otherwise."""
    first = distributions[0]
    if not isinstance(first, (FloatDistribution, IntDistribution)) or any(
            type(d) is not type(first) or d.log != first.log or d.step != first.step for d in distributions):
        return None if any(d != first for d in distributions) else first
    return type(first)(min(d.low for d in distributions), max(d.high for d in distributions), log=first.log,
                       step=first.step)


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's INFO lines off meanwhile. A report's in-memory studies are views of a persisted search: their "A new
    study created in memory with name: …", one per variant at the end of every study's log, read as if the search
    itself had no storage."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _study(variant: str, draws: list[Draw]) -> optuna.Study:
    """An in-memory study of a variant's completed draws, each param over its widest range."""
    names = dict.fromkeys(name for _, distributions, _ in draws for name in distributions)
    widest = {name: _widest([d[name] for _, d, _ in draws if name in d]) for name in names}
    with _optuna_quiet():
        study = optuna.create_study(study_name=variant, direction="maximize")
    study.add_trials([optuna.trial.create_trial(
        params=params, distributions={k: widest[k] or distributions[k] for k in params}, value=value)
        for params, distributions, value in draws])
    return study


def variant_studies(trials: Sequence[FrozenTrial]) -> dict[str, optuna.Study]:
    """Per variant (in the order first seen), an in-memory study of its completed trials, params by key."""
    by_variant: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        variant = _variant(trial)
        if variant is not None:
            by_variant.setdefault(variant, []).append(trial)
    return {variant: _study(variant, [_unprefixed(t, variant) for t in mine if t.state == TrialState.COMPLETE])
            for variant, mine in by_variant.items()}


def _searched(study: optuna.Study) -> list[str]:
    """The params the study's completed trials searched, in the order first seen."""
    return list(dict.fromkeys(name for trial in study.trials for name in trial.params))


def why_not(study: optuna.Study) -> str | None:
    """Why a variant's importance cannot be computed, or None when it can."""
    searched, n = _searched(study), len(study.trials)
    if n < MIN_TRIALS:
        return f"{n} completed trial{'s' * (n != 1)}, fewer than {MIN_TRIALS}"
    if len(searched) < 2:
        return f"searches one param only, {searched[0]}" if searched else "searches no param"
    if len({trial.value for trial in study.trials}) == 1:
        return "the same validation top-1 in every trial"
    return None


def _shares(study: optuna.Study) -> dict[str, float] | None:
    """Each searched param's fANOVA importance in the study, or None where Optuna cannot compute it."""
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        shares = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except RuntimeError:  # fANOVA's "zero total variance in all trees"
        return None
    return {name: round(float(share), 2) for name, share in shares.items()}


def importance(studies: dict[str, optuna.Study]) -> pd.DataFrame:
    """One row per variant whose importance can be computed (`why_not`): each param's share, and the trials used."""
    rows = {}
    for variant, study in studies.items():
        shares = None if why_not(study) else _shares(study)
        if shares is not None:
            rows[variant] = {**shares, "trials": len(study.trials)}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    params = sorted((c for c in frame if c != "trials"), key=lambda c: -frame[c].mean())
    frame = frame[[*params, "trials"]] if rows else frame
    frame.index.name = "variant"
    return frame


def caption(studies: dict[str, optuna.Study], table: pd.DataFrame) -> str:
    """The importance table's caption: what it is, and each variant left out and why."""
    left_out = [f"{v} ({why_not(s) or 'Optuna could not compute it'})" for v, s in studies.items() if v not in table.index]
    return CAPTION + (f" Not computed: {'; '.join(left_out)}." if left_out else "")


def _figure_of(axes) -> plt.Figure:
    """The figure of an Axes or an array of them (as Optuna's matplotlib views return)."""
    return axes.flat[0].figure if hasattr(axes, "flat") else axes.figure


def _save(axes, title: str, path: Path) -> Path:
    """An Optuna view, titled, as a PNG at `path`."""
    fig = _figure_of(axes)
    if hasattr(axes, "flat"):
        fig.suptitle(title)
    else:
        axes.set_title(title)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def slice_plot(variant: str, study: optuna.Study, out: Path) -> Figure:
    """Optuna's slice plot: validation top-1 against each param the variant searched, one point per completed trial."""
    axes = optuna.visualization.matplotlib.plot_slice(study, target_name=TARGET)
    path = _save(axes, f"{variant}: validation top-1 the search saw", out / f"slice_{variant}.png")
    return Figure(path, f"Optuna slice plot, {variant}: the validation top-1 the search saw against each searched "
                        f"param ({', '.join(_searched(study))}), one point per completed trial (colour: trial number).",
                  SEARCH)


def contour_plot(variant: str, study: optuna.Study, other: str, out: Path) -> Figure:
    """Optuna's contour plot of validation top-1 over lr × `other`."""
    axes = optuna.visualization.matplotlib.plot_contour(study, params=["lr", other], target_name=TARGET)
    name = CONTOURED[other]
    path = _save(axes, f"{variant}: validation top-1 over lr × {name}", out / f"contour_{variant}.png")
    return Figure(path, f"Optuna contour plot, {variant}: the validation top-1 the search saw over lr × {name} "
                        f"({other}; interpolated between its {len(study.trials)} completed trials, the dots).", SEARCH)


def search_figures(studies: dict[str, optuna.Study], out: Path) -> list[Figure]:
    """Per variant with completed trials, its slice plot; and its contour of lr × λ or τ with `MIN_TRIALS` of them."""
    drawn = []
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), plt.rc_context():  # Optuna sets the ggplot style globally: restored after
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for variant, study in studies.items():
            if not _searched(study):  # no completed trial, or nothing searched
                continue
            drawn.append(slice_plot(variant, study, out))
            searched = _searched(study)
            others = [p for p in CONTOURED if p in searched]
            if "lr" in searched and others and len(study.trials) >= MIN_TRIALS:
                drawn.append(contour_plot(variant, study, others[0], out))
    return drawn


@dataclass
class SearchViews:
    """What the report shows of the Optuna search: the importance table, its caption, the figures."""

    heading: str
    importance: pd.DataFrame
    caption: str
    figures: list[Figure]


def views(trials: Sequence[FrozenTrial], out: Path) -> SearchViews | None:
    """The importance table and the figures (into `out`) of the search's trials; None when there are none."""
    if not trials:
        return None
    studies = variant_studies(trials)
    table = importance(studies)
    return SearchViews(HEADING, table, caption(studies, table), search_figures(studies, out))
