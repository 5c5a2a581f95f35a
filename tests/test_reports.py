"""Reports from a real MLflow store built here with known values: exact table text, CI math, markers,
every output format parsed back, parquet exports, figures, and artifacts on the parent run."""

from __future__ import annotations

import json
import math
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import pandas as pd
import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from known_store import TRIALS, build_store
from reports.build import build_report
from reports.collect import ReportError, telemetry
from reports.table import main as table_main
from reports.tables import mean_ci
from trainables.records import ARTIFACTS_FOLDER, TELEMETRY_FILE

T_975 = {2: 12.706204736174707, 3: 4.302652729749464}  # Student t quantiles (tables), n = 2, 3


def welch(std_a: float, n_a: int, std_b: float, n_b: int) -> float:
    """The 95% Welch half-width, from the textbook formula (not the report's code)."""
    va, vb = std_a**2 / n_a, std_b**2 / n_b
    dof = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return stats.t.ppf(0.975, dof) * math.sqrt(va + vb)


@pytest.fixture()
def store(tmp_path):
    return build_store(tmp_path)


def test_mean_ci_is_the_student_t_interval():
    mean, half, n = mean_ci([70.0, 72.0, 74.0])
    assert (mean, n) == (72.0, 3) and half == pytest.approx(T_975[3] * 2.0 / math.sqrt(3), rel=1e-12)
    mean, half, n = mean_ci([60.0, 64.0])
    assert (mean, n) == (62.0, 2) and half == pytest.approx(T_975[2] * math.sqrt(8) / math.sqrt(2), rel=1e-12)
    mean, half, n = mean_ci([5.0])
    assert (mean, n) == (5.0, 1) and math.isnan(half)


EXPECTED_FINAL = """\
| optimizer                     | lr=0.01          | lr=2                                        |
|:------------------------------|:-----------------|:--------------------------------------------|
| LARS + warm-up                |                  | 72.00 ± 4.97 (n=3)                          |
| LARS + warm-up (TVLARS paper) |                  | 77.49                                       |
| LARS                          |                  | 62.00 ± 25.41 (n=2, 1 diverged)             |
| LAMB + warm-up                | 50.00 @e30 (ASHA) |                                             |
| TVLARS                        |                  | **75.00 (n=1) [best of 2; 1 diverged]**     |
| TVLARS (TVLARS paper)         |                  | 81.42                                       |"""


def _cells(markdown: str, heading: str) -> dict[tuple[str, str], str]:
    """{(row, column): text} of the markdown table under `heading`."""
    block = markdown.split(f"## {heading}")[1].split("\n## ")[0]
    lines = [line for line in block.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, rows = split[0], split[2:]
    return {(row[0], col): text for row in rows for col, text in zip(header[1:], row[1:])}


def test_known_store_gives_exactly_the_expected_table(store, tmp_path):
    uri, parent = store
    report = build_report(uri, "known", tmp_path / "out", metric="final", formats=("md", "csv", "latex", "html"))
    expected = _cells("## T\n" + EXPECTED_FINAL, "T")
    assert _cells(report.markdown, "Test top-1, final epoch") == expected
    assert "All columns: clf cifar10 resnet18 100ep bs512." in report.markdown
    gap = _cells(report.markdown, "Warm-up gap")  # comparisons × batch size
    assert gap[("LARS: warm-up − none", "bs512")] == f"+10.00 ± {welch(2.0, 3, math.sqrt(8), 2):.2f}"  # 72 − 62
    assert gap[("TVLARS − LARS + warm-up", "bs512")] == "+3.00 (n=1 vs 3)"  # 75 − 72; TVLARS has one seed
    assert len(gap) == 2  # LAMB never ran to the end, LAMBC never ran: their rows are left out
    budget = _cells(report.markdown, "Study budget")
    assert budget[("known-study", "trials")] == "9" and budget[("known-study", "completed")] == "6"
    assert budget[("known-study", "diverged")] == "2" and budget[("known-study", "stopped_by_asha")] == "1"
    assert budget[("known-study", "epochs_run")] == str(6 * 100 + 2 * 50 + 30)
    assert budget[("known-study", "epochs_saved_by_asha")] == "70"
    assert budget[("known-study", "cpu_hours")] == "72.00"  # 9 trials × 1 h × 2 workers × 4 CPUs
    best_lr = _cells(report.markdown, "Best learning rate per setting")
    assert best_lr[("TVLARS", "bs512")] == "**lr=2: 75.00 (n=1) [best of 2; 1 diverged]**"
    assert report.logged_to == parent

    best = build_report(uri, "known", tmp_path / "best", metric="best", log=False)
    assert _cells(best.markdown, "Test top-1, best epoch")[("LARS + warm-up", "lr=2")] == "73.00 ± 4.97 (n=3)"


def test_every_format_is_written_parses_and_is_logged(store, tmp_path):
    uri, parent = store
    out = tmp_path / "out"
    build_report(uri, "known", out, metric="final", formats=("md", "csv", "latex", "html"))
    cells = pd.read_csv(out / "table.csv")
    assert len(cells) == 4 and set(cells["label"]) == {"LARS + warm-up", "LARS", "LAMB + warm-up", "TVLARS"}
    lars = cells[cells["label"] == "LARS"].iloc[0]
    assert (lars["mean"], lars["n"], lars["diverged"]) == (62.0, 2, 1)
    assert lars["ci95"] == pytest.approx(T_975[2] * 2.0, rel=1e-9)
    assert cells.loc[cells["label"] == "LARS + warm-up", "paper_top1"].item() == 77.49
    assert cells.loc[cells["best_in_column"], "label"].tolist() == ["TVLARS"]
    assert pd.read_csv(out / "budget.csv")["trials"].tolist() == [9]
    gaps = pd.read_csv(out / "warmup_gap.csv")  # the long frame: a row per comparison × setting, empty ones too
    assert len(gaps) == 4 and gaps.loc[gaps["comparison"] == "LARS: warm-up − none", "gap"].item() == 10.0
    assert gaps.loc[gaps["comparison"] == "TVLARS − LARS + warm-up", ["n_first", "n_second"]].values.tolist() == [[1, 3]]

    tex = (out / "table.tex").read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 4
    assert r"\textbf{75.00 (n=1) [best of 2; 1 diverged]}" in tex and r"72.00 $\pm$ 4.97 (n=3)" in tex
    assert "\x01" not in tex and "_" not in tex.replace(r"\_", "")

    class Tables(HTMLParser):
        tables, in_bold, bold = 0, False, []

        def handle_starttag(self, tag, attrs):
            self.tables += tag == "table"
            self.in_bold = self.in_bold or tag == "b"

        def handle_endtag(self, tag):
            self.in_bold = self.in_bold and tag != "b"

        def handle_data(self, data):
            if self.in_bold:
                self.bold.append(data)

    html = Tables()
    html.feed((out / "table.html").read_text())
    assert html.tables == 4 and html.bold == ["75.00 (n=1) [best of 2; 1 diverged]", "lr=2: 75.00 (n=1) [best of 2; 1 diverged]"]

    trials = pq.read_table(out / "trials.parquet").to_pandas()
    assert len(trials) == 9 and sorted(trials["final"].dropna()) == [10, 10, 50, 60, 64, 70, 72, 74, 75]
    assert json.loads(trials.loc[trials["trial_id"] == "trial_6", "params"].item())["lam"] == 0.001
    epochs = pq.read_table(out / "epochs.parquet").to_pandas()
    assert len(epochs) == sum(len(t.curve) for t in TRIALS) and {"epoch", "test_top1", "train_loss"} <= set(epochs)

    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["accuracy_vs_epoch_clf_cifar10_bs512.png", "best_so_far_vs_epochs.png",
                       "trust_ratio_vs_step.png", "warmup_gap_vs_batch.png"]  # λ: Optuna's slice plot, with a journal
    for name in figures:
        image = matplotlib.image.imread(out / "figures" / name)
        assert image.shape[0] > 300 and image.shape[1] > 500

    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {f"report/{n}" for n in ("table.md", "table.csv", "table.tex", "table.html", "trials.parquet",
                                    "epochs.parquet", "budget.csv", "warmup_gap.csv", "figures")} <= logged
    assert len(client.list_artifacts(parent, "report/figures")) == 4


def test_bad_input_gets_one_clear_error(store, tmp_path, capsys):
    uri, _ = store
    with pytest.raises(ReportError, match="no MLflow experiment 'nope'; this store has: .*known"):
        build_report(uri, "nope", tmp_path / "x")
    with pytest.raises(ValueError, match="--format: unknown 'pdf'"):
        build_report(uri, "known", tmp_path / "x", formats=("md", "pdf"))
    assert table_main(["--experiment", "known", "--tracking-uri", uri, "--study", "other"]) == 2
    assert "error: --study: no study run with id or name 'other'" in capsys.readouterr().err
    client = MlflowClient(uri)  # a deleted experiment once read as one without study runs
    gone = client.create_experiment("gone")
    client.delete_experiment(gone)
    assert table_main(["--experiment", "gone", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err == (f"error: --experiment: MLflow experiment 'gone' is deleted (id {gone} in {uri}); "
                                       f"restore it with `MLFLOW_TRACKING_URI={uri} mlflow experiments restore -x {gone}`\n")
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert table_main(["--experiment", "known", "--tracking-uri", missing]) == 2
    assert "no MLflow database at" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    for flag, path in (("--out", "/proc/nope"), ("--doc", "/proc/nope/results.md")):  # was a FileNotFoundError traceback
        assert table_main(["--experiment", "known", "--tracking-uri", uri, "--no-log", flag, path]) == 2
        assert capsys.readouterr().err == f"error: {flag}: cannot write to /proc/nope (No such file or directory)\n"
    assert not (tmp_path / "x").exists()


def test_cli_prints_markdown_and_writes_chosen_formats(store, tmp_path, capsys):
    uri, parent = store
    out = tmp_path / "cli"
    assert table_main(["--experiment", "known", "--tracking-uri", uri, "--metric", "final",
                       "--format", "csv,html", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| LARS + warm-up (TVLARS paper) |" in printed and "| 77.49 " in printed
    assert f"logged to MLflow run {parent} under report/" in printed
    assert {p.name for p in out.iterdir()} >= {"table.md", "table.csv", "table.html", "trials.parquet"}
    assert not (out / "table.tex").exists()
    doc = tmp_path / "new" / "folder" / "results.md"  # a results document's folder is made, as --out's is
    assert table_main(["--experiment", "known", "--tracking-uri", uri, "--no-log", "--out", str(out), "--doc", str(doc)]) == 0
    assert doc.read_text().startswith("# Results: ")


def test_a_store_moved_elsewhere_is_read_and_logged_to_where_it_is_now(tmp_path):
    """A study folder moved since it ran (fetched from a cluster): MLflow recorded its runs' artifact folders as
    absolute paths, so the report found no telemetry there (its figure said "no run has trust-ratio telemetry") and
    logged itself by re-creating the old folder; it reads and writes beside the moved database instead."""
    ran_in, moved = tmp_path / "on-the-cluster", tmp_path / "on-a-laptop"
    uri, parent = build_store(ran_in)
    client = MlflowClient(uri)
    trial = client.search_runs([client.get_run(parent).info.experiment_id], "tags.trial_id = 'trial_0'")[0].info.run_id
    rows = pd.DataFrame({"step": [0, 1], "layer": ["conv1.weight"] * 2, "rho": [0.5, 0.25], "w_norm": [1.0, 1.0],
                         "g_norm": [2.0, 4.0]})
    with tempfile.TemporaryDirectory() as tmp:
        rows.to_parquet(Path(tmp) / TELEMETRY_FILE)
        client.log_artifact(trial, str(Path(tmp) / TELEMETRY_FILE))
    ran_in.rename(moved)

    moved_uri = f"sqlite:///{moved / 'mlflow.db'}"
    pd.testing.assert_frame_equal(telemetry(MlflowClient(moved_uri), trial), rows)
    report = build_report(moved_uri, "known", tmp_path / "out")
    assert report.logged_to == parent and not ran_in.exists()
    assert (moved / ARTIFACTS_FOLDER / parent / "artifacts" / "report" / "table.md").is_file()
