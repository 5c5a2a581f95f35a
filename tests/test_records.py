"""The contract between the packages is written once (trainables/records.py): no package spells a status, a
record file's name or a trial run's tag again, and reports derive what is a configuration from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainables import records
from trainables.config import TrialConfig
from trainables.records import TrialSettings, TrialStatus, not_configuration
from subprocs import REPO

PACKAGES = ("optim", "trainables", "search_spaces", "study", "reports")
HOME = REPO / "trainables" / "records.py"
# Every name the contract owns whose literal must not stand anywhere else in the product's code.
OWNED = sorted({*(s.value for s in TrialStatus), records.STATE_FILE, records.HISTORY_FILE, records.TELEMETRY_FILE,
                records.PARENT_TAG, records.TRIAL_ID_TAG, records.NODE_TAG, records.LR_EFFECTIVE_KEY,
                records.MICRO_CHOSEN_KEY, records.DRIVER_CPU_METRIC})


def copies_of(literal: str, root: Path = REPO) -> list[str]:
    """`file:line` of every quoted copy of `literal` in the product's packages, outside its home."""
    quoted = re.compile(rf"""(['"]){re.escape(literal)}\1""")
    return [f"{path.relative_to(root)}:{n}" for package in PACKAGES for path in sorted((root / package).rglob("*.py"))
            if path.resolve() != HOME.resolve()
            for n, line in enumerate(path.read_text().splitlines(), 1) if quoted.search(line)]


@pytest.mark.parametrize("literal", OWNED)
def test_no_package_spells_a_name_the_records_own(literal):
    assert copies_of(literal) == [], f"import it from trainables.records instead of spelling {literal!r}"


def test_the_grep_finds_a_copy(tmp_path):
    """The test above can fail: a re-added literal is found."""
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "x.py").write_text('status = "stopped_by_asha"\nname = \'history.json\'\n')
    assert copies_of("stopped_by_asha", tmp_path) == ["study/x.py:1"]
    assert copies_of("history.json", tmp_path) == ["study/x.py:2"]


def test_records_import_nothing_of_ours():
    ours = [line for line in HOME.read_text().splitlines()
            if re.match(rf"\s*(from|import) ({'|'.join(PACKAGES)})\b", line)]
    assert ours == []


def test_what_is_not_a_configuration_comes_from_the_field_metadata():
    from reports.tables import NOT_CONFIG

    assert not_configuration() <= NOT_CONFIG
    assert {"seed", "split_seed", "device", "threads", "data_dir"} <= not_configuration()
    assert not {"lr", "batch_size", "optimizer", "epochs", "model"} & not_configuration()
    assert issubclass(TrialConfig, TrialSettings)
