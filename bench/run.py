"""What `make bench` runs: the benchmarks, then the report.

    python bench/run.py [--results-dir DIR] [--md FILE] [--no-report] [PYTEST ARGS ...]

Runs `python -m pytest bench --benchmark-json=DIR/<machine-slug>.json` (DIR:
bench/results) and renders the JSON into bench/RESULTS.md (this machine's
section) and PNGs in DIR through bench/report.py. Any argument run.py does not
know goes to pytest, e.g.

    python bench/run.py -k small                    # a subset
    python bench/run.py -m "not sweep"              # without the sequence-length sweep
    python bench/run.py --benchmark-compare         # compare with the last autosaved run
    python bench/run.py --benchmark-compare-fail=median:10%

Every run is also autosaved by pytest-benchmark under .benchmarks/ (unless
--benchmark-save/--benchmark-autosave/--benchmark-disable is given, or
--no-autosave), which is what --benchmark-compare compares against.
The JSON is written to DIR/<slug>.tmp.json and moved into place only when the
run produced results, so a broken run never replaces the last good file.
Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, BENCH_DIR)
sys.path.insert(1, ROOT)


def _has_results(path):
    try:
        with open(path) as f:
            return bool(json.load(f).get("benchmarks"))
    except (OSError, ValueError):
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False, add_help=True)
    p.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"),
                   help="where the JSON and the PNGs go (default: bench/results)")
    p.add_argument("--md", default=os.path.join(BENCH_DIR, "RESULTS.md"),
                   help="markdown file the report updates (default: bench/RESULTS.md)")
    p.add_argument("--no-report", action="store_true", help="run the benchmarks only")
    p.add_argument("--no-autosave", action="store_true", help="do not autosave under .benchmarks/")
    args, pytest_args = p.parse_known_args(argv)

    import benchlib  # imports torch: after --help

    slug = benchlib.machine_slug()
    results_dir = os.path.abspath(args.results_dir)
    os.makedirs(results_dir, exist_ok=True)
    final = os.path.join(results_dir, f"{slug}.json")
    tmp = os.path.join(results_dir, f"{slug}.tmp.json")
    if os.path.exists(tmp):
        os.remove(tmp)

    cmd = [sys.executable, "-m", "pytest", os.path.join(BENCH_DIR), f"--benchmark-json={tmp}"]
    saving = ("--benchmark-save", "--benchmark-autosave", "--benchmark-disable", "--benchmark-skip")
    if not args.no_autosave and not any(a.split("=")[0] in saving for a in pytest_args):
        cmd.append("--benchmark-autosave")
    cmd += pytest_args
    print(f"run: machine {benchlib.machine_name()!r} -> {final}", flush=True)
    print("run: " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)

    if _has_results(tmp):
        os.replace(tmp, final)
        print(f"run: wrote {final}")
    else:
        if os.path.exists(tmp):
            os.remove(tmp)
        print(f"run: pytest (exit {rc}) produced no benchmark results; {final} left as it was",
              file=sys.stderr)
        return rc or 1

    if not args.no_report:
        import report

        report_rc = report.main([final, "--md", args.md, "--plots-dir", results_dir])
        rc = rc or report_rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
