"""The loop's own time per cycle as the recorded history grows (it must stay flat).

    python bench/loop_scaling.py [--cycles 10000] [--buckets 10] [--agent noop|builtin]

Runs the real loop (journal fsyncs, snapshots, analysis, decision files, events) on no-op
trials (`echo val_accuracy=...`) with a no-op agent plugin (``agents.code_model =
"noop_agent:NoOp"``, a file written into the bench experiment folder) so only the loop's
own work is measured; ``--agent builtin`` swaps in the built-in Optuna agent to show what
TPE over a long history costs. Prints, per bucket of cycles: the median wall time per cycle,
the loop's own part (the cycle minus its trial's subprocess), the loop process's CPU time
(steadier than wall time on a busy machine) and the per-phase medians; the ratio of the
last bucket to the first (1.0 = flat). Then, with the run's own recorded history cut at
n = 100, 1000, 10000 cycles, what each per-cycle step that touches the history costs, as
the loop calls it: the history copy handed to agents, the budget check, the stop rules (on
running totals and the last few records), the built-in analysis, and one proposal of the
built-in TPE agent that has observed n cycles (the agent's cost, not the loop's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ralph_ml.config import load_config
from ralph_ml.loop import Loop

NOOP_AGENT = '''\
"""A no-op agent: a seeded random x, nothing else (isolates the loop's own cost)."""
import random

from ralph_ml.agents.base import Agent, AgentContext
from ralph_ml.records import Proposal


class NoOp(Agent):
    name = "noop"

    def __init__(self, cfg):
        self.rng = random.Random(0)

    def propose(self, ctx: AgentContext) -> Proposal:
        return Proposal(params={"x": self.rng.random()}, agent=self.name, rationale="noop")
'''

CONFIG = """
[project]
name = "scaling"
target_metric = {{ name = "val_accuracy", value = 2.0 }}
[safeguards]
max_cycles = {cycles}
no_improvement_stop_cycles = {cycles}
[execution]
train_cmd = "echo val_accuracy=0.5"
env_capture = false
[agents]
code_model = "{agent}"
[files]
frozen = ["prepare.py"]
mutable = ["train.py"]
[versioning]
git = false
[search_space.x]
type = "float"
low = 0.0
high = 1.0
"""


def run(root: Path, cycles: int, agent: str) -> tuple[list[tuple[int, float, float, float]], list[dict[str, float]]]:
    """Per recorded cycle: (cycle, wall s since the previous record, trial s, loop CPU s); phase s per cycle."""
    (root / "prepare.py").write_text("# frozen\n")
    (root / "train.py").write_text("# no-op\n")
    (root / "noop_agent.py").write_text(NOOP_AGENT)
    (root / "ralph.toml").write_text(CONFIG.format(cycles=cycles, agent="noop_agent:NoOp" if agent == "noop" else agent))
    rows: list[tuple[int, float, float, float]] = []
    phases: list[dict[str, float]] = []
    state: dict[str, Any] = {"last": None, "cpu": 0.0, "trial_t0": 0.0, "trial_s": 0.0, "phase": None, "cur": {}}

    def on_event(kind: str, event: dict[str, Any]) -> None:
        now = time.perf_counter()
        if kind == "phase":
            if state["phase"] is not None:
                name, t = state["phase"]
                state["cur"][name] = state["cur"].get(name, 0.0) + now - t
            state["phase"] = (event["phase"], now)
        elif kind == "trial_started":
            state["trial_t0"] = now
        elif kind == "trial_ended":
            state["trial_s"] = now - state["trial_t0"]
        elif kind == "cycle_recorded":
            cpu = time.process_time()
            if state["last"] is not None:
                rows.append((int(event["cycle"]), now - state["last"], state["trial_s"], cpu - state["cpu"]))
                phases.append(state["cur"])
            state["last"], state["cpu"], state["cur"] = now, cpu, {}

    loop = Loop.start(load_config(root / "ralph.toml"), on_event)
    loop.run()
    return rows, phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=10_000)
    ap.add_argument("--buckets", type=int, default=10)
    ap.add_argument("--agent", default="noop", help="noop (default) or builtin")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows, phases = run(Path(tmp), args.cycles, args.agent)
        total = time.perf_counter() - t0
        steps = history_steps(Path(tmp), args.cycles)
    size = max(1, len(rows) // args.buckets)
    names = sorted({k for p in phases for k in p}, key=lambda k: -sum(p.get(k, 0.0) for p in phases))[:5]
    ms = lambda s: f"{s * 1000:7.2f}"  # noqa: E731
    print(f"{len(rows) + 1} cycles in {total:.0f} s (agent {args.agent}, python {sys.version.split()[0]}); ms per cycle:")
    print(f"{'cycles':>13} {'wall':>7} {'loop':>7} {'trial':>7} {'cpu':>7}   " + " ".join(f"{n:>11}" for n in names))
    first = last = (0.0, 0.0)
    for b in range(0, len(rows) - size + 1, size):
        chunk, ph = rows[b : b + size], phases[b : b + size]
        wall = statistics.median(r[1] for r in chunk)
        own = statistics.median(r[1] - r[2] for r in chunk)
        trial = statistics.median(r[2] for r in chunk)
        cpu = statistics.median(r[3] for r in chunk)
        first = first if first[0] else (own, cpu)
        last = (own, cpu)
        cols = " ".join(f"{ms(statistics.median(p.get(n, 0.0) for p in ph)):>11}" for n in names)
        print(f"{chunk[0][0]:>6}-{chunk[-1][0]:<6} {ms(wall)} {ms(own)} {ms(trial)} {ms(cpu)}   {cols}")
    print(f"last bucket / first bucket: loop's own wall time {last[0] / first[0]:.2f}, "
          f"loop CPU time {last[1] / first[1]:.2f} (1.00 = flat)")
    print()
    print("per-cycle steps that read the history, ms per call with n recorded cycles:")
    ns = sorted(steps[next(iter(steps))])
    print(f"{'step':<52}" + "".join(f"{'n=' + str(n):>10}" for n in ns))
    for name, by_n in steps.items():
        print(f"{name:<52}" + "".join(f"{by_n[n] * 1000:>10.3f}" for n in ns))


def _timed(fn: Any, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def history_steps(root: Path, cycles: int) -> dict[str, dict[int, float]]:
    """Seconds per call of each history-reading step, on the run's own history cut at n cycles."""
    import optuna

    from ralph_ml import decision as dec
    from ralph_ml.agents.base import AgentContext
    from ralph_ml.agents.builtin import BuiltinAgent
    from ralph_ml.analysis import analyze
    from ralph_ml.journal import replay

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = load_config(root / "ralph.toml")
    history = replay(root / "state" / "journal.jsonl").records
    out: dict[str, dict[int, float]] = {}
    for n in (n for n in (100, 1000, 10_000) if n <= len(history)):
        h, last = history[:n], history[n - 1]
        totals = dec.Totals.of(h, cfg)  # the loop keeps these as running totals
        tail = h[-cfg.safeguards.max_consecutive_failures:]
        usage = dec.Usage(tokens=totals.tokens, cost_usd=totals.cost_usd)
        ctx = AgentContext(cycle=n + 1, history=tuple(h), best=totals.best, last_analysis=last.analysis,
                           search_space=cfg.search_space, target_name=cfg.target.name, direction=cfg.target.dir.value)
        agent = BuiltinAgent(cfg)
        for rec in h:
            agent.observe(rec)
        steps = {
            "AgentContext(history=tuple(history)) (propose)": lambda: tuple(h),
            "decision.before_cycle (budgets)": lambda: dec.before_cycle(h, cfg, usage),
            "Totals.plus + after_cycle on the tail (stop rules)": lambda: dec.after_cycle(tail, cfg, usage, totals.plus(last, cfg)),
            "analysis.analyze (built-in analysis, with totals)": lambda: analyze(last.result, last.metric, False, h, [], cfg, totals=totals),
            "builtin agent: one TPE proposal after n cycles": lambda: agent.propose(ctx),
        }
        for name, fn in steps.items():
            out.setdefault(name, {})[n] = _timed(fn, 1 if "TPE" in name else 5)
    return out


if __name__ == "__main__":
    main()
