"""`optim` is pure PyTorch: importing it pulls in neither Ray nor MLflow."""

from __future__ import annotations

import pathlib
import sys

from subprocs import assert_succeeds

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_optim_imports_no_ray_or_mlflow(tmp_path):
    code = ("import sys, optim, optim.bench; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')); print(bad)")
    out = assert_succeeds([sys.executable, "-c", code], tmp_path / "imports.log", cwd=ROOT, timeout=120).output
    assert out.strip().splitlines()[-1] == "[]", out
    for path in (ROOT / "optim").glob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "import mlflow" not in text, path
