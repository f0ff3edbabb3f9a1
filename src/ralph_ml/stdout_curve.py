"""Learning curves printed on stdout, for training scripts that do not call ``trial.report``.

With ``execution.stdout_progress = "epoch"`` the trial's handle reads the lines ``train_cmd``
prints to ``logs/stdout.log`` while it runs and appends one ``progress.jsonl`` row per line
that carries metrics, as ``trial.report`` would: the pruners, the live view, ``ralph-ml
status``, the built-in agent's view of trials in flight and the report's learning curves then
work on an unmodified script. The step is the value of the named key, in any of the forms
scripts print it::

    epoch 3 train_loss=0.41 val_accuracy=0.83      one line: the step and its metrics
    epoch 3/30 | train_loss 0.41 | val_accuracy 0.83    the same with separators
    Epoch 3/10                                      Keras: the step, then a line of metrics
    45/45 - 0s - accuracy: 0.91 - loss: 0.30 - val_accuracy: 0.88 - val_loss: 0.41
    {'eval_loss': 0.52, 'eval_accuracy': 0.8, 'epoch': 3.0}    a printed dict

A line's metrics are every ``name: value`` / ``name=value`` pair in it (a name starts with a
letter or ``_``; quotes around it are allowed); a line with none is split at its separators
(``|``, `` - ``, ``,``, ``;``), and each part that is a name and a number and nothing
else is a pair (``train_loss 0.41``). A line without the step counts only after a
line that named the step and nothing else (the header above); other lines, such as a summary
printed after the curve, and lines whose step is not a whole number (``'epoch': 0.5``), are
skipped. A progress bar's carriage-return
updates count once, by the text after the last ``\\r``; terminal colour codes are ignored.
Such a script cannot hear a stop request: a pruned one is terminated ``pruning.grace_s``
after it, and its last row is its partial result.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .metrics import NUMBER
from .trial import append_progress, progress_row

STDOUT_PROGRESS_VAR = "RALPH_STDOUT_PROGRESS"  # the step key, set in the trial's environment

_PAIR = re.compile(rf"""(?<![\w.])['"]?([A-Za-z_][\w./-]*)['"]?\s*[:=]\s*({NUMBER})(?![\w.])""", re.IGNORECASE)
# `train_loss 0.41` as a segment of its own between separators (`|`, ` - `, `,`, `;`): a
# name and a number and nothing else, so prose ("loaded 5000 samples") is not read as a metric.
_SEGMENTS = re.compile(r"\s*(?:\||\s-\s|,|;)\s*")
_SPACED_PAIR = re.compile(rf"""['"]?([A-Za-z_][\w./-]*)['"]?\s+({NUMBER})(?:\s*/\s*\d+)?""", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_READ_MAX = 4 << 20  # bytes read per pump: a chatty script is followed over several pumps
_LINE_MAX = 64 << 10  # a longer "line" (no newline in sight) is dropped, not buffered forever


class LogFollower:
    """The lines appended to a growing log file since the last call, decoded, with a progress
    bar's ``\r`` updates reduced to their last text and terminal colour codes removed."""

    def __init__(self, path: Path, *, from_end: bool = False) -> None:
        self.path = path
        self._offset = 0
        if from_end:  # what is there already (an earlier attempt's lines) is not followed
            try:
                self._offset = path.stat().st_size
            except OSError:
                pass
        self._partial = b""

    def lines(self, final: bool = False) -> list[str]:
        """New complete lines; ``final``: the writer is done, so a last line without its newline too."""
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        data = b""
        while self._offset < size:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(min(_READ_MAX, size - self._offset))
            if not chunk:
                break
            self._offset += len(chunk)
            data += chunk
            if not final:
                break
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        elif len(self._partial) > _LINE_MAX:
            self._partial = b""
        return [strip_ansi(raw.decode("utf-8", "replace").rstrip("\r").rsplit("\r", 1)[-1]) for raw in lines]


def strip_ansi(line: str) -> str:
    return _ANSI.sub("", line)


class StdoutCurve:
    """Appends progress rows for the lines of ``log`` written after it was created."""

    def __init__(self, log: Path, progress: Path, step_key: str) -> None:
        self.log = log
        self.progress = progress
        self.key = step_key
        self._spaced = re.compile(rf"(?<![\w.]){re.escape(step_key)}\s+(\d+)(?:\s*/\s*\d+)?(?![\w.])", re.IGNORECASE)
        self._follower = LogFollower(log, from_end=True)  # an earlier attempt's lines are not this trial's curve
        self.step: int | None = None
        self._open = False  # the last step was named on a line of its own (Keras's `Epoch 3/10`)
        self.rows = 0

    def pump(self, final: bool = False) -> int:
        """Read what was printed since the last call; append its rows. ``final``: the command
        has ended, so a last line without its newline counts too. Returns the rows appended."""
        out = [json.dumps(row, allow_nan=False) + "\n" for line in self._follower.lines(final) if (row := self.parse(line))]
        if out:
            append_progress(self.progress, "".join(out))
            self.rows += len(out)
        return len(out)

    def parse(self, line: str) -> dict[str, Any] | None:
        """The row one printed line makes (updating the current step), or None."""
        metrics: dict[str, float] = {}
        step: float | None = None
        pairs = _PAIR.findall(line) or [m.groups() for seg in _SEGMENTS.split(line) if (m := _SPACED_PAIR.fullmatch(seg.strip()))]
        for name, value in pairs:
            number = float(value)
            if name.lower() == self.key.lower():
                step = number
            else:
                metrics[name] = number
        if step is None and (m := self._spaced.search(line)):
            step = float(m.group(1))
        if step is not None:
            if not math.isfinite(step) or step != int(step):
                return None  # 'epoch': 0.5, a logging step inside an epoch: not a point of the curve
            self.step = int(step)
            self._open = not metrics  # a header (`Epoch 3/10`): the lines that follow carry its metrics
        elif not self._open:
            return None  # no step named, and none open: e.g. the script's summary after its curve
        if not metrics or self.step is None:
            return None
        return progress_row(self.step, metrics)  # step/time named in the line give way to the row's own
