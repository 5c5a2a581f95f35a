"""`python -m reports.table --experiment NAME`: the comparison table (markdown on stdout), the other
formats, parquet exports and figures; all logged to the study's parent MLflow run under `report/`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reports.build import FORMATS, METRICS, build_report
from reports.collect import ReportError
from trainables.environment import set_library_defaults
from trainables.folders import unwritable
from trainables.records import SQLITE_PREFIX, sqlite_file

DEFAULT_STORE = f"{SQLITE_PREFIX}results/mlflow.db"  # study.run's default store, from the folder it ran in


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reports.table", description=__doc__)
    p.add_argument("--experiment", required=True, help="MLflow experiment (study.run's --experiment; default there: the space name)")
    p.add_argument("--tracking-uri", default=DEFAULT_STORE, help=f"MLflow store (default: study.run's, {DEFAULT_STORE})")
    p.add_argument("--metric", default="best", choices=METRICS, help="test top-1 at the epoch of best validation top-1, or at the final epoch")
    p.add_argument("--format", default="md", help=f"comma-separated, of {', '.join(FORMATS)} (markdown is always written)")
    p.add_argument("--study", help="only this study: its parent run id or name (default: every study in the experiment)")
    p.add_argument("--out", type=Path, help="output folder (default: reports-out/<experiment>)")
    p.add_argument("--no-log", action="store_true", help="do not log the files to MLflow")
    p.add_argument("--doc", type=Path, help="also write a results document (markdown: how the studies ran, the "
                                            "report, its figures, and the reading kept in <doc>.reading.md)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    set_library_defaults()
    args = parse_args(argv)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    out = args.out or Path("reports-out") / args.experiment
    db = sqlite_file(args.tracking_uri)
    if db is not None:
        if not db.is_file():  # MLflow would silently create an empty store
            print(f"error: --tracking-uri: no MLflow database at {db.resolve()}", file=sys.stderr)
            return 2
    for flag, folder in (("--out", out), ("--doc", args.doc and args.doc.parent)):
        why = folder and unwritable(folder)
        if why:
            print(f"error: {flag}: cannot write to {folder} ({why})", file=sys.stderr)
            return 2
    try:
        report = build_report(args.tracking_uri, args.experiment, out, args.metric, ("md", *formats), args.study,
                              log=not args.no_log, doc=args.doc,
                              command="python -m reports.table " + " ".join(sys.argv[1:] if argv is None else argv))
    except (ReportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.markdown)
    print(f"wrote {len(report.files)} files to {out}" + (f"; logged to MLflow run {report.logged_to} under report/"
                                                        if report.logged_to else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
