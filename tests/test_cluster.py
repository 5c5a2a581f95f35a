"""What the cluster can hold decides a study's feasibility and its default concurrency."""

from __future__ import annotations

import pytest
import ray

from study.cluster import TrialShape, fit_trials, ray_nodes, trials_at_once
from study.errors import InputError
from study.plan import make_plan
from study.run import fit_to_cluster


def test_trials_at_once_packs_workers_per_node():
    gpu_box = {"CPU": 16.0, "GPU": 8.0}
    assert trials_at_once([gpu_box], TrialShape(2, 1, 1)) == 4  # 8 GPUs, 2 workers × 1 GPU
    assert trials_at_once([gpu_box], TrialShape(1, 4, 1)) == 4  # CPU-bound: 16 CPUs / 4
    assert trials_at_once([gpu_box, gpu_box], TrialShape(3, 1, 1)) == 5  # 16 workers' places / 3
    assert trials_at_once([{"CPU": 8.0}], TrialShape(1, 1, 0)) == 8
    assert trials_at_once([{"CPU": 64.0}], TrialShape(1, 4, 1)) == 0


def test_a_trial_that_never_fits_names_the_missing_gpu_and_the_fixes():
    with pytest.raises(InputError) as err:
        fit_trials([{"CPU": 2.0, "GPU": 0.0}], TrialShape(1, 4, 1), "this machine")
    assert str(err.value).startswith("one trial needs 1 worker(s) × (4 CPU + 1 GPU), but this machine has "
                                     "1 node(s), 2 CPU, 0 GPU in all: no GPU for it.")
    assert "--set gpus_per_worker=0" in str(err.value) and "--set workers=N" in str(err.value)
    assert fit_trials([{"CPU": 2.0}], TrialShape(1, 4, 1), "x", wait=True) == 1  # --wait-for-resources


def test_default_concurrency_is_what_a_real_ray_cluster_holds(tmp_path):
    ray.init(address="local", num_cpus=8, num_gpus=4, include_dashboard=False, log_to_driver=False)
    try:
        assert ray_nodes()[0]["GPU"] == 4.0
        plan = make_plan("tvlars_bs16k", {"workers": 2, "cpus_per_worker": 1}, data_dir=str(tmp_path))
        fit_to_cluster(plan, "a test cluster", wait=False)
        assert plan.capacity == 2 and plan.concurrency == 2  # 4 GPUs / (2 workers × 1 GPU)
        pinned = make_plan("tvlars_bs16k", {"workers": 2, "cpus_per_worker": 1, "max_concurrent": 1},
                           data_dir=str(tmp_path))
        fit_to_cluster(pinned, "a test cluster", wait=False)
        assert pinned.concurrency == 1  # --set max_concurrent=N still decides
        with pytest.raises(InputError, match="but the Ray cluster at a test cluster has 1 node"):
            fit_to_cluster(make_plan("tvlars_bs16k", {"workers": 8, "cpus_per_worker": 1}, data_dir=str(tmp_path)),
                           "a test cluster", wait=False)
        with pytest.raises(ValueError, match="batch_size: the global batch 16384 is not divisible by 5 workers"):
            make_plan("tvlars_bs16k", {"workers": 5, "cpus_per_worker": 1}, data_dir=str(tmp_path))
    finally:
        ray.shutdown()
