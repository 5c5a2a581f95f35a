"""`python -m study.transfer_bench`: what the batch-size transfer saves, measured at CPU scale.

Studies of LARS + warm-up (`transfer_lars`) at batch 128, 256 and 512 first, without early stopping
(`SOURCE_SETS`); then the batch-1,024 study run `--repeats` times seeded by the transfer from them and as many
times unseeded (`--transfer-from none`), in rounds (seeded, unseeded with the same seed), each with the same
trial budget. A round's seed is its searches' (the Optuna sampler's) alone: every study trains with seed
`OBJECTIVE_SEED` and holds out the same validation images (`--set seed=… --set split_seed=…`), so all searches
are judged on one objective and the goal below is a value each of them could reach. (Letting `--seed` move the
training seed and the split too, as the first runs did, put 19.8–26.2 between the rounds' final bests: the
goal, a mean over those objectives, was out of reach of some rounds whatever they searched.) For each 1,024
study: the trial-epochs spent, in the order their validation top-1 was reported, until the search's best so far is
within `--within` points of the unseeded searches' final best (mean over them); a study that never gets
there counts all it ran. Prints the seeded/unseeded ratio of those means with a bootstrap interval and
writes the table (`--out`, markdown). Also, per round: the trial-epochs each of the pair spent to reach
within `--within` points of that round's unseeded final best (the unseeded one always gets there: it is
its own best). And pooled: to within `--within` points of the best final any unseeded search reached. A
`--storage` that holds some of these studies already goes on from them (the sources once, then the rounds up to
`--repeats`); `--report-only` runs nothing and reads them again.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from optim.checks import count_arg
from reports.collect import find_parents
from search_spaces.cpu import TRANSFER_LARS
from study.mlflow_store import default_tracking_uri
from study.storage import Location
from trainables.records import PARENT_TAG, STUDY_WALL_METRIC

SPACE = "transfer_lars"
SOURCES, TARGET = (128, 256, 512), 1024
SOURCE_EXPERIMENT, SEEDED, UNSEEDED = "transfer-sources", "transfer-seeded", "transfer-unseeded"
TARGET_MET = 0.5  # seeded / unseeded trial-epochs, met only by the whole interval
BOOTSTRAP = 10_000
OBJECTIVE_SEED = 0  # every study's training seed and validation split (the rounds vary the sampler's seed)
# The sources are searched to the full budget, as finished earlier studies: ASHA's first rung (epoch 2, just after the
# 1-epoch warm-up) stopped their high learning rates before they overtook (with 5,000 training images, commit 50539d9:
# at batch 512, lr 9.47, 4.74 and 2.80 stopped at 14–15% val top-1 while 1.73 went on to 26.5%; run to the end they
# reach 31.3, 30.3 and 31.6%), so the fit extrapolated optima biased low: it predicted 1.48 at batch 1,024, where 9.5
# reached 29.0% and 1.48 19.0%.
SOURCE_SETS = (f"grace_period={TRANSFER_LARS.fixed['epochs']}",)


@dataclass
class Search:
    """One target study: its val top-1 reports in time order, and when it got within reach of the goal."""

    experiment: str
    study: str
    seed: int
    wall_s: float
    vals: list[float]  # every reported validation top-1 of its trials, oldest first (one per trial-epoch)

    @property
    def final_best(self) -> float:
        return max(self.vals)

    def epochs_to(self, goal: float) -> tuple[int, bool]:
        """Trial-epochs until the best so far reaches `goal` (all of them, False, if it never does)."""
        best = -np.inf
        for spent, value in enumerate(self.vals, 1):
            best = max(best, value)
            if best >= goal:
                return spent, True
        return len(self.vals), False


def run_study(storage: Path, experiment: str, batch: int, seed: int, transfer: str, samples: int, log: Path,
              sets: tuple[str, ...] = ()) -> float:
    """One study of `SPACE` at `batch` (a subprocess, as a user runs it), with `--set` for each of `sets`; its
    wall seconds."""
    cmd = [sys.executable, "-m", "study.run", "--space", SPACE, "--storage", str(storage), "--experiment", experiment,
           "--set", f"batch_size={batch}", "--set", f"seed={OBJECTIVE_SEED}",
           "--set", f"split_seed={OBJECTIVE_SEED}", "--seed", str(seed), "--transfer-from", transfer,
           "--num-samples", str(samples), *(arg for item in sets for arg in ("--set", item))]
    started = time.time()
    with log.open("w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        sys.exit(f"error: {' '.join(cmd)} exited {code}; its log: {log}")
    return time.time() - started


def reports_in_order(client: MlflowClient, exp_id: str, parent: str) -> list[float]:
    """Every trial's validation top-1 reports of one study, in the order they were logged."""
    runs = client.search_runs([exp_id], f"tags.`{PARENT_TAG}` = '{parent}'", max_results=10_000)
    points = [(m.timestamp, m.step, m.value) for run in runs for m in client.get_metric_history(run.info.run_id, "val_top1")
              if m.step >= 1]
    return [value for _, _, value in sorted(points)]


def searches(client: MlflowClient, experiment: str) -> list[Search]:
    """The experiment's studies, oldest first (the rounds' seeds 1, 2, …), with their wall time as recorded."""
    exp_id, parents = find_parents(client, experiment)
    return [Search(experiment, p.info.run_name, seed, p.data.metrics.get(STUDY_WALL_METRIC, float("nan")),
                   reports_in_order(client, exp_id, p.info.run_id)) for seed, p in enumerate(parents, 1)]


def ratio_interval(seeded: list[int], unseeded: list[int], rng: np.random.Generator,
                   paired: bool = False) -> tuple[float, float, float]:
    """mean(seeded) / mean(unseeded) and its 95% bootstrap interval (each side resampled on its own, or the
    rounds resampled together when `paired`)."""
    a, b = np.array(seeded, float), np.array(unseeded, float)
    pick = rng.integers(0, len(a), (BOOTSTRAP, len(a)))
    draws = a[pick].mean(1) / b[pick if paired else rng.integers(0, len(b), (BOOTSTRAP, len(b)))].mean(1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return a.mean() / b.mean(), float(low), float(high)


def ratio_text(name: str, seeded: list[int], unseeded: list[int], paired: bool) -> str:
    ratio, low, high = ratio_interval(seeded, unseeded, np.random.default_rng(0), paired)
    verdict = "met by the whole interval" if high <= TARGET_MET else "not met by the whole interval"
    return (f"{name}: seeded {seeded}, unseeded {unseeded}; ratio seeded/unseeded {ratio:.2f} 95% bootstrap "
            f"[{low:.2f}, {high:.2f}] (target <= {TARGET_MET}: {verdict})")


def fit_lines(client: MlflowClient, experiment: str) -> list[str]:
    """The transfer's fit as the seeded studies recorded it (the first one's)."""
    _, parents = find_parents(client, experiment)
    params = parents[0].data.params
    keys = sorted(k for k in params if k.startswith("transfer."))
    return [f"- `{k}` = {params[k]}" for k in keys]


def table(seeded: list[Search], unseeded: list[Search], goal: float, within: float) -> list[str]:
    lines = ["| study | transfer | seed | trial-epochs to goal | reached | to its round's unseeded best | "
             "trial-epochs run | final best val top-1 | wall (s) |", "|---|---|---:|---:|:---:|---:|---:|---:|---:|"]
    for search, kind, pair in [(s, "seeded", u) for s, u in zip(seeded, unseeded)] + [(u, "unseeded", u) for u in unseeded]:
        spent, reached = search.epochs_to(goal)
        paired, got = search.epochs_to(pair.final_best - within)
        lines.append(f"| {search.study} | {kind} | {search.seed} | {spent} | {'yes' if reached else 'no'} | "
                     f"{paired}{'' if got else ' (not reached)'} | {len(search.vals)} | {search.final_best:.2f} | "
                     f"{search.wall_s:.0f} |")
    return lines + ["", f"Goal: validation top-1 ≥ {goal:.2f} (the unseeded searches' mean final best less {within} points)."]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m study.transfer_bench", description=__doc__.splitlines()[0])
    p.add_argument("--storage", default="results-transfer-bench", help="the studies' storage (default ./results-transfer-bench)")
    p.add_argument("--repeats", type=count_arg, default=10, help="seeded and unseeded 1,024 studies each (default 10)")
    p.add_argument("--source-samples", type=count_arg, default=12, help="search trials of each source study (default 12)")
    p.add_argument("--samples", type=count_arg, default=10, help="search trials of each 1,024 study (default 10)")
    p.add_argument("--within", type=float, default=0.5, help="points below the unseeded final best (default 0.5)")
    p.add_argument("--out", type=Path, help="write the markdown table here (e.g. docs/results/transfer_lars.md)")
    p.add_argument("--report-only", action="store_true", help="run nothing: read the studies in --storage again")
    return p.parse_args(argv)


def studies_in(storage: Path, experiment: str) -> int:
    """How many studies `experiment` holds in the bench's store already (0 without a store)."""
    if not (storage / "mlflow.db").is_file():
        return 0
    client = MlflowClient(default_tracking_uri(Location.of(storage)))
    return len(find_parents(client, experiment)[1]) if client.get_experiment_by_name(experiment) else 0


def run_all(storage: Path, args: argparse.Namespace) -> None:
    """The source studies, then the rounds of seeded and unseeded target studies (those not run already)."""
    logs = storage / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for batch in SOURCES[studies_in(storage, SOURCE_EXPERIMENT):]:
        wall = run_study(storage, SOURCE_EXPERIMENT, batch, 0, "none", args.source_samples, logs / f"source-{batch}.log",
                         SOURCE_SETS)
        print(f"source study at batch {batch}: {wall:.0f} s", flush=True)
    for seed in range(1, args.repeats + 1):  # rounds: the machine's drift touches both kinds alike
        for experiment, transfer in ((SEEDED, SOURCE_EXPERIMENT), (UNSEEDED, "none")):
            if studies_in(storage, experiment) >= seed:  # this round's study of this kind ran already
                continue
            wall = run_study(storage, experiment, TARGET, seed, transfer, args.samples, logs / f"{experiment}-{seed}.log")
            print(f"{experiment} study, seed {seed}: {wall:.0f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    storage = Path(args.storage).resolve()
    if not args.report_only:
        run_all(storage, args)
    client = MlflowClient(default_tracking_uri(Location.of(storage)))
    seeded, unseeded = (searches(client, e) for e in (SEEDED, UNSEEDED))
    goal = statistics.mean(s.final_best for s in unseeded) - args.within
    summary = ratio_text(f"transfer: trial-epochs to within {args.within} points of the unseeded searches' mean final "
                         "best", [s.epochs_to(goal)[0] for s in seeded], [s.epochs_to(goal)[0] for s in unseeded], False)
    per_round = ratio_text(f"per round: trial-epochs to within {args.within} points of that round's unseeded final best",
                           [s.epochs_to(u.final_best - args.within)[0] for s, u in zip(seeded, unseeded)],
                           [u.epochs_to(u.final_best - args.within)[0] for u in unseeded], True)
    best = max(u.final_best for u in unseeded)
    pooled = ratio_text(f"pooled: trial-epochs to within {args.within} points of the best final any unseeded search "
                        f"reached ({best:.2f}); one that never gets there counts all it ran, a lower bound on its cost",
                        [s.epochs_to(best - args.within)[0] for s in seeded],
                        [u.epochs_to(best - args.within)[0] for u in unseeded], False)
    print(summary, per_round, pooled, sep="\n")
    lines = ["# Batch-size transfer at CPU scale: `python -m study.transfer_bench`", "",
             f"Sources: `{SPACE}` at batch {', '.join(map(str, SOURCES))} ({args.source_samples} search trials each, "
             f"`--set {' --set '.join(SOURCE_SETS)}`: no early stopping); "
             f"target batch {TARGET}: {args.repeats} seeded and {args.repeats} unseeded searches of {args.samples} "
             "trials each, in rounds (seeded, then unseeded with the same sampler seed); every study trains with "
             f"seed {OBJECTIVE_SEED} and validates on the same held-out images.", "",
             "The fit the seeded studies enqueued (parent-run params):", "", *fit_lines(client, SEEDED), "",
             *table(seeded, unseeded, goal, args.within), "", f"**{summary}**", "", per_round, "", pooled]
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
