"""rollgraph's benchmarks: what rollout and ReflexFlow buy (quality) and what they cost (speed, memory).

``python -m bench.run_all [--quick]`` (``make bench`` / ``make bench-quick``) runs them all; each module also
runs alone (``python -m bench.quality --mode quick``). Modes: ``tiny`` (the smoke test,
tests/test_bench_smoke.py), ``quick`` (a few minutes), ``full`` (about 10-30 minutes on 2 CPU cores,
depending on load). Results: ``bench/results/<name>.md`` and ``.json``, and ``bench/results/all.md``.

* ``quality``       sample quality, diversity, adherence and the exposure-bias probe on digits (bench/quality.py)
* ``overhead``      the graph runner against a hand-written training loop (bench/overhead.py)
* ``rollout_cost``  rollout step cost against teacher forcing and the ideal; batched vs per-sample (bench/rollout_cost.py)
* ``memory``        peak memory with and without rollout (bench/memory.py)
"""
