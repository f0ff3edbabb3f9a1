"""The local executor's sentinel: it stops the trials of a loop that died.

``python -m ralph_ml._sentinel``, started by the local executor with its first trial, in a
session of its own, its stdin a pipe from the loop. The loop writes the folder of each trial
it starts (a cycle, a noise repeat), one per line. When the pipe closes, the loop has ended:
it closed its executor, raised, or was killed (``kill -9``, the out-of-memory killer). The
sentinel then stops what still runs of every trial that did not finish (it has no
``result.json``) as ``ralph-ml resume`` does (``executors.local.reap_orphans``: the process
group while its leader is the same process, and whatever carries the trial's token), and
exits. Without it, the trials of a loop killed with ``kill -9`` ran on to their end, holding
their CPUs and GPUs, though a resume runs them again.

Only the stdlib is imported until the pipe closes, so it waits in a few MB of memory.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def main() -> int:
    # Ctrl-C in the loop's terminal and a hang-up are the loop's to handle: the sentinel acts
    # when the loop is gone, whatever ended it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    watched: dict[str, None] = {}  # in the order started; a cycle run again is watched once
    for line in sys.stdin.buffer:
        path = line.decode("utf-8", errors="surrogateescape").rstrip("\n")
        if path:
            watched[path] = None
    from .executors.local import RESULT_FILE, reap_orphans

    for path in watched:
        folder = Path(path)
        if (folder / RESULT_FILE).exists():  # finished: nothing of it runs
            continue
        try:
            killed = reap_orphans(folder)
        except Exception as exc:  # one unreadable trial.json must not spare the others
            print(f"ralph-ml sentinel: could not stop the trial in {folder}: {exc}", file=sys.stderr)
            continue
        if killed:
            print(f"ralph-ml sentinel: the loop ended; killed {killed} process(es) of the trial in {folder}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
