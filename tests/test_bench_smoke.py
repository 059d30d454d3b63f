"""Every benchmark runs end to end in its tiny mode and produces the expected tables with finite numbers.

No wall-clock assertions: timings live in the benchmark results, not in tests.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench import common, memory, overhead, presets_quality, quality, rollout_cost, run_all

EXPECTED = {
    "overhead": {"Runner overhead": ["model", "batch", "runner ms/step", "in stages ms", "hand loop ms/step", "ratio",
                                     "overhead %", "mean loss runner / loop", "bit-identical losses"],
                 "Where the step time goes": ["model", "batch size", "batch", "noise", "predict", "loss", "optimize",
                                              "outside stages"]},
    "rollout_cost": {
        "Rollout cost": ["max_step_offset", "sampler", "extra evals / sample", "step ms", "measured ×TF", "ideal ×TF (3-fwd)",
                         "measured / ideal", "ideal ×TF (measured fwd)"],
        "Measured model cost": ["forward ms", "forward + backward ms", "(fwd + bwd) / fwd", "TF step ms", "TF step / fwd"],
        "Batched rollout": ["batch", "batched ms", "per-sample loop ms", "speed-up", "max |difference|"],
        "Rollout call batching": ["max_step_offset", "sampler", "shrinking ms", "balanced ms", "balanced / shrinking",
                                  "max |difference|"],
        "Where the rollout's time goes": ["max_step_offset", "sampler", "calls / step", "sample-forwards / step",
                                          "stage ms", "model calls ms", "solver + stage ms", "forwards at t_fwd(B)/B ms",
                                          "forwards at own size ms", "model calls / own size", "best measured / ideal"],
        "Rollout cost on a compute-bound model": ["max_step_offset", "sampler", "batching", "extra evals / sample",
                                                  "step ms", "measured ×TF", "ideal ×TF (measured fwd)", "measured / ideal"],
    },
    "memory": {"Peak memory": ["rollout", "step peak MB", "× teacher forcing", "step peak MB, oneDNN off",
                               "× TF, oneDNN off", "process peak MB", "CUDA step peak MB"]},
    "quality": {
        "Pretraining on digits, 4 steps": ["variant", "steps", "FD ↓", "Δ FD", "adherence", "Δ adherence", "diversity",
                                           "Δ diversity", "NN dist", "Δ NN dist", "probe var. err ↓", "Δ var. err",
                                           "probe SWD ↓", "Δ SWD", "forwards / step", "time / step ×TF"],
        "Few-shot fine-tune": None,
        "Probe per level, 4 steps: variance": None, "Probe per level, 4 steps: sliced": None,
        "Noise floor": None,
    },
    "presets_quality": {"Shipped presets on the quickstart UNet": None, "Shipped presets: per-seed FD": None},
}
LABELS = {"model", "rollout", "variant", "sampler", "preset", "batching"}  # text columns


def numbers(cell) -> list[float]:
    """The numbers in a cell: a number, 'mean ± std', 'a / b', or nothing for a label or '–'."""
    if isinstance(cell, bool) or cell in ("–", None):
        return []
    if isinstance(cell, (int, float)):
        return [float(cell)]
    parts = [p for p in str(cell).replace("±", "/").replace("[", "/").replace("]", "").replace(",", "/").split("/") if p.strip()]
    return [float(p) for p in parts]


def check(name: str, tables: list[common.Table]) -> None:
    expected = EXPECTED[name]
    assert len(tables) == len(expected), [t.title for t in tables]
    for table, (prefix, columns) in zip(tables, expected.items(), strict=True):
        assert table.title.startswith(prefix), table.title
        if columns is not None:
            assert table.columns == columns
        assert table.rows, table.title
        for row in table.rows:
            assert len(row) == len(table.columns)
            for column, cell in zip(table.columns, row, strict=True):
                if column in LABELS or (column == "std" and len(row) == 3):
                    continue  # labels; a single seed has no spread
                for value in numbers(cell):
                    assert math.isfinite(value), (table.title, column, cell)
        assert table.to_markdown().count("\n|") == len(table.rows) + 2


@pytest.mark.parametrize("module", [overhead, rollout_cost, memory, quality, presets_quality], ids=lambda m: m.__name__.split(".")[-1])
def test_benchmark_tiny_mode(module, tmp_path):
    name = module.__name__.split(".")[-1]
    tables = module.run("tiny", log=lambda *a: None)
    check(name, tables)
    md = common.write_results(name, tables, tmp_path, meta={"mode": "tiny"})
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["meta"]["mode"] == "tiny" and data["meta"]["cores"] >= 1 and len(data["tables"]) == len(tables)
    assert md.read_text().startswith(f"## {name}\n")


def test_run_all_writes_every_table(tmp_path, capsys):
    run_all.main(["--mode", "tiny", "--only", "overhead", "--out", str(tmp_path), "--jobs", "1"])
    out = capsys.readouterr().out
    assert "Runner overhead" in out and (tmp_path / "overhead.md").exists() and (tmp_path / "all.md").exists()


@pytest.mark.parametrize("family", ["bench_mlp", "unet2d"])
def test_the_trainer_computes_the_hand_written_loops_losses_bit_for_bit(family):
    """The overhead benchmark compares the same work: the real Trainer (graph, stages, hooks) and the loop written
    out by hand, interleaved step by step, give the same loss at every step, to the last bit."""
    from statistics import mean

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the kernels' reduction order may depend on the thread count: the same for both
    try:
        clock = overhead.Interleaved(overhead.HandLoop(overhead.config(family, 8, 8)))
        common.train(overhead.config(family, 8, 8), hooks=[clock])
    finally:
        torch.set_num_threads(threads)
    losses = [m["loss"] for m in clock.metrics]
    assert len(losses) == 8 and losses == clock.loop_losses
    assert len(set(losses)) == 8 and mean(losses[:2]) != mean(losses[-2:])  # it trains: the losses move


def test_take_turns_runs_one_participant_at_a_time_and_survives_a_failure():
    from bench.turns import take_turns

    log = []

    def turns(n):
        def fn(baton, name):
            for i in range(n):
                log.append((name, i))
                if i < n - 1:
                    baton.next_turn(name)
        return fn

    take_turns({"a": turns(3), "b": turns(3), "c": turns(1)})
    assert log == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]

    def fails(baton, name):
        raise ValueError("boom")

    log.clear()
    with pytest.raises(ValueError, match="boom"):
        take_turns({"a": turns(2), "bad": fails, "c": turns(2)})
    assert log == [("a", 0), ("c", 0), ("a", 1), ("c", 1)]  # the others finished their turns, no deadlock


def test_trainings_taking_turns_alternate_step_by_step():
    """Two real trainings in one process (bench/turns.py): step i of each runs before step i + 1 of either, and
    each TurnClock holds its own run's steps."""
    from bench.turns import TurnClock, take_turns

    order, clocks = [], {}

    class Order(TurnClock):
        def on_step_end(self, runner, metrics):
            order.append((self.name, metrics["step"]))
            super().on_step_end(runner, metrics)

    def training(batch):
        def fn(baton, name):
            clocks[name] = Order(baton, name, 3)
            common.train(overhead.config("bench_mlp", batch, 3), hooks=[clocks[name]])
        return fn

    take_turns({"small": training(4), "large": training(8)})
    assert order == [("small", 1), ("large", 1), ("small", 2), ("large", 2), ("small", 3), ("large", 3)]
    assert [m["step"] for m in clocks["large"].metrics] == [1, 2, 3] and all(t > 0 for t in clocks["large"].seconds)
