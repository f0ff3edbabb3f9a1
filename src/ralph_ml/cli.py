"""`ralph-ml` commands. Maps RalphError subclasses to exit codes; the only place that exits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import control
from .config import Config, find_config, load_config
from .errors import ConfigError, RalphError, StateError
from .records import STOPPED_EARLY, partial_value

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="ralph-ml: improve a training project autonomously, under safeguards.",
    pretty_exceptions_enable=False,
)
console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

TEMPLATES_DIR = Path(__file__).parent / "templates"

ConfigOpt = typer.Option(None, "--config", "-c", help="Config file (default: ralph.toml/.yaml/.json in the current folder).")


def _fail(exc: RalphError) -> None:
    err.print(f"[bold red]error:[/] {exc}", markup=True, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


def _cfg(config: Optional[Path]) -> Config:
    return load_config(config) if config else load_config(find_config())


def _cfg_from_state(state: Optional[Path], config: Optional[Path]) -> Config:
    if config or not state:
        return _cfg(config)
    if not state.exists():
        raise StateError(f"state file {state} does not exist; run `ralph-ml start` first, or pass --config")
    data = json.loads(state.read_text())
    return load_config(data["config_path"])


# ----------------------------------------------------------------------------- output
def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class LinePrinter:
    """Plain line-per-event output (the live terminal view builds on the same events)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        # With several cycles in flight their lines interleave: each line then names its cycle.
        self.tagged = cfg.execution.max_concurrency > 1

    def _of(self, d: dict[str, Any], pre: str) -> str:
        """`` cycle N`` (after ``pre``) on the lines of a cycle, when several run at once."""
        return f"{pre}cycle {d['cycle']}" if self.tagged and d.get("cycle") is not None else ""

    def _lead(self, d: dict[str, Any]) -> str:
        """``cycle N: `` at the start of a cycle's result lines, when several run at once."""
        tag = self._of(d, "")
        return f"{tag}: " if tag else ""

    def __call__(self, kind: str, d: dict[str, Any]) -> None:
        p = console.print
        if kind == "run_started":
            how = f"resumed with {d.get('cycles', 0)} recorded cycles" if d.get("resumed") else "started"
            p(f"[bold]run {d['run_id']} {how}[/] · target {d['target']}")
        elif kind == "cycle_started":
            params = d["proposal"].get("params") or {}
            extra = " (recovering the interrupted cycle)" if d.get("recovering") else ""
            p(f"\n[bold][CYCLE {d['cycle']} STARTED][/]{extra}")
            p(f"└─ Proposal: {d['proposal'].get('rationale', '')}")
            meta = d["proposal"].get("meta") or {}
            if meta.get("fix_of") is not None:
                p(f"   → fix of cycle {meta['fix_of']}, built on its failed code")
            elif meta.get("parent") is not None and d["proposal"].get("patch"):
                p(f"   → on version {meta['parent']}" + (f" ({meta['base']})" if meta.get("base") else ""))
            if params:
                p("   → " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()))
        elif kind == "recovered":
            p(f"└─ Recovered cycle {d['cycle']}: {d['how']}")
        elif kind == "trial_started":
            p(f"└─ Training{self._of(d, ' ')} (time limit {d['timeout_s']:.0f} s)...")
        elif kind == "trial_ended":
            p(f"   {self._lead(d)}trial {d['status']} in {d['duration_s']:.1f} s")
        elif kind == "manual":
            p(f"└─ Manual {d['action']} honoured")
        elif kind == "repeats":  # noise-aware keeps: the cycle is about to be re-run with other seeds
            seed, n = self.cfg.project.seed, int(d.get("n") or 0)
            seeds = f"seed{'s' if n > 1 else ''} " + ", ".join(str(seed + k) for k in range(1, n + 1))
            beats = f"beats the best ({_fmt(d.get('best'))}, cycle {d.get('best_cycle')})"
            if d.get("waiting_for") is not None:  # another candidate is being confirmed: judged after it
                why = f"{beats}: judged again once cycle {d['waiting_for']}'s re-runs are recorded"
            elif d.get("reason") == "confirm":
                why = f"{beats}: re-run with {seeds} before it is kept"
            else:
                why = f"is the first result: re-run with {seeds} to measure the run-to-run noise"
            p(f"   {self._lead(d)}{self.cfg.target.name} {_fmt(d.get('first'))} {why}")
        elif kind == "noise":  # the cycle re-run with other seeds (noise-aware keeps)
            reps = d.get("repeats") or []
            if not reps:
                p(f"   {self._lead(d)}re-run with another seed did not end: the gain is unconfirmed")
            else:
                seed = self.cfg.project.seed  # the repeats ran with seed + 1, seed + 2, ...
                seeds = ", ".join(str(seed + k) for k in range(len(reps) + 1))
                runs = ", ".join(f"{v:.4f}" for v in [d["first"], *reps])
                sigma = d.get("noise_std")
                p(f"   {self._lead(d)}seeds {seeds}: {runs} → mean {d['mean']:.4f}"
                  + (f" (run-to-run noise σ {sigma:.4g})" if isinstance(sigma, (int, float)) else ""))
        elif kind == "cycle_recorded":
            name = self.cfg.target.name
            metric = d["metric"]
            mark = {"kept": "[green]✓ kept[/]", "discarded": "discarded", "below_gate": "[yellow]below gate[/]"}.get(
                d["verdict"], f"[red]{d['verdict']}[/]"
            )
            if metric is None and d["verdict"] in STOPPED_EARLY:  # not a failure
                result = (d.get("record") or {}).get("result") or {}
                step, part = result.get("stopped_at_step"), partial_value(d["verdict"], result.get("metrics") or {}, name)
                line = f"[magenta]{d['verdict']}[/]" + (f" at step {step}" if step is not None else "")
                if part is not None:
                    line += f" · {name}: {part:.4f} when stopped"
            else:
                val = f"{name}: {metric:.4f}" if metric is not None else (
                    d["status"] if d.get("failure") in (None, "none") else f"{d['status']} ({d['failure']})")
                line = f"{val} · {mark}"
            p(f"   {self._lead(d)}{line}")
            if metric is None and d.get("message"):
                p(f"   [dim]{d['message'].splitlines()[0][:200]}[/]")
            p(f"└─ Analysis{self._of(d, ' of ')}: {d['diagnosis']}")
            for r in d.get("recommendations", []):
                p(f"   → {r['action']} ({r['confidence']}): {r['rationale']}")
            dd = d["decision"]
            p(f"└─ Decision{self._of(d, ' after ')}: {dd['action']} · {dd.get('message', '')}")
        elif kind == "run_stopped":
            dd = d["decision"]
            head = "[TARGET MET!]" if dd.get("reason") == "target_met" else f"[STOPPED: {dd.get('reason')}]"
            p(f"\n[bold]{head}[/] {dd.get('message', '')}")
            p(f"Report saved to: {d['report']} (exit {d['exit_code']})")


def _install_signal_stop(state_dir: Path, notify: Any = None) -> None:
    """First Ctrl-C / SIGTERM asks for a clean stop (trial cancelled, cycle recorded); the second is immediate.

    ``notify(message)`` replaces the message on stderr (the live view shows it in its own frame).
    """
    hits = {"n": 0}

    def handler(signum: int, frame: Any) -> None:
        hits["n"] += 1
        if hits["n"] > 1:
            raise KeyboardInterrupt
        control.send(state_dir, "stop")
        msg = f"{signal.Signals(signum).name}: stopping after cancelling the running trial (again to abort)"
        if notify is not None:
            notify(msg)
        else:
            err.print("\n" + msg)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


PlainOpt = typer.Option(False, "--plain", help="Line-per-event output even on a terminal (always so when stdout is not one).")


def _live_ok(plain: bool) -> bool:
    """The live view needs a real terminal; CI, nohup and log files get plain lines."""
    return not plain and console.is_terminal and not console.is_dumb_terminal


def _run(loop_factory: Any, cfg: Config, plain: bool = False) -> None:
    from .loop import Loop

    if not _live_ok(plain):
        _install_signal_stop(cfg.path(cfg.paths.state))
        loop: Loop = loop_factory(cfg, LinePrinter(cfg))
        d = loop.run()
        raise typer.Exit(d.exit_code)
    from .live import EventQueue, LiveDisplay, RunView

    view = RunView.for_config(cfg)
    view.seed_from_journal()
    queue = EventQueue()  # the loop's callback only appends; the display thread renders
    _install_signal_stop(cfg.path(cfg.paths.state), notify=queue.notice)
    display = LiveDisplay(view, console, queue.drain).start()
    try:
        loop = loop_factory(cfg, queue)
        d = loop.run()
    finally:
        display.close()
    if view.stopped is not None:
        LinePrinter(cfg)("run_stopped", view.stopped)
    raise typer.Exit(d.exit_code)


# ----------------------------------------------------------------------------- commands
@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="Folder to create the experiment in."),
    template: str = typer.Option("digits", "--template", "-t", help="Template name: " + ", ".join(sorted(p.name for p in TEMPLATES_DIR.iterdir() if p.is_dir() and not p.name.startswith("_")))),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Use this config file instead of the template's."),
    force: bool = typer.Option(False, "--force", help="Overwrite files that already exist."),
) -> None:
    """Create an experiment folder from a template (runnable offline)."""
    try:
        src = TEMPLATES_DIR / template
        names = sorted(p.name for p in TEMPLATES_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
        if not src.is_dir():
            raise ConfigError(f"unknown template {template!r}; available: {', '.join(names)}")
        directory.mkdir(parents=True, exist_ok=True)
        files = [p for p in sorted(src.iterdir()) if p.is_file() and p.name != "__init__.py"]
        if config:
            if not config.is_file():
                raise ConfigError(f"--config {config} does not exist")
            files = [p for p in files if p.name != "ralph.toml"] + [config]
        clash = [p.name for p in files if (directory / p.name).exists()]
        if clash and not force:
            raise ConfigError(f"{directory} already has {', '.join(clash)}; pass --force to overwrite, or pick another folder")
        for p in files:
            shutil.copy2(p, directory / p.name)
        load_config(directory / (config.name if config else "ralph.toml"))
    except RalphError as exc:
        _fail(exc)
    console.print(f"created experiment in {directory} from template '{template}':")
    for p in files:
        console.print(f"  {p.name}")
    console.print(f"next: cd {directory} && ralph-ml validate && ralph-ml start")


@app.command()
def validate(config: Optional[Path] = ConfigOpt) -> None:
    """Check the config and the workspace; nothing runs."""
    from .checks import check_workspace

    try:
        cfg = _cfg(config)
    except RalphError as exc:
        _fail(exc)
    rep = check_workspace(cfg, history=True)
    console.print(f"config: {cfg.source} [green]ok[/]")
    console.print(f"target: {cfg.target.describe()}")
    console.print(f"agent: {cfg.agent_name} · search space: {', '.join(cfg.search_space) or '(empty)'}")
    for line in rep.info:
        console.print(f"  {line}")
    for w in rep.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    for e in rep.errors:
        err.print(f"[red]error:[/] {e}")
    if not rep.ok:
        raise typer.Exit(4)
    console.print("[green]ready[/]: `ralph-ml start` runs it")


@app.command()
def start(config: Optional[Path] = ConfigOpt, plain: bool = PlainOpt) -> None:
    """Start a run: cycles until a stop rule fires (exit 0 target met/manual, 2 safeguard, 3 plateau, 4 error)."""
    from .loop import Loop

    try:
        cfg = _cfg(config)
        _run(Loop.start, cfg, plain)
    except RalphError as exc:
        _fail(exc)


@app.command()
def resume(
    state: Optional[Path] = typer.Option(None, "--state", help="state/ralph_state.json of the run to resume."),
    config: Optional[Path] = ConfigOpt,
    plain: bool = PlainOpt,
) -> None:
    """Continue a run after a crash, a stop, or a change of safeguards."""
    from .loop import Loop

    try:
        cfg = _cfg_from_state(state, config)
        _run(Loop.resume, cfg, plain)
    except RalphError as exc:
        _fail(exc)


@app.command(name="try")
def try_(
    params: Optional[str] = typer.Option(None, "--params", help='Hyperparameters as JSON, e.g. \'{"lr": 0.01}\'; the rest keep their defaults.'),
    patch: Optional[Path] = typer.Option(None, "--patch", help="A unified diff to apply to the mutable files first (through the guards)."),
    seeds: int = typer.Option(1, "--seeds", min=1, max=100, help="Run it with this many seeds (project.seed + 0, 1, ...) and measure the run-to-run noise."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Run one trial outside any run and say what the loop would see (exit 0 ok, 1 no score, 4 bad input)."""
    from .trying import parse_params, try_seeds

    try:
        cfg = _cfg(config)
        values = parse_params(params, cfg)
        text = None
        if patch is not None:
            try:
                text = patch.read_text()
            except OSError as exc:
                raise ConfigError(f"--patch {patch}: cannot be read ({exc})") from None
        tried = try_seeds(cfg, values, text, seeds=seeds, say=lambda line: console.print(line, markup=False, soft_wrap=True))
    except RalphError as exc:
        _fail(exc)
    raise typer.Exit(max(t.exit_code for t in tried))


@app.command()
def watch(config: Optional[Path] = ConfigOpt, plain: bool = PlainOpt) -> None:
    """Follow a run started elsewhere, read-only (the live view, or lines with --plain); exit with its exit code."""
    from .live import EventQueue, LiveDisplay, RunView
    from .runfiles import follow_run

    try:
        cfg = _cfg(config)
        if not _live_ok(plain):
            printer = LinePrinter(cfg)

            def deliver(events: list[dict[str, Any]]) -> None:
                for ev in events:
                    printer(str(ev.get("kind")), ev)

            code = follow_run(cfg, deliver)
        else:
            view = RunView.for_config(cfg)
            view.seed_from_journal()
            queue = EventQueue()
            display = LiveDisplay(view, console, queue.drain, show_waiting=True).start()
            try:
                code = follow_run(cfg, queue.extend)
            finally:
                display.close()
            if view.stopped is not None:
                LinePrinter(cfg)("run_stopped", view.stopped)
    except RalphError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    raise typer.Exit(code)


@app.command()
def dashboard(
    port: int = typer.Option(8765, "--port", help="Port to listen on (0: any free port)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; the default is reachable from this machine only."),
    root: Optional[list[Path]] = typer.Option(None, "--root", help="An experiment folder, or a folder of experiments; repeat for several (default: the current folder)."),
) -> None:
    """Serve a read-only web dashboard: runs, cycle table, charts, phase and the running trial's log."""
    from .dashboard import make_server

    roots = [p.resolve() for p in (root or [Path.cwd()])]
    try:
        server = make_server(roots, host=host, port=port)
    except OSError as exc:
        _fail(ConfigError(f"cannot listen on {host}:{port} ({exc}); pick another --port (0 = any free port)"))
    n = len(server.store.discover())
    console.print(f"dashboard: {server.url} · {n} run(s) under {', '.join(map(str, roots))} · read-only; Ctrl-C stops it", soft_wrap=True)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    config: Optional[Path] = ConfigOpt,
    state: Optional[Path] = typer.Option(None, "--state"),
) -> None:
    """Cycle, phase, best so far, stop rules and budgets left."""
    try:
        cfg = _cfg_from_state(state, config)
        path = cfg.path(cfg.paths.state) / "ralph_state.json"
        if not path.exists():
            raise StateError(f"no run yet: {path} does not exist. Start one with `ralph-ml start`.")
        data = json.loads(path.read_text())
    except RalphError as exc:
        _fail(exc)
    alive = _pid_alive(int(data.get("pid", 0))) if data.get("status") in ("running", "paused") else False
    if data.get("status") in ("running", "paused") and not alive:
        data["status"] = "interrupted"
    data["loop_alive"] = alive
    data["in_flight_progress"] = _in_flight_progress(cfg, data)
    if as_json:
        console.print_json(json.dumps(data))
        return
    t = Table(title=f"ralph-ml run {data['run_id']}", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    tgt = data["target"]
    op = ">=" if tgt["direction"] == "maximize" else "<="
    t.add_row("status", data["status"] + (" (resume with `ralph-ml resume`)" if data["status"] == "interrupted" else ""))
    flying = data.get("in_flight") or []
    t.add_row("cycle / phase", f"{data['cycle']} / {data['phase']}"
              + (f" · in flight: cycles {', '.join(map(str, flying))}" if len(flying) > 1 else ""))
    t.add_row("target", f"{tgt['name']} {op} {tgt['value']}")
    progress = data["in_flight_progress"]
    if progress:
        t.add_row("in flight", "; ".join(
            f"cycle {c}: " + ("no progress reported" if p is None else f"{tgt['name']} {p['value']:.4g}"
                              + (f" at step {p['step']}" if p["step"] is not None else ""))
            for c, p in progress.items()))
    b = data.get("best")
    stop_note = f" (stopped at step {b['stopped_at_step']}, where it met the target)" if b and b.get("stopped_at_step") is not None else ""
    t.add_row("best", "none yet" if not b else f"{b['metric']:.6g} at cycle {b['cycle']}{stop_note}")
    t.add_row("verdicts", ", ".join(f"{k}: {v}" for k, v in data.get("verdicts", {}).items()) or "-")
    bud = data["budgets"]
    sg = data["safeguards"]
    t.add_row("cycles", f"{bud['cycles_used']} used, {bud['cycles_left']} left (max {sg['max_cycles']})")
    streak, limit = bud["no_improvement_streak"], sg["no_improvement_stop_cycles"]
    # With cycles in flight, one recorded after the plateau stop makes the streak pass the limit.
    delta = f"min delta {sg['min_improvement_delta']}"
    t.add_row("no improvement", f"{streak} of {limit} cycles ({delta})" if streak <= limit
              else f"{streak} cycles ({delta}; the plateau rule stops at {limit})")
    rules = [f"target {tgt['name']} {op} {tgt['value']}", f"max {sg['max_cycles']} cycles",
             f"plateau after {sg['no_improvement_stop_cycles']} cycles < {sg['min_improvement_delta']}",
             f"circuit breaker after {sg['max_consecutive_failures']} identical failures",
             f"{sg['time_limit_per_cycle_minutes']} min per cycle"]
    if sg.get("total_time_limit_minutes"):
        rules.append(f"{sg['total_time_limit_minutes']} min in all")
    if sg.get("min_validation_gate") is not None:
        rules.append(f"validation gate {sg['min_validation_gate']} within {sg['validation_gate_cycles']} cycles")
    if sg.get("token_budget_total") is not None:
        rules.append(f"{sg['token_budget_total']} tokens")
    if sg.get("cost_budget_usd") is not None:
        rules.append(f"${sg['cost_budget_usd']}")
    t.add_row("stop rules", "; ".join(rules))
    t.add_row("time", f"{data['elapsed_s']:.0f} s elapsed" + (f", {bud['time_left_s']:.0f} s left" if bud.get("time_left_s") is not None else "") + f"; {sg['time_limit_per_cycle_minutes']} min per cycle")
    t.add_row("tokens", f"{bud['tokens_used']} used" + (f", {bud['tokens_left']} left" if bud.get("tokens_left") is not None else ""))
    t.add_row("cost", f"${bud['cost_used_usd']:.4f}" + (f", ${bud['cost_left_usd']:.4f} left" if bud.get("cost_left_usd") is not None else ""))
    for name, why in (data.get("sink_failures") or {}).items():
        t.add_row(f"sink {name}", f"[yellow]off[/]: {why}")
    if data.get("stop"):
        s = data["stop"]
        t.add_row("stopped", f"{s['reason']} (exit {s['exit_code']}): {s['message']}")
    console.print(t)


def _in_flight_progress(cfg: Config, data: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
    """Each cycle in flight: the last value of the target metric its progress rows report, and
    its step (None: nothing reported yet)."""
    from .journal import cycle_folder
    from .pruning import last_reported

    out: dict[str, dict[str, Any] | None] = {}
    for c in data.get("in_flight") or []:
        seen = last_reported(cfg.path(cfg.paths.runs) / cycle_folder(int(c)) / "progress.jsonl", cfg.target.name)
        out[str(c)] = None if seen is None else {"step": seen[0], "value": seen[1]}
    return out


def _send(action: str, config: Optional[Path]) -> None:
    try:
        cfg = _cfg(config)
        path = control.send(cfg.path(cfg.paths.state), action)
    except RalphError as exc:
        _fail(exc)
    console.print(f"{action} requested ({path}); the loop honours it within a second")


@app.command()
def stop(config: Optional[Path] = ConfigOpt) -> None:
    """Stop the run: the running trial is cancelled and recorded, the report written (exit 0)."""
    _send("stop", config)


@app.command()
def pause(config: Optional[Path] = ConfigOpt) -> None:
    """Pause the run (the running trial is suspended; its time limit does not run while paused)."""
    _send("pause", config)


@app.command()
def unpause(config: Optional[Path] = ConfigOpt) -> None:
    """Resume a paused run."""
    _send("unpause", config)


@app.command()
def report(
    run: Optional[Path] = typer.Option(None, "--run", help="The runs folder (its experiment's config is used)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the markdown report."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Write final_report.md, report.html, progress.png, leaderboard.json, versions.json (and
    timeline.json) from the journal."""
    from .report import build_report

    try:
        if config is None and run is not None:
            cfg = load_config(find_config(run.resolve().parent))
        else:
            cfg = _cfg(config)
        files = build_report(cfg, out.resolve() if out else None)
    except RalphError as exc:
        _fail(exc)
    console.print(f"report: {files.markdown}\nhtml: {files.html}\nleaderboard: {files.leaderboard}")
    if files.progress_png:
        console.print(f"chart: {files.progress_png}")
    if files.timeline:
        console.print(f"timeline: {files.timeline} (open in ui.perfetto.dev or chrome://tracing)")
    for note in files.notes:
        console.print(f"[yellow]note:[/] {note}")


@app.command()
def best(
    apply: bool = typer.Option(False, "--apply", help="Copy the best cycle's mutable files into the workspace."),
    config: Optional[Path] = ConfigOpt,
) -> None:
    """Show the best cycle (params, code folder, git tag); --apply checks its code out into the workspace."""
    from .decision import best_of
    from .journal import cycle_folder, replay

    try:
        cfg = _cfg(config)
        rp = replay(cfg.path(cfg.paths.state) / "journal.jsonl")
    except RalphError as exc:
        _fail(exc)
    b = best_of(rp.records)
    if b is None:
        err.print("no kept cycle yet")
        raise typer.Exit(1)
    code = cfg.path(cfg.paths.runs) / cycle_folder(b.cycle) / "code"
    console.print(f"best: cycle {b.cycle} · {cfg.target.name} = {b.metric:.10g}")
    console.print(f"params: {json.dumps(b.proposal.params)}")
    console.print(f"code: {code}")
    if b.commit:
        console.print(f"git: {b.commit} (tag ralph/{rp.run['run_id']}/best)")
    if apply:
        ws = cfg.path(cfg.paths.workspace)
        for rel in cfg.files.mutable:
            if (code / rel).is_file():
                shutil.copy2(code / rel, ws / rel)
                console.print(f"copied {rel} → {ws / rel}")
        (ws / "best_params.json").write_text(json.dumps(b.proposal.params, indent=2) + "\n")
        console.print(f"wrote {ws / 'best_params.json'}")


def main() -> None:
    try:
        app()
    except RalphError as exc:  # pragma: no cover - commands already map these
        err.print(f"error: {exc}")
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
