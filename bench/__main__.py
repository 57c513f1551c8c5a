"""Run the benchmarks and regenerate docs/benchmarks.md.

``python -m bench [NAME...] [--quick] [--results-dir DIR] [--doc FILE]``

Every ``bench/bench_<name>.py`` with ``run(quick: bool = False) -> dict`` and
``markdown(results) -> str`` is a benchmark (or only the NAMEs given, with or without the
``bench_`` prefix). Each run is stored as ``<results-dir>/<name>.json`` with the date, the command,
the machine's cores, the load average before and after, and the Python version; the Markdown
document is then rebuilt from *all* stored results, so running one benchmark keeps the others'
sections.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import shlex
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import report

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
DEFAULT_RESULTS = BENCH_DIR / "results"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"
# The order of sections in the document (others follow alphabetically).
ORDER = ("index", "snapshot", "fanout", "propagation", "resume", "evaluator", "agent", "topologies", "dataplane")

log = logging.getLogger("bench")


def available() -> list[str]:
    """Benchmark names found in bench/, in document order (modules are imported lazily by :func:`load`)."""
    return sorted((p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py")), key=_order)


def _order(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


def load(name: str) -> ModuleType:
    module = importlib.import_module(f"bench.bench_{name}")
    for attr in ("run", "markdown"):
        if not callable(getattr(module, attr, None)):
            raise SystemExit(f"bench/bench_{name}.py has no {attr}() function; it is not a benchmark module")
    return module


def run_one(name: str, quick: bool, results_dir: Path, command: str) -> dict[str, Any]:
    module = load(name)
    before = report.load_average()
    started = time.time()
    log.info("Running benchmark %s%s", name, " (quick)" if quick else "")
    results = module.run(quick=quick)
    record = {
        "name": name,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "quick": quick,
        "seconds": round(time.time() - started, 1),
        **report.machine(),
        "load_average_before": before,
        "results": results,
    }
    record["load_average_after"] = record.pop("load_average")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info("Benchmark %s done in %.0fs", name, record["seconds"])
    return record


def stored(results_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            log.warning("Skipping unreadable result %s: %s", path, e)
    return sorted(records, key=lambda r: _order(r.get("name", "")))


def render(records: list[dict[str, Any]], command: str) -> str:
    """The whole benchmarks document from stored results."""
    facts = report.machine()
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Benchmarks",
        "",
        f"Generated {now} by `{command}` on a machine with {facts['cores']} cores "
        f"(Python {facts['python']}, {facts['platform']}). The machine is shared: every section gives the "
        "load average (1, 5, 15 min) before and after its run. Figures are medians of several runs; ratios "
        "compare runs made side by side in the same process and the same minute. Regenerate with `make bench` "
        "(or `python -m bench NAME` for one section; `--quick` for small shapes).",
        "",
        "## Summary",
        "",
    ]
    summary = []
    for r in records:
        for t in r["results"].get("targets", []):
            summary.append((r["name"], t["name"], t["target"], report.measured(t), report.verdict(t)))
    out += [report.table(("benchmark", "target", "aim", "measured", ""), summary), ""]
    for r in records:
        name = r["name"]
        try:
            body = load(name).markdown(r["results"])
        except Exception:  # a module that cannot render its old results must not lose the others
            log.exception("Rendering %s failed", name)
            body = "Rendering failed:\n\n```\n" + traceback.format_exc() + "```"
        quick = " — **quick shapes, not the targets' shapes**" if r.get("quick") else ""
        out += [
            body.rstrip(),
            "",
            f"_Run {r['date']} with `{r['command']}`{quick}: {r['seconds']} s, {r['cores']} cores, "
            f"load average {r['load_average_before']} before, {r['load_average_after']} after, "
            f"Python {r['python']}._",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test, not the targets)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="where <name>.json go")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="the Markdown document to regenerate")
    parser.add_argument("--verbose", action="store_true", help="show the tracker's own INFO logs")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:
        logging.getLogger("kube_ip_tracker").setLevel(logging.WARNING)
    names = available()
    if args.list:
        print("\n".join(names))
        return 0
    wanted = [n.removeprefix("bench_").removesuffix(".py") for n in args.names] or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    failed = []
    for name in wanted:
        try:
            run_one(name, args.quick, args.results_dir, command)
        except Exception:
            log.exception("Benchmark %s failed; its previous result (if any) is kept", name)
            failed.append(name)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(render(stored(args.results_dir), command))
    log.info("Wrote %s", args.doc)
    if failed:
        log.error("Failed: %s", ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
