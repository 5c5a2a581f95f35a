"""The report's layout, on the confirmed two-batch store of `known_store.STAGED`: the search stage as one row
per trial, the gaps as comparisons × batch size, constant columns said once, the by-lr table only where it
shows more than a diagonal, the trust ratio of confirmed runs, and each figure right after its section."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from known_store import STAGED, build_store
from reports import figures, tables
from reports.build import BY_LR_HEADING, Section, Tables, build_report, section, sections, with_figures
from reports.collect import collect

MAX_COLUMNS = 12
SEARCH, GAP, BUDGET = "Search stage", "Warm-up gap", "Study budget"


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> tuple[str, Path]:
    """The staged store and its report (markdown, csv, html, and a results document in another folder)."""
    root = tmp_path_factory.mktemp("staged")
    uri, _ = build_store(root, "staged", STAGED)
    (root / "docs").mkdir()
    build_report(uri, "staged", root / "out", metric="final", formats=("md", "csv", "html"), log=False,
                 doc=root / "docs" / "results.md")
    return uri, root


def _block(markdown: str, heading: str) -> str:
    """The markdown of the section whose heading starts with `heading`, up to the next section."""
    return markdown.split(f"\n## {heading}")[1].split("\n## ")[0]


def _table(markdown: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the markdown table under `heading`."""
    lines = [line for line in _block(markdown, heading).splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return split[0], split[2:]


def _caption(markdown: str, heading: str) -> str:
    """The paragraph right after the table under `heading`."""
    return _block(markdown, heading).split("|\n\n")[-1].split("\n\n")[0].strip()


def welch(std_a: float, std_b: float, n: int = 2) -> float:
    """The 95% Welch half-width for two cells of `n` seeds each, from the textbook formula."""
    va, vb = std_a**2 / n, std_b**2 / n
    dof = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1))
    return stats.t.ppf(0.975, dof) * math.sqrt(va + vb)


def test_the_search_table_is_a_row_per_trial_the_best_3_per_variant(staged):
    _, root = staged
    markdown = (root / "out" / "table.md").read_text()
    header, rows = _table(markdown, SEARCH)
    assert header == ["variant", "batch_size", "searched", "val_final", "epochs_run", "status"]
    assert len(header) <= MAX_COLUMNS
    by_variant = {}
    for row in rows:
        by_variant.setdefault(row[0], []).append(row)
    # lars_warmup_bs512 ran 4 trials: its best 3 by validation top-1 (test − 1), best first
    assert [(r[2], r[3]) for r in by_variant["lars_warmup_bs512"]] == [("lr=2", "70.00"), ("lr=1.06", "67.00"),
                                                                       ("lr=3.33", "65.00")]
    assert [r[2] for r in by_variant["tvlars_bs512"]] == ["lr=2, delay_epochs=1, lam=0.00123",
                                                          "lr=1.5, delay_epochs=2, lam=0.01"]
    assert by_variant["tvlars_bs512"][1][4:] == ["30", "stopped_by_asha"]
    assert len(rows) == 9 and "9 of the 10 search trials" in _caption(markdown, SEARCH)
    for row in rows:  # every searched value at 3 significant figures at most
        for number in re.findall(r"=([\d.]+)", row[2]):
            assert len(number.replace(".", "").lstrip("0")) <= 3, row
    assert len(pd.read_csv(root / "out" / "search_table.csv")) == 10  # every search trial


def test_the_gap_table_is_comparisons_by_batch_size(staged):
    _, root = staged
    markdown = (root / "out" / "table.md").read_text()
    header, rows = _table(markdown, GAP)
    assert header == ["comparison", "bs512", "bs1024"]
    assert rows == [  # LARS + warm-up 71 / 61, LARS 62 / 60, TVLARS 76 / 57 (two seeds each)
        ["LARS: warm-up − none", f"+9.00 ± {welch(math.sqrt(2), math.sqrt(8)):.2f}",
         f"+1.00 ± {welch(math.sqrt(2), math.sqrt(8)):.2f}"],
        ["TVLARS − LARS + warm-up", f"+5.00 ± {welch(math.sqrt(2), math.sqrt(2)):.2f}",
         f"−4.00 ± {welch(math.sqrt(8), math.sqrt(2)):.2f}"]]  # a true minus
    assert _caption(markdown, GAP).startswith("All columns: clf cifar10 resnet18 100ep. ")
    gaps = pd.read_csv(root / "out" / "warmup_gap.csv")  # the long frame behind it, LAMB's empty rows too
    assert list(gaps.columns) == tables.GAP_COLUMNS and len(gaps) == len(tables.GAPS) * 2


def test_the_gap_table_titles_columns_with_each_setting_that_varies():
    row = {"first": "a", "second": "b", "task": "clf", "dataset": "cifar10", "model": "resnet8", "half_width": 1.0,
           "n_first": 2, "n_second": 2}
    gaps = pd.DataFrame([{**row, "comparison": name, "epochs": epochs, "batch_size": 128, "gap": gap}
                         for _, _, name in [tables.GAPS[0]] for epochs, gap in ((8, 0.5), (16, -0.25))]
                        + [{**row, "comparison": tables.GAPS[1][2], "epochs": 8, "batch_size": 128, "gap": math.nan}])
    table, shared = tables.gap_table(gaps)
    assert list(table.columns) == ["8ep bs128", "16ep bs128"] and shared == "clf cifar10 resnet8"
    assert table.loc[tables.GAPS[0][2]].tolist() == ["+0.50 ± 1.00", "−0.25 ± 1.00"]
    assert list(table.index) == [tables.GAPS[0][2]]  # the comparison without a value anywhere is left out


def test_constant_and_empty_columns_are_dropped_and_said_once():
    frame = pd.DataFrame({"task": ["clf", "clf"], "epochs": [8, 8], "batch_size": [128, 1024], "gpu_hours": [0.0, 0.0],
                          "note": [None, tables.EMPTY], "n": [3, 4]})
    part = section("S", frame, "Legend.")
    assert list(part.table.columns) == ["batch_size", "n"]
    assert part.caption == "All rows: clf 8ep; gpu_hours = 0.00. Legend."
    single = section("S", frame.head(1))  # one row: only its zeros say nothing
    assert list(single.table.columns) == ["task", "epochs", "batch_size", "n"]
    assert single.caption == "All rows: gpu_hours = 0.00."


def test_the_report_says_the_constants_once(staged):
    _, root = staged
    markdown = (root / "out" / "table.md").read_text()
    header, _ = _table(markdown, SEARCH)
    assert not {"task", "dataset", "model", "epochs"} & set(header)
    assert _caption(markdown, SEARCH).startswith("All rows: clf cifar10 resnet18 100ep. ")
    header, _ = _table(markdown, BUDGET)
    assert not {"diverged", "errored", "running", "gpu_hours"} & set(header)
    assert _caption(markdown, BUDGET) == "All rows: diverged = 0; errored = 0; running = 0; gpu_hours = 0.00."
    for heading in re.findall(r"^## (.+)$", markdown, re.M):
        assert len(_table(markdown, heading)[0]) <= MAX_COLUMNS, heading


def test_the_by_lr_table_only_where_a_row_has_several_lrs(staged):
    uri, root = staged
    assert f"## {BY_LR_HEADING}" not in (root / "out" / "table.md").read_text()  # each optimizer: one lr
    trials = collect(MlflowClient(uri), "staged").trials
    one = trials.index[(trials["stage"] == "confirm") & (trials["label"] == "LARS") & (trials["batch_size"] == 512)][0]
    trials.loc[one, "lr"] = 1.0623  # LARS at bs512: two lrs
    parts = {p.heading: p for p in sections(Tables.of(trials, "final", []), "final", str)}
    assert BY_LR_HEADING in parts
    assert {"bs512 lr=1.06", "bs512 lr=2", "bs1024 lr=2.83"} == set(parts[BY_LR_HEADING].table.columns)


def test_learning_rates_that_3_figures_cannot_tell_apart_print_whole():
    cells = pd.DataFrame([{"label": "LARS", "task": "clf", "dataset": "c", "model": "m", "epochs": 8, "batch_size": 128,
                           "lr": lr, "mean": 50.0, "ci95": 1.0, "n": 2, "std": 1.0, "diverged": 0, "errored": 0,
                           "stopped": 0, "stopped_best": math.nan, "stopped_epoch": 0, "configs": 1, "cell_diverged": 0,
                           "best_in_column": True} for lr in (1.062, 1.064)])
    table, _ = tables.wide(cells)
    assert list(table.columns) == ["lr=1.062", "lr=1.064"]
    assert list(tables.wide(cells.head(1))[0].columns) == ["lr=1.06"]


def test_the_trust_ratio_is_drawn_from_confirmed_runs_one_panel_per_batch(staged, tmp_path):
    uri, _ = staged
    trials = collect(MlflowClient(uri), "staged").trials
    asked = []

    def load(run_id: str) -> pd.DataFrame:
        asked.append(run_id)
        return pd.DataFrame({"step": [0, 0, 1, 1], "layer": ["a", "b", "a", "b"], "rho": [0.1, 0.2, 0.1, 0.3]})

    drawn = figures.trust_ratio(trials, load, tmp_path)
    confirmed = trials[trials["stage"] == "confirm"]
    best = confirmed.sort_values("best", ascending=False).drop_duplicates(["label", "batch_size"])
    assert sorted(asked) == sorted(best["run_id"])  # each optimizer's best confirmed run at each batch size
    assert drawn.illustrates == figures.HEADLINE and "confirmed run" in drawn.caption
    width = matplotlib.image.imread(drawn.path).shape[1]
    (tmp_path / "one").mkdir()
    one = figures.trust_ratio(trials[trials["batch_size"] == 512], load, tmp_path / "one")
    assert width > matplotlib.image.imread(one.path).shape[1]  # two panels side by side: wider than one

    asked.clear()
    figures.trust_ratio(trials[trials["stage"] == "search"], load, tmp_path)  # no confirm stage: every run
    assert asked and set(asked) <= set(trials.loc[trials["stage"] == "search", "run_id"])


EXPECTED_FIGURES = {  # section → the figures right after it
    "Test top-1": ["accuracy_vs_epoch_clf_cifar10_bs512.png", "accuracy_vs_epoch_clf_cifar10_bs1024.png",
                   "trust_ratio_vs_step.png"],
    GAP: ["warmup_gap_vs_batch.png"], SEARCH: ["best_so_far_vs_epochs.png"], BUDGET: []}


def _images(block: str) -> list[tuple[str, str, str]]:
    """(alt, link, the line after it) of each image in a markdown block."""
    return re.findall(r"^!\[(.+)\]\((.+)\)\n\n(.+)$", block, re.M)


def test_each_figure_follows_its_section_in_the_markdown_and_the_document(staged):
    _, root = staged
    for page in (root / "out" / "table.md", root / "docs" / "results.md"):
        markdown = page.read_text()
        assert "## Figures" not in markdown
        for heading, names in EXPECTED_FIGURES.items():
            images = _images(_block(markdown, heading))
            assert [Path(link).name for _, link, _ in images] == names, (page, heading)
            for alt, link, caption in images:  # each link works from the page's folder, an italic caption under it
                assert (page.parent / link).is_file() and caption == f"*{alt}*", (page, link)
    assert "](figures/" in (root / "out" / "table.md").read_text()
    assert "](../out/figures/" in (root / "docs" / "results.md").read_text()


def test_each_figure_follows_its_section_in_the_html(staged):
    _, root = staged
    page = (root / "out" / "table.html").read_text()
    order = re.findall(r"<h2>([^<]*)|<img src=\"([^\"]*)\"", page)
    placed, current = {}, None
    for heading, src in order:
        current = heading or current
        if src:
            assert (root / "out" / src).is_file()
            placed.setdefault(next(k for k in EXPECTED_FIGURES if current.startswith(k)), []).append(Path(src).name)
    assert placed == {k: v for k, v in EXPECTED_FIGURES.items() if v}


def test_a_figure_whose_section_is_not_shown_follows_the_first(tmp_path):
    parts = [Section("Headline", pd.DataFrame(), key=figures.HEADLINE),
             Section("Gaps", pd.DataFrame(), key=figures.GAP)]
    drawn = [figures.Figure(tmp_path / f"{k}.png", k, k) for k in (figures.GAP, figures.SEARCH, figures.HEADLINE)]
    placed = with_figures(parts, drawn)
    assert [[f.caption for f in p.figures] for p in placed] == [[figures.SEARCH, figures.HEADLINE], [figures.GAP]]
