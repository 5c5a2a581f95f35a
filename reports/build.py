"""Build a report: tables in the chosen formats, parquet exports and figures, logged to the study's
parent MLflow run under `report/`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.tracking import MlflowClient

from reports import figures, tables
from reports.collect import StudyData, collect, telemetry

FORMATS = ("md", "csv", "latex", "html")
METRICS = ("best", "final")
LEGEND = ("Cells: test top-1 (%) mean ± 95% t-interval over seeds (n = completed runs); **bold** = best in its "
          "column; 'diverged' runs are counted, never dropped; '@eK (ASHA)' = only early-stopped trials, "
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


def sections(cells: pd.DataFrame, gaps: pd.DataFrame, spent: pd.DataFrame, metric: str, bold) -> list[Section]:
    full, shared = tables.wide(cells, bold)
    best_lr, shared_lr = tables.wide(cells, bold, columns=tables.COLUMN[:-1])
    return [
        Section(f"Test top-1, {metric} epoch (TVLARS paper Table 1 layout)", full,
                f"All columns: {shared}. " * bool(shared) + LEGEND),
        Section("Best learning rate per setting", best_lr, f"All columns: {shared_lr}." * bool(shared_lr)),
        Section("Warm-up gap (percentage points; best lr each; completed runs)", gaps),
        Section("Study budget", spent)]


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
    cells = tables.cells(data.trials, metric)
    gaps, spent = tables.warmup_gap(cells), tables.budget(data.trials)
    files = []

    def write(name: str, text: str) -> None:
        (out / name).write_text(text)
        files.append(out / name)

    markdown = _markdown(sections(cells, gaps, spent, metric, lambda t: f"**{t}**"), title)
    write("table.md", markdown)
    if "csv" in formats:
        write("table.csv", cells.to_csv(index=False))
        write("warmup_gap.csv", gaps.to_csv(index=False))
        write("budget.csv", spent.to_csv(index=False))
    if "latex" in formats:
        write("table.tex", _latex(sections(cells, gaps, spent, metric, _bold_latex)))
    figure_paths = figures.all_figures(data.trials, data.epochs, gaps, metric, out / "figures", load_telemetry)
    if "html" in formats:
        write("table.html", _html(sections(cells, gaps, spent, metric, lambda t: f"<b>{t}</b>"), title, figure_paths))
    trials = data.trials.assign(params=data.trials["params"].map(lambda p: json.dumps(p, default=str)))
    for name, frame in (("trials.parquet", trials), ("epochs.parquet", data.epochs)):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out / name)
        files.append(out / name)
    return markdown, files + figure_paths


def build_report(tracking_uri: str, experiment: str, out: Path, metric: str = "best",
                 formats: tuple[str, ...] = ("md",), study: str | None = None, log: bool = True) -> Report:
    """Collect the experiment's (or one study's) trials from MLflow and write + log the report."""
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
    if log:
        parent = data.parents[-1].info.run_id  # the newest study the report covers
        client.log_artifacts(parent, str(out), "report")
        report.logged_to = parent
    return report
