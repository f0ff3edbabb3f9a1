"""TensorBoard event files under ``<observability.tensorboard.log_dir>/<run_id>/``:

- ``cycles/<metric>``        every result metric per cycle (x = cycle), plus
  ``cycles/best_<target>``, ``cycles/duration_s`` and ``cycles/kept``
- ``cycle_NNNN/<metric>``    each progress.jsonl row of that cycle (x = reported step)
- text ``cycle_NNNN``         verdict, status, params; text ``run``: why the run stopped

View: ``tensorboard --logdir runs/tensorboard``.

Written with TensorBoard's own protobuf messages and the TFRecord framing below, not with
tensorboardX or torch.utils.tensorboard: both import torch when it is installed (seconds
and hundreds of MB in the loop process, which must stay framework-agnostic).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, BinaryIO

from ..config import Config
from .base import CycleData, MarkerFile, TrackingSink


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated and offset."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """Appends ``Event`` protos to ``events.out.tfevents.<time>.<host>.<pid>`` (one file per session)."""

    def __init__(self, folder: Path) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2  # type: ignore[import-untyped,unused-ignore]

        self._event, self._summary = event_pb2.Event, summary_pb2
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.ralph"
        self._fh: BinaryIO = open(self.path, "ab")
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._fh.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))

    def scalar(self, tag: str, value: float, step: int, wall_time: float | None = None) -> None:
        summary = self._summary.Summary(value=[self._summary.Summary.Value(tag=tag, simple_value=float(value))])
        self._write(self._event(wall_time=wall_time or time.time(), step=step, summary=summary))

    def text(self, tag: str, text: str, step: int, wall_time: float | None = None) -> None:
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2  # type: ignore[import-untyped,unused-ignore]

        meta = self._summary.SummaryMetadata(plugin_data=self._summary.SummaryMetadata.PluginData(plugin_name="text"))
        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[text.encode()],
                                        tensor_shape=tensor_shape_pb2.TensorShapeProto())
        summary = self._summary.Summary(value=[self._summary.Summary.Value(tag=tag, metadata=meta, tensor=tensor)])
        self._write(self._event(wall_time=wall_time or time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class TensorboardSink(TrackingSink):
    name = "tensorboard"
    extra = "tensorboard"

    def __init__(self, cfg: Config, run_id: str) -> None:
        super().__init__(cfg, run_id)
        self.log_dir = cfg.path(cfg.observability.tensorboard.log_dir) / run_id
        self.marker = MarkerFile(self.log_dir / ".ralph_logged.json")
        self.writer: EventFile | None = None

    def open(self, resumed: bool) -> None:
        self.writer = EventFile(self.log_dir)

    def logged_cycles(self) -> set[int]:
        return self.marker.read()

    def log_cycle(self, d: CycleData) -> None:
        w, r, t = self.writer, d.record, self.cfg.target
        assert w is not None
        wall = r.result.ended_at or None
        for k, v in d.finite_metrics().items():
            w.scalar(f"cycles/{k}", v, d.cycle, wall)
        if d.best is not None and d.best.metric is not None:
            w.scalar(f"cycles/best_{t.name}", float(d.best.metric), d.cycle, wall)
        w.scalar("cycles/duration_s", r.result.duration_s, d.cycle, wall)
        w.scalar("cycles/kept", float(r.kept), d.cycle, wall)
        for step, ts, vals in d.steps():
            for k, v in vals.items():
                w.scalar(f"{d.tag}/{k}", v, step, ts)
        params = ", ".join(f"{k}={v}" for k, v in d.params.items())
        metric = "n/a" if r.metric is None else f"{r.metric:.6g}"
        w.text(d.tag, f"**{r.verdict}** ({r.result.status.value}) {t.name} = {metric}  \nparams: {params}", d.cycle, wall)
        w.flush()
        self.marker.add(d.cycle)

    def stopped(self, decision: dict[str, Any], exit_code: int | None) -> None:
        assert self.writer is not None
        self.writer.text("run", f"stopped: **{decision.get('reason')}** (exit {exit_code}): {decision.get('message', '')}", 0)
        self.writer.flush()

    def shutdown(self, finished: bool) -> None:
        if self.writer is not None:
            self.writer.close()
