"""Build a report: tables in the chosen formats, parquet exports and figures, logged to the study's
parent MLflow run under `report/`."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from optuna.trial import FrozenTrial

from reports import artifacts, figures, optuna_views, sequential, tables, transfer_view
from reports.collect import StudyData, collect, telemetry
from trainables.records import Stage, TrialStatus

FORMATS = ("md", "csv", "latex", "html")
METRICS = ("best", "final")
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
CONFIRMED = ("confirmed: for each optimizer and batch size, the best configuration of the search (by validation "
             "top-1) re-run to the full budget with fresh seeds")
SEARCH_ONLY = ("search stage only — no confirm stage ran: one seed per configuration, chosen and stopped early on "
               "validation top-1; not a confirmed result")
SEARCH_LEGEND = ("One row per search trial, one seed each: the values the search drew for its variant "
                 "('searched', 3 significant figures), its validation top-1 (%) at its {metric} epoch and the "
                 "epochs it ran (ASHA stopped some early); the confirm stage re-ran the best of each variant — "
                 "these numbers chose it and are not a result.")
GAP_LEGEND = ("Cells: first − second, mean difference ± half-width of its interval: the verdict's where one was "
              "read (see Verdicts), else the 95% Welch interval over the completed runs; '(n=a vs b)': no "
              f"interval, a side has fewer than 2 completed runs; '{tables.EMPTY}': a side has none. Comparisons "
              "without a value anywhere are left out.")
LEGEND = ("Cells: test top-1 (%) mean ± 95% t-interval over seeds (n = completed runs); **bold** = best in its "
          f"column; '{TrialStatus.DIVERGED}' runs are counted, never dropped; '@eK (ASHA)' = only early-stopped trials, "
          "accuracy at epoch K; '[best of k; d diverged]' = best of k configurations (e.g. λ values) in that cell, d runs of the others diverged; "
          "'(… paper)' rows = the published single-run number for the same setting.")


@dataclass
class Report:
    markdown: str
    files: list[Path] = field(default_factory=list)
    logged_to: str | None = None  # parent run id holding the artifacts


def _latex_text(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("−", "-"), ("—", "--")):
        text = text.replace(a, b)
    return text


def _bold_latex(text: str) -> str:
    """Marks bold with control characters that survive `_latex_text`; `_latex` turns them into \\textbf."""
    return "\x01" + text + "\x02"


def _latex_cell(value: object) -> object:
    if not isinstance(value, str):
        return value
    return _latex_text(value).replace("\x01", r"\textbf{").replace("\x02", "}")


@dataclass
class Section:
    heading: str
    table: pd.DataFrame  # shown with its index when it has a name
    caption: str = ""
    key: str = ""  # which figures follow it (figures.HEADLINE, GAP, SEARCH)
    figures: list[figures.Figure] = field(default_factory=list)


def section(heading: str, table: pd.DataFrame, caption: str = "", key: str = "",
            keep: tuple[str, ...] = ()) -> Section:
    """A section whose table has no all-empty or constant columns (but `keep`); its caption names the constants once."""
    table, constants = tables.compact(table, keep)
    return Section(heading, table, (f"All rows: {constants}. " * bool(constants) + caption).strip(), key)


def _shared(settings: str) -> str:
    return f"All columns: {settings}. " if settings else ""


@dataclass
class Tables:
    """What the sections show: the headline cells (confirmed runs where a confirm stage ran), the
    search stage's trials when they are not the headline, the warm-up gap and the budget."""

    cells: pd.DataFrame
    confirmed: bool
    search: pd.DataFrame | None  # one row per search trial (`tables.search_trials`)
    gaps: pd.DataFrame  # one row per comparison and setting (`tables.warmup_gap`)
    spent: pd.DataFrame
    errored: pd.DataFrame  # one row per errored trial: which, and its error line
    verdicts: pd.DataFrame  # one row per comparison and setting (`reports.sequential.verdicts`)
    methods: list[str]  # how the verdicts were read, per design
    optuna: optuna_views.SearchViews | None = None  # the persisted Optuna search's importance and plots, if logged

    @classmethod
    def of(cls, trials: pd.DataFrame, metric: str, parents: list) -> "Tables":
        confirmed = bool((trials["stage"] == Stage.CONFIRM).any())
        headline = trials[trials["stage"] == Stage.CONFIRM] if confirmed else trials
        cells = tables.cells(headline, metric)
        search = tables.search_trials(trials[trials["stage"] == Stage.SEARCH], f"val_{metric}") if confirmed else None
        errored = trials.loc[trials["status"] == TrialStatus.ERRORED, ["run_name", "variant", "stage", "error"]]
        designs = study_designs(trials, parents)
        verdicts = sequential.verdicts(trials, designs, metric, tables.confirmed_configuration)
        return cls(cells, confirmed, search, tables.with_verdict_intervals(tables.warmup_gap(cells), verdicts),
                   tables.budget(trials), errored.sort_values("run_name").reset_index(drop=True), verdicts,
                   list(dict.fromkeys(d.describe() for d in designs.values())))


def study_designs(trials: pd.DataFrame, parents: list) -> dict[str, sequential.Design]:
    """Each study's sequential design, from its parent run's budget params."""
    confirmed = trials[trials["stage"] == Stage.CONFIRM]
    designs = {}
    for parent in parents:
        mine = confirmed[confirmed["study_run_id"] == parent.info.run_id]
        seen = int(mine.groupby("variant").size().min()) if len(mine) else 1
        designs[parent.info.run_id] = sequential.study_design_of(parent.data.params, seen)
    return designs


# Confirmed cells each hold the lr their search chose, so their headline has a column per setting (the lr
# in the cell); search-only cells keep the TVLARS paper's column per lr.
BY_SETTING, BY_LR = tables.SETTING, tables.COLUMN
GAP_HEADING = "Warm-up gap and other gaps (percentage points; best lr each; completed runs)"
VERDICT_HEADING = "Verdicts (first − second, test top-1 points)"
VERDICT_LEGEND = ("A comparison is decided when its interval excludes 0 (one row better) or lies inside ±the "
                  "practical gap (no practical difference); 'open' when the seeds ran out first, with the gaps still "
                  "possible. seeds = completed seeds per side at the look that decided; look = which of the design's looks.")
BY_LR_HEADING, BEST_LR_HEADING = "By learning rate (TVLARS paper Table 1 layout)", "Best learning rate per setting"


def headline(parts: Tables, metric: str, bold) -> list[Section]:
    """The answer: the headline cells and their gaps."""
    kind = CONFIRMED if parts.confirmed else SEARCH_ONLY
    if parts.confirmed:
        table, shared = tables.wide(parts.cells, bold, columns=BY_SETTING)
        heading = f"Test top-1, {metric} epoch, per setting (each optimizer at the lr its search chose)"
    else:
        table, shared = tables.wide(parts.cells, bold, columns=BY_LR)
        heading = f"Test top-1, {metric} epoch (TVLARS paper Table 1 layout)"
    gaps, gaps_shared = tables.gap_table(parts.gaps)
    return [*verdict_section(parts), section(heading, table, f"{kind[0].upper()}{kind[1:]}. " + _shared(shared) + LEGEND, figures.HEADLINE),
            section(GAP_HEADING, gaps, _shared(gaps_shared) + GAP_LEGEND, figures.GAP)]


def verdict_section(parts: Tables) -> list[Section]:
    """The verdicts, first: what the study can and cannot conclude."""
    if parts.verdicts.empty:
        return []
    method = " ".join(f"Method: {m}." for m in parts.methods)
    return [section(VERDICT_HEADING, tables.verdict_table(parts.verdicts), f"{method} {VERDICT_LEGEND}",
                    keep=tables.VERDICT_SHOWN)]


def other_layout(parts: Tables, bold) -> list[Section]:
    """The headline's cells in the other layout; a column per lr only where some row has several lrs in one
    setting (otherwise it is a diagonal of the headline's cells)."""
    if parts.confirmed and not tables.several_lrs(parts.cells):
        return []
    table, shared = tables.wide(parts.cells, bold, columns=BY_LR if parts.confirmed else BY_SETTING)
    return [section(BY_LR_HEADING if parts.confirmed else BEST_LR_HEADING, table, _shared(shared))]


def search_section(parts: Tables, metric: str) -> list[Section]:
    """The search's trials, the best `tables.SEARCH_TOP` of each variant, where a confirm stage ran; then the
    importance of its params where the studies logged their Optuna search."""
    if parts.search is None:
        return importance_section(parts)
    shown = tables.search_top(parts.search)
    left_out = (f"The best {tables.SEARCH_TOP} of each variant at each batch size: {len(shown)} of the "
                f"{len(parts.search)} search trials (all of them: search_table.csv, with `--format csv`). ")
    return [section(f"Search stage: validation top-1, {metric} epoch, per trial", shown.drop(columns="run_name"),
                    left_out * (len(shown) < len(parts.search)) + SEARCH_LEGEND.format(metric=metric), figures.SEARCH),
            *importance_section(parts)]


def importance_section(parts: Tables) -> list[Section]:
    """Optuna's fANOVA importance of each searched param per variant (`reports.optuna_views`)."""
    if parts.optuna is None:
        return []
    table = parts.optuna.importance
    return [section(parts.optuna.heading, table, parts.optuna.caption, figures.SEARCH, keep=tuple(table.columns))]


TRANSFER_HEADING = "Batch-size transfer: predicted vs found optimum"
TRANSFER_LEGEND = ("Before its search, the study fitted each value as a power law of batch size, ln value = "
                   "intercept + slope · ln batch, least squares in log-log over the earlier studies' best values "
                   "(points: how many, at which batch sizes; one per earlier study and batch size), and enqueued the "
                   "prediction at its batch and the interval's ends as its first search trials. Interval: ±t·s.e. of "
                   "the fitted line at that batch ({levels}; none with two points). found: the value in the variant's "
                   "confirmed configuration '(confirm)', else in its best search trial by validation top-1 "
                   "'(search)'; inside: found within [low, high]. Rules, for comparison (lr only): the linear and √B "
                   "scaling rules from the best value at the largest earlier batch size. All numbers unrounded: "
                   "transfer.csv, with `--format csv`.")
TAIL = ("Errored trials", "Study budget")  # the sections after which nothing is inserted


def transfer_section(fits: list[dict], trials: pd.DataFrame, metric: str) -> list[Section]:
    """Each batch-size transfer fit's prediction against the optimum the study found, where a study ran one."""
    if not fits:
        return []
    legend = TRANSFER_LEGEND.format(levels=transfer_view.levels_text(fits) or "level not recorded")
    table = transfer_view.transfer_table(fits, trials, metric)
    return [section(TRANSFER_HEADING, table, legend, transfer_view.TRANSFER, keep=transfer_view.KEEP)]


def after_search(parts: list[Section], extra: list[Section]) -> list[Section]:
    """`extra` right after the search's sections; where none is shown, before the errored trials and the budget."""
    searched = [i for i, part in enumerate(parts) if part.key == figures.SEARCH]
    at = searched[-1] + 1 if searched else next((i for i, part in enumerate(parts) if part.heading in TAIL), len(parts))
    return parts[:at] + extra + parts[at:]


def sections(parts: Tables, metric: str, bold) -> list[Section]:
    errored = [section("Errored trials", parts.errored, "Each trial's full error is its MLflow run's `error.txt`.")
               ] if len(parts.errored) else []
    return [*headline(parts, metric, bold), *other_layout(parts, bold), *search_section(parts, metric), *errored,
            section("Study budget", parts.spent)]


def with_figures(parts: list[Section], drawn: list[figures.Figure]) -> list[Section]:
    """Each figure after the section it illustrates (after the first section where that one is not shown)."""
    keys = {part.key for part in parts}
    for figure in drawn:
        key = figure.illustrates if figure.illustrates in keys else parts[0].key
        next(part for part in parts if part.key == key).figures.append(figure)
    return parts


def _link(path: Path, base: Path) -> str:
    """`path` relative to the folder `base` of the page that shows it."""
    return Path(os.path.relpath(path, base)).as_posix()


def _body(parts: list[Section], base: Path) -> str:
    """The sections in markdown, each figure (linked relative to `base`) after its section with its caption."""
    lines = []
    for part in parts:
        index = part.table.index.name is not None
        table = part.table.astype(object).where(part.table.notna(), None)
        body = (table.to_markdown(index=index, floatfmt=tables.FLOAT, missingval=tables.EMPTY)
                if len(part.table) else "(none)")
        lines += [f"## {part.heading}", body] + ([part.caption] if part.caption else [])
        lines += [f"![{f.caption}]({_link(f.path, base)})\n\n*{f.caption}*" for f in part.figures]
    return "\n\n".join(lines) + "\n"


def _markdown(parts: list[Section], title: str, base: Path) -> str:
    return f"# {title}\n\n" + _body(parts, base)


def _latex(parts: list[Section]) -> str:
    out = []
    for part in parts:
        frame = part.table.map(_latex_cell)
        frame.columns = [_latex_text(str(c)) for c in frame.columns]
        if part.table.index.name is not None:
            frame.index = pd.Index([_latex_text(str(i)) for i in frame.index], name=_latex_text(frame.index.name))
        body = frame.to_latex(escape=False, index=part.table.index.name is not None, na_rep="--",
                              float_format=f"%{tables.FLOAT}")
        out.append(f"% {part.heading}\n" + body + (f"% {_latex_text(part.caption)}\n" if part.caption else ""))
    return "\n".join(out)


def _html_figure(figure: figures.Figure, base: Path) -> str:
    caption = html.escape(figure.caption)
    return f'<figure><img src="{_link(figure.path, base)}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'


def _html(parts: list[Section], title: str, base: Path) -> str:
    """The sections as one HTML page in `base`, each figure after its section."""
    body = "".join(f"<h2>{part.heading}</h2>"
                   + part.table.to_html(escape=False, index=part.table.index.name is not None, na_rep=tables.EMPTY,
                                        float_format=f"%{tables.FLOAT}")
                   + (f"<p>{part.caption}</p>" if part.caption else "")
                   + "".join(_html_figure(f, base) for f in part.figures) for part in parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1>{body}</body></html>")


def write_outputs(data: StudyData, out: Path, metric: str, formats: tuple[str, ...], title: str,
                  load_telemetry: Callable[[str], pd.DataFrame | None],
                  transfers: Sequence[dict] = (),
                  search_trials: Sequence[FrozenTrial] = ()) -> tuple[str, list[Path], list[Section]]:
    """All files of the report into `out` (`transfers`: the studies' `transfer_view.load_transfers`;
    `search_trials`: their Optuna search, `optuna_views.load_search`); returns (markdown, paths, the markdown's
    sections with their figures)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = Tables.of(data.trials, metric, data.parents)
    drawn = figures.all_figures(data.trials, data.epochs, parts.gaps, metric, out / "figures", load_telemetry)
    fits = transfer_view.all_fits(list(transfers))
    transferred = transfer_section(fits, data.trials, metric)
    drawn += transfer_view.transfer_fit(fits, data.trials, out / "figures", metric)
    parts.optuna = optuna_views.views(search_trials, out / "figures")
    drawn += parts.optuna.figures if parts.optuna else []
    files = []

    def write(name: str, text: str) -> None:
        (out / name).write_text(text)
        files.append(out / name)

    body = with_figures(after_search(sections(parts, metric, lambda t: f"**{t}**"), transferred), drawn)
    markdown = _markdown(body, title, out)
    write("table.md", markdown)
    write("headline.md", _markdown(headline(parts, metric, lambda t: f"**{t}**"), title, out))
    if "csv" in formats:
        write("table.csv", parts.cells.to_csv(index=False))
        if parts.search is not None:
            write("search_table.csv", parts.search.to_csv(index=False))
        write("warmup_gap.csv", parts.gaps.to_csv(index=False))
        write("verdicts.csv", parts.verdicts.to_csv(index=False))
        write("budget.csv", parts.spent.to_csv(index=False))
        if parts.optuna is not None:
            write("importance.csv", parts.optuna.importance.to_csv())
        if fits:
            write("transfer.csv", transfer_view.transfer_rows(fits, data.trials, metric).to_csv(index=False))
    if "latex" in formats:
        write("table.tex", _latex(after_search(sections(parts, metric, _bold_latex), transferred)))
    if "html" in formats:
        shown = after_search(sections(parts, metric, lambda t: f"<b>{t}</b>"), transferred)
        write("table.html", _html(with_figures(shown, drawn), title, out))
    trials = data.trials.assign(params=data.trials["params"].map(lambda p: json.dumps(p, default=str)))
    for name, frame in (("trials.parquet", trials), ("epochs.parquet", data.epochs)):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out / name)
        files.append(out / name)
    return markdown, files + [f.path for f in drawn], body


READING_SUFFIX = ".reading.md"  # a results document's hand-written reading, kept beside it


def results_document(doc: Path, parts: list[Section], parents: list, command: str) -> str:
    """A results document: how the studies ran (their commands, commits, wall times, versions), the reading
    kept beside the document (`<doc>.reading.md`) and the report's sections with their figures, to commit with them."""
    lines = [f"# Results: {parents[-1].data.tags.get('space', '?')}", "",
             f"Regenerate this page from the studies' MLflow store: `{command}`", ""]
    for parent in parents:
        tags, metrics, info = parent.data.tags, parent.data.metrics, parent.info
        wall = (info.end_time - info.start_time) / 1000 if info.end_time else float("nan")
        lines += [f"- study `{info.run_name}`: `{tags.get('command', '?')}`", f"  - commit `{tags.get('git_commit', '?')}`; "
                  f"wall time {wall / 60:.1f} min (MLflow run start to end); train_fraction "
                  f"{metrics.get('train_fraction', float('nan')):.2f}; torch {tags.get('torch_version', '?')}, "
                  f"ray {tags.get('ray_version', '?')}, optuna {tags.get('optuna_version', '?')}"]
    reading = doc.with_name(doc.name.removesuffix(".md") + READING_SUFFIX)
    if reading.is_file():
        lines += ["", "## Reading", "", reading.read_text().strip()]
    lines += ["", _body(parts, doc.parent).strip()]
    return "\n".join(lines) + "\n"


def build_report(tracking_uri: str, experiment: str, out: Path, metric: str = "best",
                 formats: tuple[str, ...] = ("md",), study: str | None = None, log: bool = True,
                 doc: Path | None = None, command: str = "") -> Report:
    """Collect the experiment's (or one study's) trials from MLflow and write + log the report (and, with
    `doc`, a results document made by `command`)."""
    if metric not in METRICS:
        raise ValueError(f"--metric: choose one of {', '.join(METRICS)}, got {metric!r}")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"--format: unknown {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    client = MlflowClient(tracking_uri)
    data = collect(client, experiment, study)
    title = f"{experiment}: {len(data.trials)} trials in {len(data.parents)} " + (
        "study" if len(data.parents) == 1 else "studies")
    markdown, files, body = write_outputs(data, out, metric, formats, title, lambda run_id: telemetry(client, run_id),
                                          transfer_view.load_transfers(client, data.parents),
                                          optuna_views.load_search(client, data.parents))
    report = Report(markdown, files)
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)  # as `out` is made
        doc.write_text(results_document(doc, body, data.parents, command))
        report.files.append(doc)
    if log:
        parent = data.parents[-1].info.run_id  # the newest study the report covers
        artifacts.log_folder(client, parent, str(out), "report")
        # the answer as the study run's description: one click from the experiment's run list
        client.set_tag(parent, NOTE_TAG, (out / "headline.md").read_text())
        report.logged_to = parent
    return report
