"""`optim` is pure PyTorch: importing it pulls in neither Ray nor MLflow."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_optim_imports_no_ray_or_mlflow():
    code = ("import sys, optim, optim.bench; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow')); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    for path in (ROOT / "optim").glob("*.py"):
        text = path.read_text()
        assert "import ray" not in text and "import mlflow" not in text, path
