"""The batch-size transfer in a report, on the confirmed two-batch store of `known_store.STAGED` with a hand-written
`transfer.json` on its parent run: each fit's prediction and interval beside the value the study confirmed, in
the markdown, transfer.csv and a figure; a store without the artifact reports exactly as before."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from known_store import STAGED, build_store
from reports import transfer_view
from reports.build import TRANSFER_HEADING, build_report
from reports.collect import collect
from trainables.records import TRANSFER_ARTIFACT

FORMATS = ("md", "csv", "latex", "html")
SEARCH, BUDGET = "Search stage", "Study budget"
LARS_FIT = {  # lars_warmup_bs1024 confirmed lr=2.83: inside [1.95, 3.08], 2.83 / 2.45 = 1.155
    "variant": "lars_warmup_bs1024", "label": "LARS + warm-up", "key": "lr", "target_batch": 1024,
    "points": [{"batch_size": 256, "value": 1.0, "study": "exp-a-study", "trial": "lars-3", "stage": "confirm"},
               {"batch_size": 512, "value": 1.5, "study": "exp-a-study", "trial": "lars-7", "stage": "confirm"},
               {"batch_size": 512, "value": 1.7, "study": "exp-b-study", "trial": "lars-2", "stage": "search"}],
    "slope": 0.62, "intercept": -3.4, "level": 0.68, "predicted": 2.45, "low": 1.95, "high": 3.08,
    "rules": {"linear": 3.0, "sqrt": 2.1213}, "searched": [0.05, 20.0], "enqueued": [2.45, 1.95, 3.08]}
TV_FIT = {  # tvlars_bs1024 confirmed lam=0.0012345: inside [0.001, 0.004]; no rules for λ
    "variant": "tvlars_bs1024", "label": "TVLARS", "key": "lam", "target_batch": 1024,
    "points": [{"batch_size": 256, "value": 0.004, "study": "exp-a-study", "trial": "tv-1", "stage": "confirm"},
               {"batch_size": 512, "value": 0.003, "study": "exp-a-study", "trial": "tv-4", "stage": "confirm"}],
    "slope": -0.415, "intercept": -3.22, "level": 0.68, "predicted": 0.002, "low": 0.001, "high": 0.004,
    "rules": {}, "searched": [1e-06, 0.01], "enqueued": [0.002, 0.001, 0.004]}
TRANSFER = {"sources": ["exp-a", "exp-b"], "fits": [LARS_FIT, TV_FIT]}


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> tuple[str, str, Path]:
    """The staged store's report without a transfer artifact (`before/`), then with one (`after/`)."""
    root = tmp_path_factory.mktemp("transfer")
    uri, parent = build_store(root, "staged", STAGED)
    build_report(uri, "staged", root / "before", metric="final", formats=FORMATS, log=False)
    MlflowClient(uri).log_dict(parent, TRANSFER, TRANSFER_ARTIFACT)
    build_report(uri, "staged", root / "after", metric="final", formats=FORMATS, log=False)
    return uri, parent, root


def _block(markdown: str, heading: str) -> str:
    """The markdown of the section whose heading starts with `heading`, up to the next section."""
    return markdown.split(f"\n## {heading}")[1].split("\n## ")[0]


def _rows(markdown: str, heading: str) -> dict[str, dict[str, str]]:
    """{first cell: {column: text}} of the markdown table under `heading`."""
    lines = [line for line in _block(markdown, heading).splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return {row[0]: dict(zip(split[0], row)) for row in split[2:]}


def test_the_section_shows_each_prediction_its_interval_and_the_found_value(reports):
    _, _, root = reports
    markdown = (root / "after" / "table.md").read_text()
    headings = re.findall(r"^## (.+)$", markdown, re.M)
    search, budget = (next(i for i, h in enumerate(headings) if h.startswith(name)) for name in (SEARCH, BUDGET))
    assert search < headings.index(TRANSFER_HEADING) < budget
    rows = _rows(markdown, TRANSFER_HEADING)
    assert set(rows) == {"lars_warmup_bs1024", "tvlars_bs1024"}
    lars, tv = rows["lars_warmup_bs1024"], rows["tvlars_bs1024"]
    assert lars["predicted [low, high]"] == "2.45 [1.95, 3.08]"
    assert (lars["found"], lars["inside"], lars["found / predicted"]) == ("2.83 (confirm)", "yes", "1.16")
    assert (lars["key"], lars["slope"], lars["rules"], lars["points"]) == ("lr", "0.62", "linear 3, √B 2.12",
                                                                           "3: bs256, 512")
    assert (tv["key"], tv["predicted [low, high]"], tv["found"], tv["inside"]) == ("lam", "0.002 [0.001, 0.004]",
                                                                                   "0.00123 (confirm)", "yes")
    assert (tv["slope"], tv["rules"], tv["found / predicted"]) == ("-0.41", "—", "0.62")  # no rules for λ
    caption = _block(markdown, TRANSFER_HEADING).split("|\n\n")[-1]
    assert "least squares in log-log" in caption and "(68%;" in caption and "All rows: batch = 1024." in caption


def test_transfer_csv_has_the_numbers_unrounded(reports):
    _, _, root = reports
    csv = pd.read_csv(root / "after" / "transfer.csv").set_index("variant")
    lars, tv = csv.loc["lars_warmup_bs1024"], csv.loc["tvlars_bs1024"]
    assert (lars["predicted"], lars["low"], lars["high"], lars["slope"]) == (2.45, 1.95, 3.08, 0.62)
    assert (lars["rule_linear"], lars["rule_sqrt"], lars["n_points"], lars["batch_sizes"]) == (3.0, 2.1213, 3, "256;512")
    assert lars["found"] == pytest.approx(2.83) and lars["ratio"] == pytest.approx(2.83 / 2.45)
    assert bool(lars["inside"]) and lars["found_by"] == "confirm" and lars["study"] == "known-study"
    assert tv["found"] == pytest.approx(0.0012345) and bool(tv["inside"]) and pd.isna(tv["rule_linear"])


def test_each_fit_has_its_figure_after_the_section(reports):
    _, _, root = reports
    out = root / "after"
    block = _block((out / "table.md").read_text(), TRANSFER_HEADING)
    links = re.findall(r"^!\[(.+)\]\((.+)\)\n\n\*(.+)\*$", block, re.M)
    assert [link for _, link, _ in links] == ["figures/transfer_lars_warmup_bs1024_lr.png",
                                              "figures/transfer_tvlars_bs1024_lam.png"]
    for alt, link, caption in links:
        assert alt == caption and "log-log" in caption and "\n" not in caption
        image = matplotlib.image.imread(out / link)
        for color in ("C0", "C1", "C3"):  # the points and fit, the prediction's bar, the found value's star
            assert _pixels(image, color) > 50, (link, color)
    assert _pixels(matplotlib.image.imread(out / links[0][1]), "C2") > 50  # the linear rule, lr only
    assert _pixels(matplotlib.image.imread(out / links[1][1]), "C2") == 0  # none for λ
    html = (out / "table.html").read_text()
    assert html.index(f"<h2>{TRANSFER_HEADING}</h2>") < html.index('src="figures/transfer_lars_warmup_bs1024_lr.png"')
    assert TRANSFER_HEADING.replace("_", r"\_") in (out / "table.tex").read_text()


def _pixels(image, color: str) -> int:
    """How many pixels of `image` are `color`."""
    return int((abs(image[..., :3] - matplotlib.colors.to_rgb(color)).max(axis=-1) < 0.02).sum())


def test_a_store_without_the_artifact_reports_as_before(reports):
    _, _, root = reports
    before, after = (root / "before" / "table.md").read_text(), (root / "after" / "table.md").read_text()
    assert TRANSFER_HEADING not in before and not (root / "before" / "transfer.csv").exists()
    assert not list((root / "before" / "figures").glob("transfer_*"))
    assert after.replace(f"\n## {TRANSFER_HEADING}" + _block(after, TRANSFER_HEADING), "") == before
    assert (root / "before" / "table.html").read_text().count("<h2>") + 1 == (
        root / "after" / "table.html").read_text().count("<h2>")


def test_transfers_load_from_the_parent_runs_that_have_one(reports):
    uri, parent, _ = reports
    client = MlflowClient(uri)
    parents = [client.get_run(parent)]
    loaded = transfer_view.load_transfers(client, parents)
    assert [t["fits"] for t in loaded] == [TRANSFER["fits"]] and loaded[0]["study_run_id"] == parent
    assert [f["study"] for f in transfer_view.all_fits(loaded)] == ["known-study"] * 2


def test_without_a_confirm_stage_the_found_value_is_the_best_search_trials(reports, tmp_path):
    uri, parent, _ = reports
    trials = collect(MlflowClient(uri), "staged").trials
    search = trials[trials["stage"] == "search"]
    fit = {**LARS_FIT, "variant": "lars_warmup_bs512", "target_batch": 512, "study_run_id": parent}
    assert transfer_view.found(fit, search) == (2.0, "search")  # lr=2: validation 70 of 70, 67, 65, 39
    row = transfer_view.transfer_table([fit], search).iloc[0]
    assert (row["found"], row["inside"], row["found / predicted"]) == ("2 (search)", "yes", pytest.approx(2 / 2.45))
    outside = transfer_view.transfer_table([{**fit, "low": 2.1, "high": 2.9}], search).iloc[0]
    assert outside["inside"] == "no"
    value, by = transfer_view.found({**fit, "study_run_id": "another study"}, trials)  # not this study's variant
    assert math.isnan(value) and by == ""
    drawn = transfer_view.transfer_fit([fit, fit], search, tmp_path)  # the same variant and key twice: two files
    assert [f.path.name for f in drawn] == ["transfer_lars_warmup_bs512_lr.png", "transfer_lars_warmup_bs512_lr_2.png"]
