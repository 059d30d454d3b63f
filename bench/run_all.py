"""Run every benchmark: ``python -m bench.run_all [--quick] [--only NAME ...]`` (``make bench`` / ``make bench-quick``).

Each benchmark prints its tables and writes ``bench/results/<name>.md`` and ``<name>.json``; this script
also writes ``bench/results/all.md`` (every table, with the machine and date), ready for the README.
Full mode is long: on 2026-11-30, on a shared 2-core machine, ``quality`` (~100 small models) took 68 minutes and
``presets_quality`` (9 quickstart UNets) 35; ``--quick`` runs the same code with fewer seeds and steps.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench import common, memory, overhead, presets_quality, quality, rollout_cost

BENCHMARKS = {"overhead": overhead, "rollout_cost": rollout_cost, "memory": memory, "quality": quality,
              "presets_quality": presets_quality}
PARALLEL = ("quality", "presets_quality")  # quality benchmarks may train several models at once; timing ones run alone


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes in all)")
    parser.add_argument("--mode", choices=common.MODES, help="tiny | quick | full (overrides --quick)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: steadier timings)")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="parallel training processes in the quality benchmark (timing benchmarks run alone)")
    parser.add_argument("--out", default=str(common.RESULTS_DIR), help="results folder")
    args = parser.parse_args(argv)
    mode = args.mode or ("quick" if args.quick else "full")
    common.set_threads(args.threads)
    info = common.machine_info()
    print(f"rollgraph benchmarks, mode {mode}: {common.machine_line(info)}")
    for name in args.only or list(BENCHMARKS):
        start = time.perf_counter()
        print(f"\n[{name}] running ...", flush=True)
        module = BENCHMARKS[name]
        kwargs = {"jobs": args.jobs} if name in PARALLEL else {}
        tables = module.run(mode, **kwargs)
        seconds = time.perf_counter() - start
        path = common.write_results(name, tables, args.out, meta={"mode": mode, "seconds": round(seconds)})
        common.print_tables(name, tables)
        print(f"[{name}] {seconds:.0f} s → {path}", flush=True)
    # every benchmark's latest tables, including those not re-run now (each file names its own date and mode)
    out = Path(args.out)
    sections = [(out / f"{name}.md").read_text() for name in BENCHMARKS if (out / f"{name}.md").exists()]
    (out / "all.md").write_text("# rollgraph benchmarks\n\n" + "\n".join(sections))
    print(f"\nall tables: {out / 'all.md'}")


if __name__ == "__main__":
    main()
