"""The local Ray starts beside a thread that imports the study driver's modules: the start must import nothing."""

import json
import sys

import pytest

from subprocs import assert_succeeds

# A study driver's state when its Ray starts: `study.run` imported, `import_ray_start` called.
START_IMPORTS = """
import json, sys
import ray, study.run
from trainables.environment import set_library_defaults
from trainables.local_ray import import_ray_start, init_local_ray
set_library_defaults()
import_ray_start()
before = set(sys.modules)
init_local_ray(8, dashboard=sys.argv[1] == "dashboard")
print(json.dumps(sorted(set(sys.modules) - before)))
ray.shutdown()
"""


@pytest.mark.parametrize("dashboard", ["dashboard", "no-dashboard"])
def test_ray_start_imports_nothing_after_import_ray_start(tmp_path, dashboard):
    """A Ray upgrade that imports a new module on start fails here, naming it: add it to `RAY_START_MODULES`."""
    done = assert_succeeds([sys.executable, "-c", START_IMPORTS, dashboard], tmp_path / "start.log", timeout=120)
    imported = json.loads(done.output.strip().splitlines()[-1])
    assert imported == [], f"ray.init imported {imported}: not in trainables.local_ray.RAY_START_MODULES"
