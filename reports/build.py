"""Build a report: tables in the chosen formats, parquet exports and figures, logged to the study's
parent MLflow run under `report/`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from reports import figures, tables
from reports.collect import StudyData, collect, telemetry
from trainables.records import Stage, TrialStatus

FORMATS = ("md", "csv", "latex", "html")
METRICS = ("best", "final")
NOTE_TAG = "mlflow.note.content"  # a run's description in the MLflow UI
CONFIRMED = ("confirmed: for each optimizer and batch size, the best configuration of the search (by validation "
             "top-1) re-run to the full budget with fresh seeds")
SEARCH_ONLY = ("search stage only — no confirm stage ran: one seed per configuration, chosen and stopped early on "
               "validation top-1; not a confirmed result")
SEARCH_LEGEND = ("Validation top-1 (%) of the search's trials, one seed each (ASHA stopped some early: '@eK'); the "
                 "confirm stage re-ran the best of each variant — these numbers chose it and are not a result.")
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


@dataclass
class Tables:
    """What the sections show: the headline cells (confirmed runs where a confirm stage ran), the
    search stage's validation cells when they are not the headline, the warm-up gap and the budget."""

    cells: pd.DataFrame
    confirmed: bool
    search: pd.DataFrame | None
    gaps: pd.DataFrame
    spent: pd.DataFrame
    errored: pd.DataFrame  # one row per errored trial: which, and its error line

    @classmethod
    def of(cls, trials: pd.DataFrame, metric: str) -> "Tables":
        confirmed = bool((trials["stage"] == Stage.CONFIRM).any())
        headline = trials[trials["stage"] == Stage.CONFIRM] if confirmed else trials
        cells = tables.cells(headline, metric)
        search = tables.cells(trials[trials["stage"] == Stage.SEARCH], f"val_{metric}") if confirmed else None
        errored = trials.loc[trials["status"] == TrialStatus.ERRORED, ["run_name", "variant", "stage", "error"]]
        return cls(cells, confirmed, search, tables.warmup_gap(cells), tables.budget(trials),
                   errored.sort_values("run_name").reset_index(drop=True))


# Confirmed cells each hold the lr their search chose, so their headline has a column per setting (the lr
# in the cell); search-only cells keep the TVLARS paper's column per lr.
BY_SETTING, BY_LR = tables.COLUMN[:-1], tables.COLUMN
GAP_HEADING = "Warm-up gap and other gaps (percentage points; best lr each; completed runs; ±95%: Welch interval)"


def headline(parts: Tables, metric: str, bold) -> list[Section]:
    """The answer: the headline cells and their gaps."""
    kind = CONFIRMED if parts.confirmed else SEARCH_ONLY
    if parts.confirmed:
        table, shared = tables.wide(parts.cells, bold, columns=BY_SETTING)
        heading = f"Test top-1, {metric} epoch, per setting (each optimizer at the lr its search chose)"
    else:
        table, shared = tables.wide(parts.cells, bold, columns=BY_LR)
        heading = f"Test top-1, {metric} epoch (TVLARS paper Table 1 layout)"
    return [Section(heading, table, f"{kind[0].upper()}{kind[1:]}. " + f"All columns: {shared}. " * bool(shared) + LEGEND),
            Section(GAP_HEADING, parts.gaps)]


def sections(parts: Tables, metric: str, bold) -> list[Section]:
    best_lr, shared_lr = tables.wide(parts.cells, bold, columns=BY_LR if parts.confirmed else BY_SETTING)
    other = "By learning rate (TVLARS paper Table 1 layout)" if parts.confirmed else "Best learning rate per setting"
    search = []
    if parts.search is not None:
        table, shared = tables.wide(parts.search, bold)
        search = [Section(f"Search stage: validation top-1, {metric} epoch", table,
                          f"All columns: {shared}. " * bool(shared) + SEARCH_LEGEND)]
    errored = [Section("Errored trials", parts.errored, "Each trial's full error is its MLflow run's `error.txt`.")
               ] if len(parts.errored) else []
    return [*headline(parts, metric, bold),
            Section(other, best_lr, f"All columns: {shared_lr}." * bool(shared_lr)),
            *search, *errored, Section("Study budget", parts.spent)]


def _markdown(parts: list[Section], title: str) -> str:
    lines = [f"# {title}"]
    for part in parts:
        index = part.table.index.name is not None
        table = part.table.astype(object).where(part.table.notna(), None)
        body = table.to_markdown(index=index, floatfmt=".2f", missingval="—") if len(part.table) else "(none)"
        lines += [f"## {part.heading}", body] + ([part.caption] if part.caption else [])
    return "\n\n".join(lines) + "\n"


def _latex(parts: list[Section]) -> str:
    out = []
    for part in parts:
        frame = part.table.map(_latex_cell)
        frame.columns = [_latex_text(str(c)) for c in frame.columns]
        if part.table.index.name is not None:
            frame.index = pd.Index([_latex_text(str(i)) for i in frame.index], name=_latex_text(frame.index.name))
        body = frame.to_latex(escape=False, index=part.table.index.name is not None, na_rep="--", float_format="%.2f")
        out.append(f"% {part.heading}\n" + body + (f"% {part.caption}\n" if part.caption else ""))
    return "\n".join(out)


def _html(parts: list[Section], title: str, figure_paths: list[Path]) -> str:
    body = "".join(f"<h2>{part.heading}</h2>"
                   f"{part.table.to_html(escape=False, index=part.table.index.name is not None, na_rep='—', float_format='%.2f')}"
                   + (f"<p>{part.caption}</p>" if part.caption else "") for part in parts)
    images = "".join(f'<figure><img src="figures/{p.name}" alt="{p.stem}"></figure>' for p in figure_paths)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1>{body}{images}</body></html>")


def write_outputs(data: StudyData, out: Path, metric: str, formats: tuple[str, ...], title: str,
                  load_telemetry: Callable[[str], pd.DataFrame | None]) -> tuple[str, list[Path]]:
    """All files of the report into `out`; returns (markdown, paths)."""
    out.mkdir(parents=True, exist_ok=True)
    parts = Tables.of(data.trials, metric)
    files = []

    def write(name: str, text: str) -> None:
        (out / name).write_text(text)
        files.append(out / name)

    markdown = _markdown(sections(parts, metric, lambda t: f"**{t}**"), title)
    write("table.md", markdown)
    write("headline.md", _markdown(headline(parts, metric, lambda t: f"**{t}**"), title))
    if "csv" in formats:
        write("table.csv", parts.cells.to_csv(index=False))
        if parts.search is not None:
            write("search_table.csv", parts.search.to_csv(index=False))
        write("warmup_gap.csv", parts.gaps.to_csv(index=False))
        write("budget.csv", parts.spent.to_csv(index=False))
    if "latex" in formats:
        write("table.tex", _latex(sections(parts, metric, _bold_latex)))
    figure_paths = figures.all_figures(data.trials, data.epochs, parts.gaps, metric, out / "figures", load_telemetry)
    if "html" in formats:
        write("table.html", _html(sections(parts, metric, lambda t: f"<b>{t}</b>"), title, figure_paths))
    trials = data.trials.assign(params=data.trials["params"].map(lambda p: json.dumps(p, default=str)))
    for name, frame in (("trials.parquet", trials), ("epochs.parquet", data.epochs)):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out / name)
        files.append(out / name)
    return markdown, files + figure_paths


READING_SUFFIX = ".reading.md"  # a results document's hand-written reading, kept beside it


def results_document(doc: Path, markdown: str, parents: list, figure_paths: list[Path], command: str) -> str:
    """A results document: how the studies ran (their commands, commits, wall times, versions), the report,
    its figures and the reading kept beside the document (`<doc>.reading.md`), to commit with the figures."""
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
    body = markdown.split("\n", 1)[1] if markdown.startswith("# ") else markdown  # the report's own title goes
    lines += ["", body.strip(), "", "## Figures", ""]
    lines += [f"![{p.stem}]({Path(os.path.relpath(p, doc.parent)).as_posix()})" for p in figure_paths]
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
    markdown, files = write_outputs(data, out, metric, formats, title, lambda run_id: telemetry(client, run_id))
    report = Report(markdown, files)
    if doc is not None:
        doc.write_text(results_document(doc, markdown, data.parents, [f for f in files if f.suffix == ".png"], command))
        report.files.append(doc)
    if log:
        parent = data.parents[-1].info.run_id  # the newest study the report covers
        client.log_artifacts(parent, str(out), "report")
        # the answer as the study run's description: one click from the experiment's run list
        client.set_tag(parent, NOTE_TAG, (out / "headline.md").read_text())
        report.logged_to = parent
    return report
