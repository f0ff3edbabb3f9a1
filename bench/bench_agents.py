"""Plain search baselines for bench/search_efficiency.py, as ralph-ml agent plugins.

They run inside the same loop as the built-in agent, so trials execute identically and only
the search strategy differs: plain Optuna random search and plain Optuna TPE (no baseline
first, no analysis steering, no pruning).
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from ralph_ml.agents.base import Agent, AgentContext
from ralph_ml.agents.builtin import distributions
from ralph_ml.config import Config
from ralph_ml.records import CycleRecord, Proposal, TrialStatus

optuna.logging.set_verbosity(optuna.logging.WARNING)


class _Plain(Agent):
    name = "plain"

    def __init__(self, cfg: Config) -> None:
        self.dists = distributions(cfg.search_space)
        self.study = optuna.create_study(direction=cfg.target.dir.value, sampler=self.sampler(cfg.project.seed))
        self.asked: dict[int, optuna.trial.Trial] = {}

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        raise NotImplementedError

    def propose(self, ctx: AgentContext) -> Proposal:
        trial = self.study.ask(self.dists)
        self.asked[ctx.cycle] = trial
        return Proposal(params=dict(trial.params), rationale=self.name, agent=self.name)

    def observe(self, record: CycleRecord) -> None:
        trial = self.asked.pop(record.cycle, None)
        if trial is None:
            return
        ok = record.result.status is TrialStatus.OK and record.metric is not None and math.isfinite(record.metric)
        self.study.tell(trial, record.metric if ok else None, state=TrialState.COMPLETE if ok else TrialState.FAIL)


class Random(_Plain):
    name = "random"

    def sampler(self, seed: int) -> Any:
        return optuna.samplers.RandomSampler(seed=seed)


class TPE(_Plain):
    name = "tpe"

    def sampler(self, seed: int) -> Any:
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
