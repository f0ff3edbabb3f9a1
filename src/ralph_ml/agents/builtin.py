"""The built-in, offline agent: structure first, then Optuna TPE over the declared search space.

Deterministic given the project seed *and the history*: each proposal is a function of the
seed, the cycle and the recorded cycles (TPE uses a sampler seeded by ``(seed, cycle)`` over
a study rebuilt from the journal), and with parallel trials of how far the cycles in flight
have got; so a resumed run of one trial at a time proposes exactly what an uninterrupted one
would, and no run re-proposes a configuration it already tried. In order:

1. Cycle 1 runs the baseline (the ``default`` of every parameter).
2. Structure first, while the best is *far* from the target: every choice of a nominal
   categorical parameter (choices that are not numbers: ``arch = ["mlp", "cnn"]``) that
   no cycle has run yet is tried once, one factor at a time from the best configuration.
   Far means the remaining gap to the target is larger than the spread of the metric among
   the cycles that share the best's structure (its nominal choices), i.e. larger than
   anything the numeric parameters have been seen to move it by. The choices declared
   after the default come first, nearest first, then those before it: such lists are
   usually written from simple to expressive (``logreg, mlp, cnn, gru``), and a far target
   is rarely closed by a simpler family. TPE's random start-up would reach an untried
   structure only by chance; the screen costs one trial per choice.
3. Following the diagnosis: when the analysis of the best cycle makes a high-confidence
   recommendation (``increase:epochs``: the loss was still falling at the end), the
   parameters its high-confidence recommendations name are moved together in their
   directions from the best configuration, each to a random point of the half of its
   range on that side (log-uniform for log parameters), the others kept. A step of random
   size finds how far to go without a line search; a new best brings its own diagnosis.
   At most ``_DIRECTED_TRIES`` such proposals per best: after that many without a new best
   the advice is spent and TPE takes over. Before it, with parallel trials: when a cycle in
   flight already beats the best (by the target metric it reported so far, or its first
   run's), the best's advice is about a configuration already overtaken, and the leader's
   configuration is perturbed instead (each numeric parameter x0.8 or x1.25, as
   population-based training explores), at most ``_LEADER_TRIES`` times per leader.
4. Otherwise TPE (multivariate, constant liar for parallel proposals), whose random
   start-up counts the cycles above.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from ..config import Config, Param
from ..errors import AgentError
from ..records import CycleRecord, Proposal, TrialStatus
from .base import Agent, AgentContext

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from optuna.distributions import BaseDistribution

_RESAMPLE_TRIES = 20
# The structure screen may take at most this share of safeguards.max_cycles: the rest is
# left to the model-based search however many choices the space declares.
_SCREEN_SHARE = 0.5
# Proposals that follow one best cycle's diagnosis before TPE takes over again.
_DIRECTED_TRIES = 2
# Proposals that perturb one cycle in flight which has overtaken the best (parallel trials).
_LEADER_TRIES = 2
# A perturbed parameter is multiplied by one of these (population-based training's explore).
_PERTURB = (0.8, 1.25)


def distributions(space: Mapping[str, Param]) -> dict[str, BaseDistribution]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, BaseDistribution] = {}
    for name, p in space.items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(list(p.choices or []))
        elif p.type == "int":
            assert p.low is not None and p.high is not None
            out[name] = IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            assert p.low is not None and p.high is not None
            out[name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)
    return out


def _key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items()))


@dataclass(frozen=True)
class Pruned:
    """A pruned cycle as TPE is told it: state PRUNED, with the target metric where it stopped.

    TPE ranks pruned trials after the complete ones, the later and better their last step the
    higher, so a configuration stopped as doomed steers the search away from its region; told
    as FAIL it would teach the search nothing."""

    curve: dict[int, float]  # {step: target metric} at the step it stopped, when the trial reported it

    @classmethod
    def of(cls, record: CycleRecord, target: str) -> Pruned | None:
        if record.result.status is not TrialStatus.PRUNED:
            return None
        value = record.result.metrics.get(target)  # the last progress row, when it reported the target
        if value is None or not math.isfinite(value):
            return cls({})
        return cls({int(record.result.stopped_at_step or 0): float(value)})


def _state(metric: float | None, pruned: Pruned | None) -> optuna.trial.TrialState:
    from optuna.trial import TrialState

    if metric is not None:
        return TrialState.COMPLETE
    return TrialState.PRUNED if pruned is not None else TrialState.FAIL


def nominal(p: Param) -> bool:
    """A categorical whose choices are not all numbers: structure (``arch``, ``optimizer``, a switch).

    Numeric choices (``batch_size = [32, 64, 128]``) are an ordered axis, tuned like numbers."""
    if p.type != "categorical":
        return False
    return not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in (p.choices or []))


def screen_order(p: Param) -> list[Any]:
    """The choices of a nominal parameter in the order the screen tries them: those declared
    after the default, nearest first, then those before it, nearest first (see the module doc)."""
    choices = list(p.choices or [])
    if p.default not in choices:
        return choices
    i = choices.index(p.default)
    return choices[i + 1:] + choices[:i][::-1]


def inside(p: Param, value: Any) -> Any:
    """``value`` moved into ``p``'s current range: a number clamped to its bounds (and onto its
    step grid), a choice it no longer declares replaced by its default (else its first choice).
    The search space may have been edited since a cycle ran; what the agent proposes from that
    cycle must still lie in the space the user declares now."""
    if p.type == "categorical":
        choices = list(p.choices or [])
        return value if value in choices else (p.default if p.default in choices else choices[0])
    assert p.low is not None and p.high is not None
    try:
        x = min(p.high, max(p.low, float(value)))
    except (TypeError, ValueError):
        return p.default if p.default is not None else p.low
    if p.step:
        x = min(p.high, p.low + round((x - p.low) / p.step) * p.step)
    if p.type == "int":
        v = int(round(x))
        return v if p.low <= v <= p.high else int(math.ceil(p.low))
    return value if x == value else x


def outside(space: Mapping[str, Param], params: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The values of ``params`` that lie outside the current ``space``: name -> (value, where
    ``inside`` moves it). Parameters the space does not declare are not looked at."""
    out: dict[str, tuple[Any, Any]] = {}
    for k, v in params.items():
        if k in space:
            to = inside(space[k], v)
            if to != v:
                out[k] = (v, to)
    return out


def toward(p: Param, value: Any, direction: str, rng: random.Random) -> Any | None:
    """A random value of ``p`` strictly on the ``direction`` side of ``value``, inside its bounds
    (log-uniform for a log parameter, uniform otherwise; for a categorical, one of the choices
    past ``value`` in declared order). None when ``value`` is already at that bound."""
    up = direction == "increase"
    if p.type == "categorical":
        choices = list(p.choices or [])
        i = choices.index(value) if value in choices else (-1 if up else len(choices))
        side = choices[i + 1:] if up else choices[:max(i, 0)]
        return rng.choice(side) if side else None
    assert p.low is not None and p.high is not None
    if p.type == "int":
        step = int(p.step or 1)
        ilo, ihi = (int(value) + step, int(p.high)) if up else (int(p.low), int(value) - step)
        if ilo > ihi:
            return None
        if p.log and ilo > 0:
            v = int(round(math.exp(rng.uniform(math.log(ilo), math.log(ihi)))))
        else:
            v = rng.randint(ilo, ihi)
        v = min(ihi, max(ilo, v))
        return int(p.low) + round((v - int(p.low)) / step) * step if step > 1 else v
    lo, hi = (max(float(value), p.low), p.high) if up else (p.low, min(float(value), p.high))
    if hi <= lo:
        return None
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if p.log and lo > 0 else rng.uniform(lo, hi)
    if p.step:
        x = p.low + round((x - p.low) / p.step) * p.step
        if x == float(value):
            return None
    return float(min(p.high, max(p.low, x)))


def perturb(p: Param, value: Any, rng: random.Random) -> Any:
    """``value`` moved as population-based training explores: a number multiplied by 0.8 or
    1.25 (an int by at least one step), a numeric choice to a neighbouring one half the time,
    kept inside ``p``'s range; a nominal choice is kept (the structure is what leads)."""
    if p.type == "categorical":
        choices = list(p.choices or [])
        if nominal(p) or value not in choices or rng.random() < 0.5:
            return value
        i = choices.index(value) + rng.choice((-1, 1))
        return choices[min(len(choices) - 1, max(0, i))]
    factor = rng.choice(_PERTURB)
    if p.type == "int":
        v = int(round(float(value) * factor))
        if v == int(value):
            v += int(p.step or 1) * (1 if factor > 1 else -1)
        return inside(p, v)
    return inside(p, float(value) * factor)


def _following(proposals: list[Proposal], source: str, cycle: int) -> int:
    """How many of ``proposals`` the agent made from cycle ``cycle`` by rule ``source``."""
    return sum(p.meta.get("source") == source and p.meta.get("from_cycle") == cycle for p in proposals)


class BuiltinAgent(Agent):
    name = "builtin"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.space = cfg.search_space
        self.seed = cfg.project.seed
        self.nominal = [name for name, p in self.space.items() if nominal(p)]  # in declared order
        self.tried: set[tuple[tuple[str, Any], ...]] = set()
        # Optuna is imported, and the TPE study built, when TPE first proposes: the baseline,
        # the screen and the directed steps do without it (its import is a few tenths of a
        # CPU-second of every run, most of which stop before TPE). Until then the finished
        # cycles wait here, in order, as (params, metric or None, pruned).
        self._study: optuna.Study | None = None
        self._dists: dict[str, BaseDistribution] | None = None
        self._unseen: list[tuple[dict[str, Any], float | None, Pruned | None]] = []
        # The TPE trials behind proposals in flight, told their result in observe().
        self._asked: dict[tuple[tuple[str, Any], ...], optuna.trial.Trial] = {}

    @property
    def dists(self) -> dict[str, BaseDistribution]:
        if self._dists is None:
            self._dists = distributions(self.space)
        return self._dists

    @property
    def study(self) -> optuna.Study:
        """The TPE study over every finished cycle, built on first use."""
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._study = optuna.create_study(
                direction="maximize" if self.cfg.target.dir.value == "maximize" else "minimize"
            )
            unseen, self._unseen = self._unseen, []
            for params, metric, pruned in unseen:
                self._add(params, metric, pruned)
        return self._study

    def _add(self, params: dict[str, Any], metric: float | None, pruned: Pruned | None = None) -> None:
        """Add one finished cycle to the study, unless it lies outside the current space (the space was edited)."""
        from optuna.trial import create_trial

        try:
            fits = all(self.dists[n]._contains(self.dists[n].to_internal_repr(v)) for n, v in params.items())
        except Exception:  # a choice the space no longer declares, a string for a number, ...
            fits = False
        if not fits:
            return
        self.study.add_trial(create_trial(params=params, distributions=self.dists, value=metric, state=_state(metric, pruned),
                                          intermediate_values=pruned.curve if pruned is not None else None))

    # -- history -----------------------------------------------------------------------
    def observe(self, record: CycleRecord) -> None:
        params = self._ran(record.proposal.params)
        self.tried.add(_key(params))
        if set(params) != set(self.space):
            return  # a parameter it did not set declares no default: what ran is unknown to TPE
        ok = record.result.status is TrialStatus.OK and record.metric is not None and math.isfinite(record.metric)
        metric = record.metric if ok else None
        pruned = Pruned.of(record, self.cfg.target.name)
        asked = self._asked.pop(_key(params), None)
        if asked is not None:
            for step, value in (pruned.curve if pruned is not None else {}).items():
                asked.report(value, step)
            self.study.tell(asked, metric, state=_state(metric, pruned))
        elif self._study is None:
            self._unseen.append((params, metric, pruned))
        else:
            self._add(params, metric, pruned)

    # -- proposing ---------------------------------------------------------------------
    def _sampler(self, cycle: int, attempt: int) -> optuna.samplers.BaseSampler:
        from optuna.samplers import TPESampler

        seed = (self.seed * 1_000_003 + cycle * 7_919 + attempt) % (2**32)
        return TPESampler(
            seed=seed,
            n_startup_trials=self.cfg.agents.n_startup_trials,
            multivariate=True,
            constant_liar=True,  # parallel proposals avoid the configurations still running
        )

    @staticmethod
    def _default(p: Param) -> Any:
        return int(p.default) if p.type == "int" else (float(p.default) if p.type == "float" else p.default)  # type: ignore[arg-type]

    def _baseline(self) -> dict[str, Any] | None:
        if not self.space or any(p.default is None for p in self.space.values()):
            return None
        return {name: self._default(p) for name, p in self.space.items()}

    def _ran(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The configuration a cycle ran, in the current space: its parameters, and the declared
        default of each one it did not set (a parameter added to the space since, or one another
        agent left out: train.py read its default, which the space's ``default`` matches). Still
        partial where such a parameter declares no default."""
        out = {k: v for k, v in params.items() if k in self.space}
        for name, p in self.space.items():
            if name not in out and p.default is not None:
                out[name] = self._default(p)
        return out

    def _from_best(self, best: CycleRecord) -> tuple[dict[str, Any], str]:
        """The best cycle's configuration inside the current space (see ``inside`` and ``_ran``),
        and a note naming what had to move or be filled in, empty when nothing did."""
        given = best.proposal.params
        params = self._ran(given)
        out = outside(self.space, params)
        moved = {**params, **{k: to for k, (_, to) in out.items()}}
        changed = [f"`{k}` {v!r} -> {to!r}" for k, (v, to) in out.items()]
        filled = [f"`{k}` = {moved[k]!r}" for k in moved if k not in given]
        note = f" (moved into the edited search space: {', '.join(changed)})" if changed else ""
        if filled:
            note += f" (not set by cycle {best.cycle}, its default: {', '.join(filled)})"
        return moved, note

    # -- how far from the target ----------------------------------------------------
    def _structure(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(params.get(name) for name in self.nominal)

    def _distance(self, ctx: AgentContext) -> tuple[float, float] | None:
        """(gap, spread): how far the best is from the target, and how far the metric has moved
        among the cycles that share the best's structure (its nominal choices): what the
        numeric parameters have been seen to do. None without a best."""
        best = ctx.best
        if best is None or best.metric is None or not math.isfinite(best.metric):
            return None
        target = self.cfg.target
        gap = target.value - best.metric if target.dir.value == "maximize" else best.metric - target.value
        same = self._structure(best.proposal.params)
        metrics = [
            r.metric for r in ctx.history
            if r.result.status is TrialStatus.OK and r.metric is not None and math.isfinite(r.metric)
            and self._structure(r.proposal.params) == same
        ]
        return gap, (max(metrics) - min(metrics)) if metrics else 0.0

    def _far(self, ctx: AgentContext) -> bool:
        """The remaining gap is larger than anything the numeric parameters have moved the metric by."""
        d = self._distance(ctx)
        return d is None or d[0] > d[1]

    # -- structure first -------------------------------------------------------------
    def _screened(self, ctx: AgentContext) -> tuple[dict[str, Any], str] | None:
        """The best configuration with one nominal choice no cycle has run, while far from the target."""
        if not self.cfg.agents.screen or not self.nominal or not self._far(ctx):
            return None
        proposals = [r.proposal for r in ctx.history] + list(ctx.pending)
        if sum(p.meta.get("source") == "screen" for p in proposals) >= _SCREEN_SHARE * self.cfg.safeguards.max_cycles:
            return None
        baseline = self._baseline()
        note = ""
        if ctx.best is None:
            base = baseline  # nothing scored yet (the baseline failed or is still running)
        else:
            best, note = self._from_best(ctx.best)
            base = best if set(best) == set(self.space) else ({**baseline, **best} if baseline is not None else None)
        if base is None:
            return None
        for name in self.nominal:
            run = {p.params[name] for p in proposals if name in p.params}
            for choice in screen_order(self.space[name]):
                params = {**base, name: choice}
                if choice in run or _key(params) in self.tried:
                    continue
                d = self._distance(ctx)
                why = "no cycle has scored yet" if ctx.best is None or d is None else (
                    f"the best ({ctx.best.metric:.4g}, cycle {ctx.best.cycle}) is {d[0]:.4g} from the target, more than "
                    f"the numeric parameters have moved it ({d[1]:.4g})")
                return params, f"structure first: `{name}` = {choice!r}, not run yet, from the best configuration{note}; {why}"
        return None

    # -- following the diagnosis ----------------------------------------------------
    def _directed(self, ctx: AgentContext) -> tuple[dict[str, Any], str] | None:
        """The best configuration moved the way the best cycle's analysis says (see the module doc)."""
        best = ctx.best
        if not self.cfg.agents.steer or best is None or best.analysis is None:
            return None
        params, note = self._from_best(best)
        if set(params) != set(self.space):
            return None  # a partial configuration (another agent's): nothing to move from
        recs = [r for r in best.analysis.recommendations
                if r.param in self.space and r.direction in ("increase", "decrease") and r.confidence == "high"]
        if not recs:
            return None
        since = [r.proposal for r in ctx.history if r.cycle > best.cycle] + list(ctx.pending)
        if _following(since, "analysis", best.cycle) >= _DIRECTED_TRIES:
            return None
        moves: dict[str, str] = {}
        for r in recs:
            assert r.param is not None and r.direction is not None
            moves.setdefault(r.param, r.direction)  # the first (highest-ranked) word on a parameter wins
        for attempt in range(_RESAMPLE_TRIES):
            rng = random.Random((self.seed * 1_000_003 + ctx.cycle * 7_919 + attempt) * 31 + 17)
            out = dict(params)
            for name, direction in moves.items():
                v = toward(self.space[name], params[name], direction, rng)
                if v is not None:
                    out[name] = v
            if out == params and not note:
                return None  # every named parameter is already at its bound
            if _key(out) not in self.tried:
                said = ", ".join(f"{d}:{n}" for n, d in moves.items())
                return out, (f"following the analysis of the best cycle {best.cycle} ({best.analysis.diagnosis}): "
                             f"{said}, a random step each, the rest of its configuration kept{note}")
        return None

    # -- following a cycle in flight that has overtaken the best ------------------------
    def _leader(self, ctx: AgentContext) -> tuple[dict[str, Any], str, int] | None:
        """The configuration of the cycle in flight whose target metric (reported so far, or
        its first run's) beats the best by ``min_improvement_delta``, each numeric parameter
        perturbed (see ``perturb``): with parallel trials, the best's own advice is about a
        configuration already overtaken. At most ``_LEADER_TRIES`` proposals per leader."""
        best = ctx.best
        if not self.cfg.agents.steer or best is None or best.metric is None or not math.isfinite(best.metric):
            return None
        direction, delta = self.cfg.target.dir, self.cfg.safeguards.min_improvement_delta
        ahead = [f for f in ctx.in_flight if f.value is not None and math.isfinite(f.value) and not f.proposal.patch
                 and direction.better(f.value, best.metric, delta)]  # a code change's lead is its code's: not ours to vary
        if not ahead:
            return None
        sign = 1 if direction.value == "maximize" else -1
        lead = max(ahead, key=lambda f: (f.value or 0.0) * sign)
        params = self._ran(lead.proposal.params)
        if set(params) != set(self.space):
            return None
        if _following([r.proposal for r in ctx.history] + list(ctx.pending), "leader", lead.cycle) >= _LEADER_TRIES:
            return None
        numeric = [n for n, p in self.space.items() if not nominal(p)]
        for attempt in range(_RESAMPLE_TRIES):
            rng = random.Random((self.seed * 1_000_003 + ctx.cycle * 7_919 + attempt) * 37 + 29)
            out = {**params, **{n: perturb(self.space[n], params[n], rng) for n in numeric}}
            if out != params and _key(out) not in self.tried:
                where = f"at step {lead.step}" if lead.step is not None else "on its first run"
                return out, (f"following cycle {lead.cycle} in flight ({self.cfg.target.name} {lead.value:.4g} {where}, "
                             f"past the best {best.metric:.4g} of cycle {best.cycle}): its configuration with each numeric "
                             f"parameter moved by x0.8 or x1.25, as population-based training explores"), lead.cycle
        return None

    def propose(self, ctx: AgentContext) -> Proposal:
        if not self.space:
            if ctx.history:
                raise AgentError("the search space is empty and the code has already run once; nothing new to propose")
            return Proposal(params={}, rationale="no search space declared: run the code as it is", agent=self.name)
        # In-flight configurations count as tried (parallel trials must differ).
        self.tried |= {_key({k: v for k, v in p.params.items() if k in self.space}) for p in ctx.pending}
        baseline = self._baseline()
        if baseline is not None and _key(baseline) not in self.tried:
            self.tried.add(_key(baseline))
            return Proposal(params=baseline, rationale="baseline: the default of every parameter", agent=self.name, meta={"source": "baseline"})
        screened = self._screened(ctx)
        if screened is not None:
            params, why = screened
            self.tried.add(_key(params))
            return Proposal(params=params, rationale=why, agent=self.name, meta={"source": "screen"})
        leader = self._leader(ctx)
        if leader is not None:
            params, why, cycle = leader
            self.tried.add(_key(params))
            return Proposal(params=params, rationale=why, agent=self.name,
                            meta={"source": "leader", "steered": True, "from_cycle": cycle})
        directed = self._directed(ctx)
        if directed is not None:
            params, why = directed
            self.tried.add(_key(params))
            assert ctx.best is not None
            return Proposal(params=params, rationale=why, agent=self.name,
                            meta={"source": "analysis", "steered": True, "from_cycle": ctx.best.cycle})
        from optuna.trial import TrialState

        for attempt in range(_RESAMPLE_TRIES):
            self.study.sampler = self._sampler(ctx.cycle, attempt)
            trial = self.study.ask(self.dists)
            params = dict(trial.params)
            if _key(params) in self.tried:
                self.study.tell(trial, state=TrialState.FAIL)  # a duplicate: never run
                continue
            self._asked[_key(params)] = trial
            self.tried.add(_key(params))
            return Proposal(
                params=params,
                rationale=f"TPE sample (seed {self.seed}, cycle {ctx.cycle})"
                + (f" after {attempt} duplicate(s)" if attempt else ""),
                agent=self.name,
                meta={"source": "tpe"},
            )
        raise AgentError(
            f"the search space looks exhausted: {_RESAMPLE_TRIES} samples in a row were configurations already tried "
            f"({len(self.tried)} tried). Widen `search_space` in the config, or stop here."
        )
