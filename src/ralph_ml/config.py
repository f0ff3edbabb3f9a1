"""Configuration: pydantic models, loading from TOML/YAML/JSON, and clear errors.

The spec's ``RALPH_ML_CONFIG.json`` loads as written. Paths are relative to the folder
holding the config file (the *experiment root*).
"""

from __future__ import annotations

import difflib
import json
import math
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .records import Direction, lower_is_better
from .resources import is_gpu_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAMES = ("ralph.toml", "ralph.yaml", "ralph.yml", "ralph.json", "RALPH_ML_CONFIG.json")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TargetMetric(_Model):
    name: str = Field(min_length=1)
    value: float
    # None: inferred from the name (loss/error/... are minimized, the rest maximized).
    direction: Optional[Direction] = None

    @model_validator(mode="after")
    def _infer_direction(self) -> TargetMetric:
        if not math.isfinite(self.value):
            raise ValueError(f"target value must be a finite number, got {self.value}")
        if self.direction is None:
            guess = Direction.MINIMIZE if lower_is_better(self.name) else Direction.MAXIMIZE
            object.__setattr__(self, "direction", guess)
        return self

    @property
    def dir(self) -> Direction:
        assert self.direction is not None  # set by the validator
        return self.direction

    def describe(self) -> str:
        op = ">=" if self.dir is Direction.MAXIMIZE else "<="
        return f"{self.name} {op} {self.value:g}"


class Project(_Model):
    name: str = "experiment"
    framework: str = "pytorch"
    task: str = ""
    type: str = ""  # seed 001 spells `task` as `type`
    target_metric: TargetMetric
    seed: int = 0


class Data(_Model):
    root: str = "./data"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


class Safeguards(_Model):
    max_cycles: int = Field(default=10, ge=1)
    no_improvement_stop_cycles: int = Field(default=3, ge=1)
    min_improvement_delta: float = Field(default=0.0, ge=0.0)
    time_limit_per_cycle_minutes: float = Field(default=30.0, gt=0.0)
    total_time_limit_minutes: Optional[float] = Field(default=None, gt=0.0)
    token_budget_per_cycle: Optional[int] = Field(default=None, ge=0)
    token_budget_total: Optional[int] = Field(default=None, ge=0)
    cost_budget_usd: Optional[float] = Field(default=None, ge=0.0)
    # Minimum validation gate: a result worse than this is never kept, and if no cycle
    # has passed it after `validation_gate_cycles` cycles the run stops (exit 2).
    min_validation_gate: Optional[float] = None
    validation_gate_cycles: int = Field(default=3, ge=1)
    # Circuit breaker: stop after this many consecutive failures of the same kind.
    max_consecutive_failures: int = Field(default=3, ge=1)


class RayExecution(_Model):
    """``[execution.ray]``: each trial is a detached Ray actor running the trial command."""

    # None: start a private local Ray; "auto": the cluster this machine joined (`ray start`);
    # "host:6379" (the head's GCS) or "ray://host:10001" (Ray Client, e.g. KubeRay's head service).
    address: Optional[str] = None
    namespace: str = Field(default="ralph-ml", min_length=1)  # where the trials' named actors live
    num_cpus: float = Field(default=1.0, ge=0.0)  # Ray logical CPUs held per trial
    num_gpus: float = Field(default=0.0, ge=0.0)  # GPUs per trial; Ray sets CUDA_VISIBLE_DEVICES
    resources: dict[str, float] = Field(default_factory=dict)  # custom resources per trial, e.g. {a100 = 1}
    # "shared": workers see the experiment folder at the same path (NFS, one machine);
    # "ship": the code folder travels through Ray's object store to a private folder on the
    # worker; logs, progress, metrics and checkpoints come back into runs/cycle_NNNN/ while it
    # runs and when it ends (no shared filesystem needed: KubeRay, cloud clusters).
    code_transfer: Literal["shared", "ship"] = "shared"
    sync_interval_s: float = Field(default=1.0, gt=0.0)  # ship: how often files go back and forth
    # Passed to each trial's actor as Ray's runtime_env: pip/conda/uv packages, env_vars,
    # container, or a *remote* working_dir URI (s3://, gs://, https://...zip).
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    scheduling_strategy: Literal["DEFAULT", "SPREAD"] = "DEFAULT"
    keep_finished_s: float = Field(default=3600.0, ge=0.0)  # a finished, uncollected trial's actor waits this long
    check_feasible: bool = True  # refuse to start when no alive node can ever fit a trial (off with an autoscaler)
    worker_dir: Optional[str] = None  # ship: where trials run on the workers (default: <tmp>/ralph-ml-trials)


class SlurmExecution(_Model):
    """``[execution.slurm]``: each trial is one Slurm job submitted with submitit."""

    backend: Literal["slurm", "local"] = "slurm"  # local: submitit's LocalExecutor, to try it on a laptop
    folder: str = "runs/slurm"  # submitit's job files; must be on a filesystem the nodes share
    partition: Optional[str] = None
    time_min: Optional[int] = Field(default=None, ge=1)  # default: the per-cycle limit + 5 minutes
    gpus_per_node: int = Field(default=0, ge=0)
    cpus_per_task: int = Field(default=1, ge=1)
    mem_gb: Optional[float] = Field(default=None, gt=0.0)
    additional_parameters: dict[str, Union[str, int, float, bool]] = Field(default_factory=dict)  # any #SBATCH option
    setup: list[str] = Field(default_factory=list)  # shell lines run before the job (module load ...)
    max_requeues: int = Field(default=3, ge=0)  # preemptions/time-outs a trial may be requeued after
    signal_delay_s: int = Field(default=90, ge=0)  # USR2 this long before the time limit: checkpoint and requeue
    python: Optional[str] = None  # how the nodes run python; default: this interpreter
    poll_s: float = Field(default=15.0, gt=0.0)  # how often the queue (sacct) is asked about a job


class Execution(_Model):
    mode: Literal["local", "ray", "slurm"] = "local"
    python: str = "python"
    train_cmd: str = Field(default="python train.py", min_length=1)
    eval_cmd: Optional[str] = None
    prepare_cmd: Optional[str] = None  # run once, in the workspace, before the first cycle
    env_capture: bool = True
    env: dict[str, str] = Field(default_factory=dict)
    # Fallback when metrics.json is absent: `name: value` / `name=value` lines on stdout.
    metrics_pattern: str = r"^\s*([A-Za-z_][\w./-]*)\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)\s*$"
    # The key that numbers the steps of a learning curve train_cmd prints (`epoch 3 val_accuracy=0.8`,
    # Keras's `Epoch 3/10`): each printed line with metrics becomes a progress.jsonl row
    # (ralph_ml.stdout_curve), for scripts that do not call trial.report. None: off.
    stdout_progress: Optional[str] = None
    kill_grace_s: float = Field(default=5.0, ge=0.0)
    max_concurrency: int = Field(default=1, ge=1, le=256)  # K trials at once
    # GPUs of the pool: a list of ids (indices, or GPU-/MIG- UUIDs), or "auto" (CUDA_VISIBLE_DEVICES
    # or nvidia-smi; none on a CPU box)
    gpus: Union[list[Union[int, str]], Literal["auto"]] = "auto"
    gpus_per_trial: Optional[int] = Field(default=None, ge=0)  # default: 1 when the pool has GPUs
    cpus_per_trial: Optional[int] = Field(default=None, ge=1)  # sets OMP/MKL_NUM_THREADS per trial
    # Warm starts (local mode): modules imported once by a server that `python script.py`
    # trial commands are forked from, e.g. ["torch", "sklearn"]; [] = a fresh interpreter each time.
    preload: list[str] = Field(default_factory=list)
    ray: RayExecution = Field(default_factory=RayExecution)  # used when mode = "ray"
    slurm: SlurmExecution = Field(default_factory=SlurmExecution)  # used when mode = "slurm"

    @field_validator("gpus")
    @classmethod
    def _gpu_ids(cls, v: Union[list[Union[int, str]], str]) -> Union[list[Union[int, str]], str]:
        if isinstance(v, list):
            bad = [g for g in v if isinstance(g, str) and not is_gpu_id(g)]
            if bad:
                raise ValueError(f"execution.gpus: {bad} are not GPU ids; use indices (0, 1) or UUIDs "
                                 "(GPU-..., MIG-..., as nvidia-smi -L prints them)")
        return v

    @field_validator("preload")
    @classmethod
    def _module_names(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if not all(part.isidentifier() for part in m.split("."))]
        if bad:
            raise ValueError(f"preload takes importable module names such as 'torch' or 'sklearn.datasets', got {bad}")
        return v

    @field_validator("stdout_progress")
    @classmethod
    def _step_key(cls, v: Optional[str]) -> Optional[str]:
        import re

        if v is not None and not re.fullmatch(r"[A-Za-z_][\w./-]*", v):
            raise ValueError("stdout_progress takes the name that numbers the steps as train_cmd prints it, "
                             "such as \"epoch\" (for `epoch 3 val_accuracy=0.8` or `Epoch 3/10`) or \"step\"")
        return v

    @field_validator("metrics_pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        import re

        try:
            rx = re.compile(v, re.MULTILINE)
        except re.error as exc:
            raise ValueError(f"metrics_pattern is not a valid regular expression: {exc}") from None
        if rx.groups < 2:
            raise ValueError("metrics_pattern needs two groups: (name) and (value)")
        return v


class LLMAgent(_Model):
    """``[agents.llm]``: the ``openai`` agent and analyst (any OpenAI-compatible endpoint).

    The prompt and memory settings (``prompts_dir``, ``*_chars``, ``history_rows``) are
    shared by the CLI coding agents.
    """

    base_url: Optional[str] = None  # None: the client's default (OPENAI_BASE_URL or api.openai.com)
    model: str = Field(default="gpt-4o-mini", min_length=1)
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable read at call time; "" = no key
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(default=4096, ge=16)  # completion tokens per call, capped by budgets
    timeout_s: float = Field(default=120.0, gt=0.0)  # per HTTP request
    max_retries: int = Field(default=3, ge=0)  # network errors, 429, 5xx
    retry_backoff_s: float = Field(default=2.0, ge=0.0)  # first wait; doubles per retry
    retry_max_wait_s: float = Field(default=60.0, ge=0.0)  # cap, also on Retry-After
    max_corrections: int = Field(default=2, ge=0, le=5)  # invalid replies sent back for a fix
    mode: Literal["hybrid", "params", "patch"] = "hybrid"
    hybrid_patch_after: int = Field(default=2, ge=1)  # no-improvement streak that switches to patches
    max_invalid_patches: int = Field(default=2, ge=1)  # invalid patches in a row: back to params
    baseline_first: bool = True  # cycle 1 runs the current code with the defaults, no call (CLI agents too)
    structured_output: Literal["auto", "json_schema", "json_object", "text"] = "auto"
    prompts_dir: Optional[str] = None  # folder of *.md templates overriding the packaged ones
    price_per_1k_input: float = Field(default=0.0, ge=0.0)  # USD per 1000 prompt tokens
    price_per_1k_output: float = Field(default=0.0, ge=0.0)  # USD per 1000 completion tokens
    prompt_budget_chars: int = Field(default=60_000, ge=2_000)  # the whole prompt, hard cap
    code_budget_chars: int = Field(default=24_000, ge=500)  # current best code in the prompt
    history_rows: int = Field(default=15, ge=1)  # last cycles in the history table (+ best ones)
    log_tail_chars: int = Field(default=3_000, ge=200)  # stdout/stderr tail given to the analyst


class CLIAgents(_Model):
    """``[agents.cli]``: the coding-agent CLIs claude-code, opencode, codex and aider."""

    command: Optional[str] = None  # the executable; default: claude / opencode / codex / aider
    model: Optional[str] = None  # passed as the CLI's --model
    timeout_s: float = Field(default=1800.0, gt=0.0)  # per run; the process group is killed
    kill_grace_s: float = Field(default=5.0, ge=0.0)
    allow_pip: bool = False  # let the agent run `pip install`
    allow_uv: bool = False  # let the agent run `uv pip install`
    max_turns: Optional[int] = Field(default=None, ge=1)  # claude-code only
    extra_args: list[str] = Field(default_factory=list)
    price_per_1k_input: float = Field(default=0.0, ge=0.0)  # when the CLI reports tokens but no cost
    price_per_1k_output: float = Field(default=0.0, ge=0.0)


class Agents(_Model):
    code_model: str = "builtin"  # which agent proposes: builtin, openai, claude-code, opencode, codex, aider
    analysis_model: str = "builtin"  # builtin, openai or a CLI agent name
    thinking: str = "medium"
    # Extra keys of seed 001 (opencode_model) are accepted as aliases of code_model.
    opencode_model: Optional[str] = None
    n_startup_trials: int = Field(default=5, ge=0)  # random trials before TPE models the space
    steer: bool = True  # follow the best cycle's high-confidence analysis recommendations (a random step)
    screen: bool = True  # far from the target, run each untried non-numeric categorical choice once
    llm: LLMAgent = Field(default_factory=LLMAgent)
    cli: CLIAgents = Field(default_factory=CLIAgents)


class Paths(_Model):
    workspace: str = "."
    runs: str = "./runs"
    reports: str = "./reports"
    state: str = "./state"
    # seed 001 names; accepted, unused by the loop itself
    codebase: Optional[str] = None
    data: Optional[str] = None
    logs: Optional[str] = None
    checkpoints: Optional[str] = None
    history: Optional[str] = None


class Files(_Model):
    frozen: list[str] = Field(default_factory=lambda: ["prepare.py"])
    mutable: list[str] = Field(default_factory=lambda: ["train.py"])
    # Glob patterns not copied into cycle snapshots (on top of runs/reports/state/.git).
    exclude: list[str] = Field(default_factory=lambda: ["__pycache__", "*.pyc", ".venv", "data", ".ipynb_checkpoints"])
    # Calls a code change must keep, per file: {"train.py" = ["ralph_ml.trial.report"]}; a patch
    # that drops one is rejected by the guard. None: the ralph_ml calls each mutable Python file
    # makes when the run starts (trial.params, trial.report, ...); {}: none.
    required_calls: Optional[dict[str, list[str]]] = None


class Versioning(_Model):
    # auto: commit each cycle when the workspace is a git repo; true: make it one if needed.
    git: Union[bool, Literal["auto"]] = "auto"


LOGGERS = ("none", "stdout", "tensorboard", "mlflow", "wandb")


class MlflowLogger(_Model):
    # None: sqlite:///<paths.state>/mlflow.db. A relative sqlite path is relative to the experiment root.
    tracking_uri: Optional[str] = None
    experiment: Optional[str] = None  # None: project.name
    artifact_location: Optional[str] = None  # None: <paths.state>/mlflow-artifacts (new experiments only)
    registered_model: Optional[str] = None  # None: project.name
    log_models: bool = True  # register kept cycles' checkpoints/ as model versions (alias `champion`)


class TensorboardLogger(_Model):
    log_dir: str = "runs/tensorboard"  # one sub-folder per run id


class WandbLogger(_Model):
    project: Optional[str] = None  # None: project.name
    entity: Optional[str] = None
    mode: Literal["offline", "online", "disabled"] = "offline"
    dir: Optional[str] = None  # None: <paths.state> (wandb writes <dir>/wandb/)


class Observability(_Model):
    # One name or a list among LOGGERS; the seed spec's single string still loads.
    logger: list[str] = Field(default_factory=list)
    save_stdout: bool = True
    emit_events_jsonl: bool = True
    timeline: bool = True  # reports/timeline.json (Chrome trace, open in ui.perfetto.dev)
    mlflow: MlflowLogger = Field(default_factory=MlflowLogger)
    tensorboard: TensorboardLogger = Field(default_factory=TensorboardLogger)
    wandb: WandbLogger = Field(default_factory=WandbLogger)

    @field_validator("logger", mode="before")
    @classmethod
    def _loggers(cls, v: Any) -> Any:
        names = [s.strip() for s in v.split(",") if s.strip()] if isinstance(v, str) else v
        if not isinstance(names, list):
            return v
        for n in names:
            if not isinstance(n, str) or n.lower() not in LOGGERS:
                close = difflib.get_close_matches(str(n).lower(), LOGGERS, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown logger {n!r}; choose among {', '.join(LOGGERS)}.{hint}")
        return [n.lower() for n in names if n.lower() not in ("none", "")]


class Pruning(_Model):
    """Early stopping of doomed trials from their progress reports (off by default)."""

    pruner: Literal["none", "median", "asha", "hyperband", "forecast"] = "none"
    metric: Optional[str] = None  # a key of the progress rows; default: the target metric
    direction: Optional[Direction] = None  # default: the target's, or inferred from the name
    n_startup_trials: int = Field(default=3, ge=0)  # median: finished trials before pruning
    n_warmup_steps: int = Field(default=2, ge=0)  # never prune before this step
    reduction_factor: int = Field(default=3, ge=2)  # asha / hyperband
    max_steps: Optional[int] = Field(default=None, ge=1)  # forecast: the planned last step
    max_steps_param: Optional[str] = None  # ... or read it from this param (e.g. "epochs")
    grace_s: float = Field(default=5.0, ge=0.0)  # after the stop request, then terminate
    # A trial whose progress report of the target metric meets the target stops there
    # (trial.report returns True): the run is about to stop on it. Its final evaluation decides.
    stop_at_target: bool = True


class Branching(_Model):
    """Code-changing cycles may branch from any recorded version, not only the best."""

    # Times a failed version may be handed back for a fix (the loop refuses more). The shipped
    # code agents (openai patches, coding-agent CLIs) hand back a failed code change, and a
    # failed fix in turn, until the chain of fixes is this long (0: they never fix).
    max_fix_attempts: int = Field(default=2, ge=0)
    # Their improvements build on the top_k best versions, each time the one with the fewest
    # children in flight (1: always the best; K with max_concurrency = K spreads parallel changes).
    top_k: int = Field(default=1, ge=1, le=100)


class Noise(_Model):
    """Noise-aware keeps: repeat runs with other seeds so seed luck is not mistaken for progress."""

    baseline_repeats: int = Field(default=0, ge=0, le=20)  # extra seeds for the first successful cycle
    confirm_repeats: int = Field(default=0, ge=0, le=20)  # extra seeds for a candidate new best
    z: float = Field(default=2.0, ge=0.0)  # a gain must exceed z x the noise of the difference


class Param(_Model):
    type: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list[Union[str, int, float, bool]]] = None
    default: Optional[Union[str, int, float, bool]] = None  # the baseline (cycle 1)

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty `choices` list")
            if self.default is not None and self.default not in self.choices:
                raise ValueError(f"default {self.default!r} is not one of choices {self.choices}")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs `low` and `high`")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be less than high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale parameter needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("`log` and `step` cannot be combined")
        if self.default is not None:
            if isinstance(self.default, (str, bool)):
                raise ValueError(f"default {self.default!r} is not a number")
            if not self.low <= float(self.default) <= self.high:
                raise ValueError(f"default {self.default:g} is outside [{self.low:g}, {self.high:g}]")
        return self


class Config(_Model):
    project: Project
    data: Data = Field(default_factory=Data)
    safeguards: Safeguards = Field(default_factory=Safeguards)
    execution: Execution = Field(default_factory=Execution)
    agents: Agents = Field(default_factory=Agents)
    paths: Paths = Field(default_factory=Paths)
    files: Files = Field(default_factory=Files)
    versioning: Versioning = Field(default_factory=Versioning)
    observability: Observability = Field(default_factory=Observability)
    pruning: Pruning = Field(default_factory=Pruning)
    noise: Noise = Field(default_factory=Noise)
    branching: Branching = Field(default_factory=Branching)
    search_space: dict[str, Param] = Field(default_factory=dict)

    @field_validator("search_space")
    @classmethod
    def _names(cls, v: dict[str, Param]) -> dict[str, Param]:
        for name in v:
            if not name.isidentifier():
                raise ValueError(f"parameter name {name!r} must be an identifier (letters, digits, _)")
        return v

    # Filled by load_config: the file and the folder paths are relative to.
    _source: Optional[Path] = None

    @property
    def source(self) -> Path:
        if self._source is None:
            raise ConfigError("this configuration was not loaded from a file")
        return self._source

    @property
    def root(self) -> Path:
        return self.source.parent

    def path(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return (p if p.is_absolute() else self.root / p).resolve()

    def executor_options(self) -> dict[str, Any]:
        """Keyword arguments for ``get_executor(execution.mode, ...)`` from the mode's sub-table."""
        ex = self.execution
        if ex.mode == "ray":
            return ex.ray.model_dump()
        if ex.mode == "slurm":
            return {**ex.slurm.model_dump(), "folder": str(self.path(ex.slurm.folder))}
        if ex.preload:
            return {"preload": list(ex.preload), "workspace": self.path(self.paths.workspace),
                    "preload_log": self.path(self.paths.state) / "preload.log"}
        return {}

    @property
    def target(self) -> TargetMetric:
        return self.project.target_metric

    @property
    def stops_at_target(self) -> bool:
        """Trials stop at the step their reported target metric meets the target: ``pruning.
        stop_at_target``, except with noise-aware keeps, whose mean over seeds needs every run of
        a configuration trained alike (a run stopped at its first crossing is a lucky high)."""
        return self.pruning.stop_at_target and not (self.noise.baseline_repeats or self.noise.confirm_repeats)

    @property
    def pruning_metric(self) -> str:
        """The progress key the pruner reads: ``pruning.metric``, else the target metric."""
        return self.pruning.metric or self.target.name

    @property
    def agent_name(self) -> str:
        return self.agents.opencode_model if self.agents.code_model == "builtin" and self.agents.opencode_model else self.agents.code_model


def find_config(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for name in CONFIG_NAMES:
        if (here / name).is_file():
            return here / name
    raise ConfigError(
        f"no configuration file in {here} (looked for {', '.join(CONFIG_NAMES)}). "
        "Create one with `ralph-ml init`, or pass --config FILE."
    )


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            import yaml  # type: ignore[import-untyped,unused-ignore]

            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not valid {suffix[1:].upper()}: {exc}") from None
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"{path} could not be parsed: {exc}") from None
    raise ConfigError(f"{path}: unsupported config format {suffix!r}; use .toml, .yaml/.yml or .json")


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (for did-you-mean)."""
    model: Any = Config
    for part in loc[:-1]:
        if model is Config and part == "search_space":
            model = "space"
            continue
        if model == "space":
            model = Param
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        f = model.model_fields.get(str(part))
        if f is None:
            return None
        ann = f.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_error(path: Path, exc: ValidationError, raw: Any) -> str:
    lines = [f"{path}: invalid configuration ({exc.error_count()} problem{'s' if exc.error_count() > 1 else ''}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            model = _model_at(loc)
            valid = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
            valid_s = f" Valid keys here: {', '.join(valid)}." if valid else ""
            lines.append(f"  - unknown key '{key}' (value {value!r}).{hint}{valid_s}")
        elif err["type"] == "missing":
            lines.append(f"  - missing required key '{key}'.")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  - '{key}' = {value!r}: {msg}.")
    return "\n".join(lines)


def load_config(path: str | Path | None = None) -> Config:
    """Load and validate a config file; raise ConfigError with every problem listed."""
    p = Path(path).expanduser().resolve() if path else find_config()
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist. Create one with `ralph-ml init`, or check --config.")
    raw = _read(p)
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a table/mapping of sections, got {type(raw).__name__}")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(p, exc, raw)) from None
    cfg._source = p
    return cfg
