"""The report's verdicts, replayed from a real MLflow store (`known_store.STAGED`: 2 confirmed seeds per
optimizer at batch 512 and 1024) with the design its parent run records: numbers, verdict words and the
bound an open comparison leaves, first in the report and in the study's description."""

from __future__ import annotations

import math

import pytest
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from scipy import stats

from known_store import STAGED, build_store
from reports.build import build_report
from reports.sequential import ALPHA

WELCH_2_SEEDS = stats.t.ppf(1 - ALPHA / 2, 2) * math.sqrt(2.0)  # two seeds a side, each side's variance 2: dof 2


def _report(tmp_path, budget: dict[str, str]) -> tuple[str, str]:
    uri, parent = build_store(tmp_path, "staged", STAGED)
    MlflowClient(uri).log_batch(parent, params=[Param(f"budget.{k}", v) for k, v in budget.items()])
    report = build_report(uri, "staged", tmp_path / "out", formats=("md", "csv"))
    return report.markdown, MlflowClient(uri).get_run(parent).data.tags["mlflow.note.content"]


def _verdict_rows(markdown: str) -> dict[tuple[str, str], list[str]]:
    block = markdown.split("## Verdicts")[1].split("\n## ")[0]
    lines = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
    header = lines[0]
    return {(row[0], row[header.index("batch_size")]): row for row in lines[2:]}


def test_one_round_reads_each_comparison_with_the_welch_interval(tmp_path):
    markdown, description = _report(tmp_path, {"seeds": "2", "max_seeds": "2", "confirm": "1"})
    rows = _verdict_rows(markdown)
    assert set(rows) == {(c, b) for c in ("LARS: warm-up − none", "TVLARS − LARS + warm-up") for b in ("512", "1024")}
    low, high = 5.0 - WELCH_2_SEEDS, 5.0 + WELCH_2_SEEDS  # TVLARS (75, 77) − LARS + warm-up (70, 72) at 512
    row = rows[("TVLARS − LARS + warm-up", "512")]
    assert f"+5.00 [{low:+.2f}, {high:+.2f}]".replace("-", "−") in row and "open" in row
    assert "seeds = 2/2; look = 1/1" in markdown  # the same everywhere: said once, in the caption
    assert any(f"gaps between {low:+.2f} and {high:+.2f} points remain possible".replace("-", "−") in c for c in row)
    assert "Method: Welch 95% interval over 2 seeds per variant (one look)" in markdown
    assert description.index("## Verdicts") < description.index("## Test top-1")  # the description leads with them


def test_a_sequential_design_spends_alpha_and_says_which_look(tmp_path):
    markdown, _ = _report(tmp_path, {"seeds": "2", "max_seeds": "6", "seed_step": "2", "confirm": "1"})
    row = _verdict_rows(markdown)[("LARS: warm-up − none", "512")]  # (70, 72) − (60, 64): +9 at look 1 of 3
    se2 = (2 / 2, 8 / 2)  # variance / n of each side
    dof = sum(se2) ** 2 / (se2[0] ** 2 / 1 + se2[1] ** 2 / 1)  # Welch–Satterthwaite
    half = stats.t.ppf(1 - ALPHA * (2 / 6) ** 2 / 2, dof) * math.sqrt(sum(se2))  # look 1 spends α·(2/6)²
    assert f"+9.00 [{9 - half:+.2f}, {9 + half:+.2f}]".replace("-", "−") in row and "open" in row
    assert "look = 1/3" in markdown
    assert "group-sequential: looks at 2, 4, 6 seeds per variant" in markdown


def test_a_decided_comparison_names_the_better_row(tmp_path):
    markdown, _ = _report(tmp_path, {"seeds": "2", "max_seeds": "2", "confirm": "1", "practical_gap": "50"})
    row = _verdict_rows(markdown)[("TVLARS − LARS + warm-up", "1024")]  # (55, 59) − (60, 62): inside ±50
    assert "**no practical difference**" in row
    with pytest.raises(StopIteration):
        next(c for c in row if "remain possible" in c)
