"""MLflow: one parent run per ralph-ml run, one nested run per cycle.

A cycle's run holds its params, final metrics, the per-step metrics of progress.jsonl, tags
(status, verdict, failure, kept, diagnosis) and its files (metrics.json, analysis.md,
decision.json, params.json, patch.diff). A kept cycle that saved files in
``runs/cycle_NNNN/checkpoints/`` becomes a version of the registered model (``project.name``
by default) and the best one carries the alias ``champion``. The parent is found again on
``resume`` by its tag ``ralph.run_id``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from ..config import Config
from .base import CycleData, TrackingSink

_PARAM_MAX = 6000  # MLflow's limit on a param value
_BATCH = 1000  # metrics per log_batch call (MLflow's limit)


def tracking_uri(cfg: Config) -> str:
    """The configured tracking URI with relative sqlite/file paths made absolute (experiment root)."""
    uri = cfg.observability.mlflow.tracking_uri
    if uri is None:
        return "sqlite:///" + str(cfg.path(cfg.paths.state) / "mlflow.db")
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        if rest and not rest.startswith("/") and rest != ":memory:":
            return "sqlite:///" + str(cfg.path(rest))
        return uri
    if "://" not in uri:  # a plain folder: MLflow's file store
        return str(cfg.path(uri))
    return uri


class MlflowSink(TrackingSink):
    name = "mlflow"
    extra = "mlflow"

    def __init__(self, cfg: Config, run_id: str) -> None:
        super().__init__(cfg, run_id)
        o = cfg.observability.mlflow
        self.uri = tracking_uri(cfg)
        self.experiment = o.experiment or cfg.project.name
        self.model_name = o.registered_model or cfg.project.name
        self.artifact_location = cfg.path(o.artifact_location) if o.artifact_location else self.state_dir / "mlflow-artifacts"
        self.client: Any = None
        self.exp_id = ""
        self.parent = ""
        self.children: dict[int, str] = {}

    def open(self, resumed: bool) -> None:
        for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration", "mlflow.tracking._tracking_service.client"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # A local tracking store: no usage telemetry leaves this machine unless the user opts in.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow import MlflowClient

        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        client = self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            self.artifact_location.mkdir(parents=True, exist_ok=True)
            self.exp_id = client.create_experiment(self.experiment, artifact_location=self.artifact_location.as_uri())
        else:
            self.exp_id = exp.experiment_id
        found = client.search_runs(
            [self.exp_id], filter_string=f"tags.`ralph.run_id` = '{self.run_id}' and tags.`ralph.kind` = 'run'", max_results=1
        )
        t = self.cfg.target
        if found:
            self.parent = found[0].info.run_id
            client.update_run(self.parent, status="RUNNING")
            client.set_tag(self.parent, "ralph.sessions", str(int(found[0].data.tags.get("ralph.sessions", "1")) + 1))
        else:
            run = client.create_run(
                self.exp_id,
                run_name=self.run_id,
                tags={
                    "ralph.run_id": self.run_id,
                    "ralph.kind": "run",
                    "ralph.target": t.describe(),
                    "ralph.sessions": "1",
                    "ralph.config": str(self.cfg.source),
                },
            )
            self.parent = run.info.run_id
            self._params(self.parent, {"target_metric": t.name, "target_value": t.value, "direction": t.dir.value,
                                       "max_cycles": self.cfg.safeguards.max_cycles, "agent": self.cfg.agent_name})
        self.children = {}
        token: str | None = None
        while True:
            page = client.search_runs(
                [self.exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.parent}'", max_results=1000, page_token=token
            )
            for r in page:
                if "ralph.cycle" in r.data.tags:
                    self.children[int(r.data.tags["ralph.cycle"])] = r.info.run_id
            token = page.token
            if not token:
                break

    def logged_cycles(self) -> set[int]:
        return set(self.children)

    def _params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k)[:250], str(v)[:_PARAM_MAX]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_cycle(self, d: CycleData) -> None:
        from mlflow.entities import Metric

        if d.cycle in self.children:
            return
        c, r, t = self.client, d.record, self.cfg.target
        res = r.result
        tags = {
            "mlflow.parentRunId": self.parent,
            "ralph.run_id": self.run_id,
            "ralph.kind": "cycle",
            "ralph.cycle": str(d.cycle),
            "status": res.status.value,
            "verdict": r.verdict,
            "failure": res.failure.value,
            "kept": str(r.kept).lower(),
            "diagnosis": r.analysis.diagnosis if r.analysis else "",
            "agent": r.proposal.agent,
        }
        if r.commit:
            tags["ralph.commit"] = r.commit
        if r.proposal.rationale:
            tags["mlflow.note.content"] = r.proposal.rationale[:5000]
        start_ms = int(res.started_at * 1000) if res.started_at > 0 else None
        run = c.create_run(self.exp_id, run_name=d.tag, tags=tags, start_time=start_ms)
        rid = run.info.run_id
        self._params(rid, d.params)
        now = int(time.time() * 1000)
        metrics: list[Metric] = []
        last_step = 0
        for step, ts, vals in d.steps():
            last_step = max(last_step, step)
            for k, v in vals.items():
                metrics.append(Metric(k, v, int(ts * 1000) if ts else now, step))
        end_ms = int(res.ended_at * 1000) if res.ended_at > 0 else now
        # Final metrics at the last step and latest time, so they are the run's "latest" values.
        for k, v in d.finite_metrics().items():
            metrics.append(Metric(k, v, end_ms + 1, last_step))
        extra = {"ralph/duration_s": res.duration_s, "ralph/tokens_used": float(r.proposal.tokens_used),
                 "ralph/cost_usd": r.proposal.cost_usd, "ralph/kept": float(r.kept)}
        metrics += [Metric(k, float(v), end_ms + 1, 0) for k, v in extra.items()]
        metrics = list({(m.key, m.step, m.timestamp, m.value): m for m in metrics}.values())  # exact repeats: once
        for i in range(0, len(metrics), _BATCH):
            c.log_batch(rid, metrics=metrics[i:i + _BATCH])
        for f in d.artifacts():
            c.log_artifact(rid, str(f))
        if r.kept and self.cfg.observability.mlflow.log_models and d.checkpoint_files():
            c.log_artifacts(rid, str(d.cycle_dir / "checkpoints"), "checkpoints")
            self._register(rid, run.info.artifact_uri, d)
        c.set_terminated(rid, status="FINISHED" if res.status.value == "ok" else "FAILED", end_time=end_ms)
        self.children[d.cycle] = rid
        parent_metrics = []
        if r.metric is not None:
            parent_metrics.append(Metric(t.name, float(r.metric), end_ms, d.cycle))
        if d.best is not None and d.best.metric is not None:
            parent_metrics.append(Metric(f"best_{t.name}", float(d.best.metric), end_ms, d.cycle))
        if parent_metrics:
            c.log_batch(self.parent, metrics=parent_metrics)
        if r.kept:
            c.set_tag(self.parent, "ralph.best_cycle", str(d.cycle))

    def _register(self, rid: str, artifact_uri: str, d: CycleData) -> None:
        from mlflow.exceptions import MlflowException

        c = self.client
        try:
            c.get_registered_model(self.model_name)
        except MlflowException:
            c.create_registered_model(self.model_name, tags={"ralph.run_id": self.run_id},
                                      description=f"checkpoints of kept ralph-ml cycles ({self.cfg.target.describe()})")
        mv = c.create_model_version(
            self.model_name,
            source=f"{artifact_uri}/checkpoints",
            run_id=rid,
            tags={"ralph.run_id": self.run_id, "ralph.cycle": str(d.cycle), self.cfg.target.name: str(d.record.metric)},
        )
        # A kept cycle beat every earlier one: it is the champion now.
        c.set_registered_model_alias(self.model_name, "champion", mv.version)

    def stopped(self, decision: dict[str, Any], exit_code: int | None) -> None:
        c = self.client
        c.set_tag(self.parent, "ralph.stop_reason", str(decision.get("reason")))
        c.set_tag(self.parent, "ralph.stop_message", str(decision.get("message", ""))[:5000])
        c.set_tag(self.parent, "ralph.exit_code", str(exit_code))
        if self.best is not None:
            c.set_tag(self.parent, "ralph.best_cycle", str(self.best.cycle))
        c.set_terminated(self.parent, status="FINISHED")

    def shutdown(self, finished: bool) -> None:
        if not finished:  # interrupted: `ralph-ml resume` sets it RUNNING again
            self.client.set_terminated(self.parent, status="KILLED")
