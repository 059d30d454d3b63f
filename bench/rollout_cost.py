"""Rollout cost: a training step with rollout against teacher forcing, and against the ideal.

Ideal (what ``measured / ideal`` divides by): 1 + E·(t_fwd(B)/B) / t_step(TF), where E is the measured
number of extra sample-forwards per step (the rollout's ``rollout/model_evals``, plus ReflexFlow's clean
predictions ``reflexflow/clean_evals``), t_fwd(B)/B the cost of one sample-forward at the full batch B
(no_grad, eval mode, as the rollout runs it), measured in the same rounds as the step times, and
t_step(TF) the teacher-forcing step. For context, the older assumption of a 3-forward step gives
1 + E / (3·B) (column ``ideal ×TF (3-fwd)``).

Where the rollout's time goes: the rollout stage alone, its model calls timed one by one, against two references
built from the forward cost t_fwd(b) measured at every batch size b = 1..B in the same run: the ideal's
assumption (every sample-forward at t_fwd(B)/B) and the floor (each call at its own size, sum over calls of
t_fwd(b_call): what the calls cost on this device with no solver or stage around them). The rest of the stage
(solver arithmetic, gathers, eval-mode switching, logging) is "solver + stage". "best measured / ideal" is the
step's measured / ideal if the rollout cost exactly its floor: 1 + floor / t_step(TF) over the ideal.

Rollout cost on a compute-bound model: the first table's measurement, both call batchings, on a 10 M-parameter
UNet at 16×16 whose forward on this CPU costs about in proportion to its batch, unlike the tiny UNet's: whether
the rollout reaches its ideal where the ideal's assumption holds.

Timing: in a round, every configuration of a table trains in one process, taking turns step by step with the
others and with the forward-cost measurement (bench/turns.py), so a change of the machine's speed hits them all
alike; ratios are of the means over all rounds' timed steps.

Rollout call batching: the rollout stage alone with ``scheduled_sampling_batching`` shrinking vs balanced
(same samples, same k), taking turns call after call, and their max difference.

Batched rollout vs one sample at a time: the rollout stage on a batch against a loop that integrates
each sample alone with the same solver, path and model (what the reference trainer does), with the max
difference of their results.
"""

from __future__ import annotations

import time
from statistics import mean

import torch
from rollgraph.graph.context import RunContext
from rollgraph.stages.predict import model_fn_for
from rollgraph.stages.rollout import RolloutParams, ScheduledSamplingRollout, eval_mode
from rollgraph.stages.schedule import make_schedule
from rollgraph.stages.solvers import solve
from rollgraph.stages.types import NoisyInput, index_cond

from bench import common
from bench.common import Table
from bench.digits_eval import load_digits
from bench.overhead import TINY_UNET, build_model
from bench.overhead import config as base_config
from bench.turns import TurnClock, take_turns

# A UNet whose forward is compute-bound on a CPU (10 M parameters at 16×16: one sample costs about 2× alone, 1.1× in a
# half batch, what it costs in a full batch of 16), where the tiny one is dominated by a fixed cost per call.
COMPUTE_BOUND_UNET = {"block_out_channels": [64, 128, 256], "layers_per_block": 1,
                      "down_block_types": ["DownBlock2D"] * 3, "up_block_types": ["UpBlock2D"] * 3, "norm_num_groups": 8}

SETTINGS = {
    "tiny": {"family": "bench_mlp", "batch": 8, "offsets": [1, 2], "samplers": ["euler", "rk4"], "steps": 5, "warmup": 1,
             "rounds": 1, "loop_batches": [4], "reps": 1,
             "reflexflow_case": (2, "euler"),
             "larger": {"family": "unet2d", "architecture": TINY_UNET, "resolution": 8, "batch": 4, "offsets": [2],
                        "samplers": ["euler"], "balanced": ["euler"], "steps": 4, "warmup": 1, "rounds": 1}},
    "quick": {"family": "bench_mlp", "batch": 64, "offsets": [1, 5, 10], "samplers": ["euler", "unipc", "dpm", "rk4"],
              "steps": 12, "warmup": 2, "rounds": 2, "loop_batches": [16, 64], "reps": 2,
              "reflexflow_case": (5, "unipc"),
              "larger": {"family": "unet2d", "architecture": COMPUTE_BOUND_UNET, "resolution": 16, "batch": 16,
                         "offsets": [5], "samplers": ["unipc", "rk4"], "balanced": ["rk4"], "steps": 5, "warmup": 1,
                         "rounds": 1}},
    "full": {"family": "unet2d", "batch": 32, "offsets": [1, 5, 10], "samplers": ["euler", "unipc", "dpm", "rk4"],
             "steps": 12, "warmup": 2, "rounds": 3, "loop_batches": [16, 64], "reps": 3,
             "reflexflow_case": (5, "unipc"),
             "larger": {"family": "unet2d", "architecture": COMPUTE_BOUND_UNET, "resolution": 16, "batch": 16,
                        "offsets": [5, 10], "samplers": ["euler", "unipc", "dpm", "rk4"], "balanced": ["unipc", "rk4"],
                        "steps": 8, "warmup": 1, "rounds": 3}},
}


def rollout_config(s: dict, k: int, sampler: str, reflexflow: bool = False, batching: str = "shrinking") -> dict:
    cfg = base_config(s["family"], s["batch"], s["steps"])
    if "architecture" in s:
        cfg.update({"model_architecture": s["architecture"], "resolution": s["resolution"]})
    if k:
        cfg.update({"scheduled_sampling_max_step_offset": k, "scheduled_sampling_probability": 1.0,
                    "scheduled_sampling_sampler": sampler, "scheduled_sampling_reflexflow": reflexflow,
                    "scheduled_sampling_batching": batching})
    return cfg


def step_times(cfgs: dict, s: dict) -> tuple[dict, list[dict[str, float]]]:
    """Per configuration, per round: (mean CPU seconds per step, mean extra sample-forwards of the same steps); and
    the model's costs measured in every round (``model_cost_turns``). In a round every configuration trains in
    one process, all taking turns step by step (bench/turns.py), with the model-cost measurement taking its turns
    among them, so a change of the machine's speed hits them all alike (``versus_teacher_forcing`` compares them).
    Warm-up and the last step (which also runs the end-of-run nodes) are left out; k is drawn per step, so the
    extra forwards are averaged over exactly the timed steps."""
    rounds: dict = {key: [] for key in cfgs}
    costs = []
    timed = slice(s["warmup"], -1)  # clock.seconds[i] is step i + 1's
    for _ in range(s["rounds"]):
        clocks: dict = {}
        cost: dict[str, float] = {}
        take_turns({**{f"config {i}": training_turns(cfg, clocks, key) for i, (key, cfg) in enumerate(cfgs.items())},
                    "model cost": model_cost_turns(s, cost)})
        for key, clock in clocks.items():
            extra = [m.get("rollout/model_evals", 0) + m.get("reflexflow/clean_evals", 0) for m in clock.metrics[timed]]
            rounds[key].append((mean(clock.seconds[timed]), mean(extra)))
        costs.append(cost)
    return rounds, costs


def versus_teacher_forcing(rounds: list, tf_rounds: list, costs: list[dict], batch: int) -> dict[str, float]:
    """A rollout configuration against teacher forcing over all rounds (every round the same number of steps, each
    step of one round taken in turn with the others): measured ×TF, the ideal ×TF = 1 + E·t_fwd(B)/B / t_step(TF)
    with t_fwd(B) the median over rounds, and their ratio; with the mean step time and extra forwards per step."""
    step, extra, tf = mean(t for t, _ in rounds), mean(e for _, e in rounds), mean(t for t, _ in tf_rounds)
    ideal = 1 + extra * common.median(c["fwd"] for c in costs) / batch / tf
    return {"step": step, "extra": extra, "measured": step / tf, "ideal": ideal, "ratio": step / tf / ideal}


def training_turns(cfg: dict, clocks: dict, key):
    """A ``take_turns`` participant: the real Trainer on ``cfg``, one optimizer step per turn; its ``TurnClock``
    goes to ``clocks[key]``."""

    def fn(baton, name):
        clocks[key] = TurnClock(baton, name, cfg["max_train_steps"])
        common.train(cfg, hooks=[clocks[key]])

    return fn


def model_cost_turns(s: dict, out: dict[str, float]):
    """A ``take_turns`` participant: one forward (no grad, eval mode: as the rollout calls it) and one forward +
    backward (train mode) of the settings' model at their batch size per turn, as many turns as a training has
    steps; writes their medians (process CPU seconds, the first turn left out) into ``out``."""

    def fn(baton, name):
        batch = s["batch"]
        digits = load_digits(s.get("resolution", 8))
        model = build_model(s["family"], digits, s.get("architecture"))
        x, t, y = digits.images[:batch], torch.rand(batch) * 1000, digits.labels[:batch]
        fwd, both = [], []
        for turn in range(s["steps"]):
            with eval_mode(model.raw_module), torch.no_grad():
                start = time.process_time()
                model(x, t, {"class_labels": y})
                mid = time.process_time()
            model(x, t, {"class_labels": y}).pow(2).mean().backward()
            fwd.append(mid - start)
            both.append(time.process_time() - mid)
            if turn < s["steps"] - 1:
                baton.next_turn(name)
        out.update(fwd=common.median(fwd[1:]), fwd_bwd=common.median(both[1:]))

    return fn


def rollout_inputs(family: str, batch: int):
    """(model, schedule, noisy): a digits batch forward-noised at logit-normal levels, and the model."""
    digits = load_digits(8)
    model = build_model(family, digits)
    schedule = make_schedule("flow_matching")
    g = torch.Generator().manual_seed(0)
    x0, cond = digits.images[:batch], {"class_labels": digits.labels[:batch]}
    noise = torch.randn(x0.shape, generator=g)
    level = schedule.sample_training_levels(batch, g, "logit_normal")
    x = schedule.add_noise(x0, noise, level)
    return model, schedule, NoisyInput(x=x, x_clean=x, level=level, x0=x0, noise=noise, target=noise - x0, cond=cond)


def forward_costs(family: str, batch: int, reps: int) -> dict[int, float]:
    """{b: median seconds of one no-grad, eval-mode forward at batch size b} for b = 1..batch, the sizes taking
    turns rep after rep (process CPU time: the benchmark runs single-threaded)."""
    model, schedule, noisy = rollout_inputs(family, batch)
    times: dict[int, list[float]] = {b: [] for b in range(1, batch + 1)}
    with eval_mode(model.raw_module), torch.no_grad():
        for rep in range(reps + 1):
            for b in times:
                t = schedule.model_timestep(noisy.level[:b])
                start = time.process_time()
                model.no_grad_call(noisy.x[:b], t, index_cond(noisy.cond, torch.arange(b)))
                if rep:  # the first pass creates each size's kernels (oneDNN primitives), once per process
                    times[b].append(time.process_time() - start)
    return {b: common.median(v) for b, v in times.items()}


def time_split(family: str, batch: int, offset: int, sampler: str, reps: int) -> dict[str, float]:
    """The rollout stage alone over ``reps`` steps: per step, its time, the time inside its model calls, and the
    calls' batch sizes (process CPU time, medians over steps; call sizes pooled)."""
    model, schedule, noisy = rollout_inputs(family, batch)
    stage = ScheduledSamplingRollout("rollout", RolloutParams(
        scheduled_sampling_max_step_offset=offset, scheduled_sampling_probability=1.0, scheduled_sampling_sampler=sampler))
    call = model.no_grad_call
    calls: list[tuple[int, float]] = []

    def timed(x, t, cond):
        start = time.process_time()
        out = call(x, t, cond)
        calls.append((x.shape[0], time.process_time() - start))
        return out

    model.no_grad_call = timed  # this instance only
    stage_s, model_s, sizes = [], [], []
    for rep in range(reps + 1):
        calls.clear()
        start = time.process_time()
        stage.run(RunContext(config=None, seed=0, step=rep), noisy=noisy, model=model, schedule=schedule)
        if rep:  # rep 0 warms up
            stage_s.append(time.process_time() - start)
            model_s.append(sum(c[1] for c in calls))
            sizes.append([c[0] for c in calls])
    return {"stage": common.median(stage_s), "model": common.median(model_s), "sizes": sizes}


def batching_times(family: str, batch: int, offset: int, sampler: str, reps: int) -> dict[str, float]:
    """The rollout stage alone, shrinking and balanced taking turns on the same k (same seed and step).

    Timed in process CPU time (the benchmark runs single-threaded), which other load on a shared machine
    disturbs far less than wall time; on an otherwise idle single thread the two agree."""
    model, schedule, noisy = rollout_inputs(family, batch)
    stages = {b: ScheduledSamplingRollout("rollout", RolloutParams(
        scheduled_sampling_max_step_offset=offset, scheduled_sampling_probability=1.0, scheduled_sampling_sampler=sampler,
        scheduled_sampling_batching=b)) for b in ("shrinking", "balanced")}
    times: dict = {b: [] for b in stages}
    outs = {}
    for rep in range(reps + 1):
        for b, stage in stages.items():
            start = time.process_time()
            outs[b] = stage.run(RunContext(config=None, seed=0, step=rep), noisy=noisy, model=model, schedule=schedule)["noisy"]
            times[b].append(time.process_time() - start)
        assert torch.equal(outs["shrinking"].steps, outs["balanced"].steps)
    return {**{b: common.median(v[1:]) for b, v in times.items()},
            "diff": float((outs["shrinking"].x - outs["balanced"].x).abs().max())}


def batched_vs_loop(family: str, batch: int, reps: int) -> dict[str, float]:
    model, schedule, noisy = rollout_inputs(family, batch)
    x, x0, noise, level, cond = noisy.x, noisy.x0, noisy.noise, noisy.level, noisy.cond
    params = RolloutParams(scheduled_sampling_max_step_offset=5, scheduled_sampling_probability=1.0)
    stage = ScheduledSamplingRollout("rollout", params)
    batched, looped, diff = [], [], 0.0
    for _ in range(reps + 1):
        start = time.perf_counter()
        out = stage.run(RunContext(config=None, seed=0), noisy=noisy, model=model, schedule=schedule)["noisy"]
        batched.append(time.perf_counter() - start)
        start = time.perf_counter()
        k = out.steps
        path = schedule.rollout_path(level, k, params.scheduled_sampling_grid_steps)
        ref = x.clone()
        with eval_mode(model.raw_module):
            for i in range(batch):
                if k[i] == 0:
                    continue
                one = torch.tensor([i])
                fn = model_fn_for(model, schedule, index_cond(cond, one), lambda: torch.autocast("cpu", enabled=False))
                x_src = schedule.add_noise(x0[one], noise[one], path[one, 0])
                ref[i] = solve(fn, x_src, path[one, : int(k[i]) + 1], k[one], schedule, params.scheduled_sampling_sampler).x[0]
        looped.append(time.perf_counter() - start)
        diff = max(diff, float((ref - out.x).abs().max()))
    return {"batched": common.median(batched[1:]), "loop": common.median(looped[1:]), "diff": diff}


def compute_bound_table(s: dict, log=print) -> Table:
    """The first table's measured / ideal on a model whose forward cost grows with its batch (``s["architecture"]``),
    with both call batchings: whether the rollout reaches its ideal where a call costs what its samples cost."""
    batch, arch, res = s["batch"], s["architecture"], s["resolution"]
    cases = [(k, sampler, batching) for k in s["offsets"] for sampler in s["samplers"]
             for batching in ("shrinking", *(("balanced",) if sampler in s["balanced"] else ()))]
    cfgs = {(0, "", ""): rollout_config(s, 0, "euler"),
            **{case: rollout_config(s, case[0], case[1], batching=case[2]) for case in cases}}
    rounds, costs = step_times(cfgs, s)
    tf_rounds = rounds[(0, "", "")]
    table = Table(f"Rollout cost on a compute-bound model ({s['family']} {arch['block_out_channels']} at {res}×{res}, "
                  f"batch {batch}, p = 1.0)", ["max_step_offset", "sampler", "batching", "extra evals / sample", "step ms",
                                             "measured ×TF", "ideal ×TF (measured fwd)", "measured / ideal"])
    table.add(0, "teacher forcing", "–", 0.0, mean(t for t, _ in tf_rounds) * 1e3, 1.0, 1.0, 1.0)
    for k, sampler, batching in cases:
        r = versus_teacher_forcing(rounds[(k, sampler, batching)], tf_rounds, costs, batch)
        log(f"  compute-bound rollout K={k} {sampler} {batching}: {r['step'] * 1e3:.1f} ms, ×TF {r['measured']:.3f}, "
            f"ideal {r['ideal']:.3f}")
        table.add(k, sampler, batching, r["extra"] / batch, r["step"] * 1e3, r["measured"], r["ideal"], r["ratio"])
    n_params = sum(p.numel() for p in build_model(s["family"], load_digits(res), arch).raw_module.parameters())
    table.notes += [
        f"The same measurement as the first table on a {n_params / 1e6:.3g} M-parameter UNet at {res}×{res}, whose forward "
        f"on this CPU costs about in proportion to its batch (t_fwd(B) = {common.median(c['fwd'] for c in costs) * 1e3:.3g} ms at "
        f"B = {batch}, measured in the same interleaved rounds): here the rollout's extra calls cost what their "
        "sample-forwards cost, which is the ideal's assumption. The tiny UNet of the first table is dominated by a fixed "
        "cost per call instead (its last table), which no batching of the calls removes.",
        f"Measured as the first table: {s['steps'] - s['warmup'] - 1} steps × {s['rounds']} round(s) of all the "
        "configurations taking turns step by step; batching: scheduled_sampling_batching.",
    ]
    return table


def run(mode: str = "full", out_dir=None, log=print) -> list[Table]:
    s = SETTINGS[mode]
    family, batch = s["family"], s["batch"]
    cases = [(k, sp, False) for k in s["offsets"] for sp in s["samplers"]] + [(*s["reflexflow_case"], True)]
    rounds, per_round = step_times({(0, "euler", False): rollout_config(s, 0, "euler"),
                                    **{case: rollout_config(s, *case) for case in cases}}, s)
    costs = {name: common.median(c[name] for c in per_round) for name in per_round[0]}
    tf_rounds = rounds[(0, "euler", False)]
    tf_time = mean(t for t, _ in tf_rounds)
    cost = Table(f"Rollout cost per training step vs teacher forcing ({family}, batch {batch}, p = 1.0)",
                 ["max_step_offset", "sampler", "extra evals / sample", "step ms", "measured ×TF", "ideal ×TF (3-fwd)",
                  "measured / ideal", "ideal ×TF (measured fwd)"])
    cost.add(0, "teacher forcing", 0.0, tf_time * 1e3, 1.0, 1.0, 1.0, 1.0)
    for k, sampler, rf in cases:
        r = versus_teacher_forcing(rounds[(k, sampler, rf)], tf_rounds, per_round, batch)
        log(f"  rollout cost K={k} {sampler} rf={rf}: {r['step'] * 1e3:.1f} ms, extra {r['extra'] / batch:.2f}/sample")
        cost.add(k, sampler + (" + ReflexFlow" if rf else ""), r["extra"] / batch, r["step"] * 1e3, r["measured"],
                 1 + r["extra"] / (3 * batch), r["ratio"], r["ideal"])
    cost.notes += [
        "extra evals / sample: measured rollout sample-forwards (+ ReflexFlow's clean predictions) per step over the batch; "
        "expected p·(K/2)·evals-per-step (rk4: 4), e.g. 2.5 for K = 5 with a 1-evaluation sampler.",
        "measured / ideal divides by ideal ×TF (measured fwd) = 1 + extra · t_fwd(B)/B / t_step(TF): this model's forward "
        f"at the full batch B = {batch}, measured in the same interleaved rounds (second table). ideal ×TF (3-fwd) = "
        "1 + extra / 3 is the older assumption of a 3-forward step, for context. Goal (issue 16): measured / ideal ≤ 1.15. "
        "A rollout needs max k sequential rounds of calls, each on at most the samples still rolling, so the ideal is "
        "reachable only where a call's cost is proportional to its batch; a fixed cost per call (Python, kernel launches, "
        "small-batch inefficiency) is what the excess measures: the last table splits it into the device's part (each "
        "call at its own batch size) and the solver's and stage's. "
        f"Step time: process CPU time (single-threaded), the mean over {s['steps'] - s['warmup'] - 1} steps (warm-up and "
        "the last step, which also runs the end-of-run nodes, left out), with the mean extra evals of the same steps (k "
        f"is drawn per step, the same for every sampler at one max_step_offset); {s['rounds']} round(s) of all the "
        "configurations taking turns step by step in one process (and the forward-cost measurement with them): ratios "
        "of the means over all rounds. Rollout with ReflexFlow off unless marked; default (shrinking) call batching.",
    ]
    fb = Table(f"Measured model cost ({family}, batch {batch})", ["forward ms", "forward + backward ms", "(fwd + bwd) / fwd",
                                                                  "TF step ms", "TF step / fwd"])
    fb.add(costs["fwd"] * 1e3, costs["fwd_bwd"] * 1e3, costs["fwd_bwd"] / costs["fwd"], tf_time * 1e3, tf_time / costs["fwd"])
    fb.notes.append("forward: no_grad, eval mode (as the rollout calls it); forward + backward: with autograd, train mode; "
                    f"one of each per turn among the trainings' steps, medians over the turns, then over {s['rounds']} round(s). The 3-forward assumption "
                    "corresponds to (fwd + bwd) / fwd = 3; the TF step adds the optimizer and the trainer around it.")
    loop = Table(f"Batched rollout vs one sample at a time ({family}, max_step_offset 5, unipc, p = 1.0)",
                 ["batch", "batched ms", "per-sample loop ms", "speed-up", "max |difference|"])
    for b in s["loop_batches"]:
        r = batched_vs_loop(family, b, s["reps"])
        loop.add(b, r["batched"] * 1e3, r["loop"] * 1e3, r["loop"] / r["batched"], r["diff"])
    loop.notes.append("Both integrate every sample along its own path with the same solver and model; the loop calls the "
                      "model once per sample and step (batch size 1), as the reference trainer does.")
    calls = Table(f"Rollout call batching: shrinking vs balanced ({family}, batch {batch}, p = 1.0, rollout stage alone, "
                  "CPU time)", ["max_step_offset", "sampler", "shrinking ms", "balanced ms", "balanced / shrinking",
                               "max |difference|"])
    for k in s["offsets"]:
        for sampler in ("unipc", "rk4"):
            r = batching_times(family, batch, k, sampler, s["reps"] * 3)
            calls.add(k, sampler, r["shrinking"] * 1e3, r["balanced"] * 1e3, r["balanced"] / r["shrinking"], r["diff"])
    calls.notes.append("scheduled_sampling_batching: shrinking = round j carries the samples with k > j (sizes B·(K−j)/(K+1) "
                       "on average); balanced = every round carries ≈ Σk / max k samples (McNaughton's wrap-around). Same "
                       "number of calls and sample-forwards; < 1 means balanced is faster on this machine. Process CPU time, "
                       f"median of {s['reps'] * 3} turns each.")
    fwd = forward_costs(family, batch, s["reps"] * 2)
    split = Table(f"Where the rollout's time goes ({family}, batch {batch}, p = 1.0, rollout stage alone, CPU time)",
                  ["max_step_offset", "sampler", "calls / step", "sample-forwards / step", "stage ms", "model calls ms",
                   "solver + stage ms", "forwards at t_fwd(B)/B ms", "forwards at own size ms", "model calls / own size",
                   "best measured / ideal"])
    for k in s["offsets"]:
        for sampler in s["samplers"]:
            r = time_split(family, batch, k, sampler, s["reps"] * 3)
            n_calls = sum(len(v) for v in r["sizes"]) / len(r["sizes"])
            evals = sum(sum(v) for v in r["sizes"]) / len(r["sizes"])
            at_full = evals * fwd[batch] / batch
            floor = sum(fwd[b] for v in r["sizes"] for b in v) / len(r["sizes"])
            split.add(k, sampler, n_calls, evals, r["stage"] * 1e3, r["model"] * 1e3, (r["stage"] - r["model"]) * 1e3,
                      at_full * 1e3, floor * 1e3, r["model"] / floor, (1 + floor / tf_time) / (1 + at_full / tf_time))
    sizes = sorted(fwd)
    per_call = fwd[sizes[0]]
    split.notes += [
        f"Forward cost t_fwd(b) measured at every b = 1..{batch} (no_grad, eval mode, median of {s['reps'] * 2} turns): "
        f"t_fwd(1) = {per_call * 1e3:.3g} ms, t_fwd({batch // 2}) = {fwd[batch // 2] * 1e3:.3g} ms, t_fwd({batch}) = "
        f"{fwd[batch] * 1e3:.3g} ms, i.e. one sample costs {(per_call / (fwd[batch] / batch)):.3g}× alone and "
        f"{(fwd[batch // 2] / (batch // 2)) / (fwd[batch] / batch):.3g}× in a half batch what it costs in a full one.",
        "A rollout takes max k rounds of calls (a sample's steps are sequential), each on at most the samples still "
        "rolling, so 'forwards at own size' is the least its model calls can cost on this device; 'best measured / ideal' "
        "is the benchmark's measured / ideal with the rollout at that floor and nothing else (TF step from the first table).",
        f"Process CPU time, medians over {s['reps'] * 3} steps (seeds 1..{s['reps'] * 3}) after one warm-up; default "
        "(shrinking) call batching.",
    ]
    return [cost, fb, loop, calls, split, compute_bound_table(s["larger"], log)]


def main(argv=None) -> None:
    parser = common.bench_parser(__doc__)
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    tables = run(args.mode)
    common.report("rollout_cost", tables, args.mode)


if __name__ == "__main__":
    main()
