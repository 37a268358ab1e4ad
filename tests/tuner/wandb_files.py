"""Reads W&B's offline run files back, as ``wandb sync`` would upload them, for the tests of ``--wandb``.

wandb 0.31 keeps an offline run's history only in its binary ``run-ID.wandb`` file and ships no
Python reader for it (its writer and ``wandb sync`` are the Go ``wandb-core``). The file is a
LevelDB-log-style record stream: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then 32 KiB
blocks of chunks, each ``crc32 (4, little-endian) | length (2) | type (1) | data``, where type 1 is a
whole record and 2/3/4 its first/middle/last pieces (a block's tail under 7 bytes is padding), and
the crc is zlib's crc32 of the data seeded with that of the type byte. A record is a protobuf
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from wandb.proto import wandb_internal_pb2

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK, CHUNK_HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of a ``.wandb`` file, in order; a bad checksum or a broken chunk chain fails the test."""
    data = path.read_bytes()
    assert data[: len(HEADER)] == HEADER, f"{path} is not a W&B run file (header {data[:7]!r})"
    pos, pieces = len(HEADER), b""
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # the block's padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zeros: the end of what was written
            break
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad checksum at byte {pos}"
        assert (kind in (FULL, FIRST)) == (pieces == b""), f"{path}: broken chunk chain at byte {pos}"
        pieces += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


@dataclass
class WandbRun:
    """What one offline run holds: its identity, config (the run's and every later update), history by step."""

    id: str
    name: str
    project: str
    group: str
    job_type: str
    config: dict[str, Any] = field(default_factory=dict)
    history: dict[int, dict[str, Any]] = field(default_factory=dict)  # _step -> {key: value}
    exit_code: Optional[int] = None  # None: the run never finished

    def series(self, key: str) -> dict[int, Any]:
        """``{step: value}`` of one logged key."""
        return {step: row[key] for step, row in self.history.items() if key in row}


def _items(items) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def read_run(path: Path) -> WandbRun:
    run: Optional[WandbRun] = None
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = WandbRun(r.run_id, r.display_name, r.project, r.run_group, r.job_type, _items(r.config.update))
        elif run is None:
            continue
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            row = _items(record.history.item)
            run.history[int(row["_step"])] = row
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    assert run is not None, f"{path} holds no run record"
    return run


def read_runs(wandb_dir: Path) -> list[WandbRun]:
    """Every offline run under a ``wandb/`` folder (``offline-run-*/run-*.wandb``), sorted by name."""
    return sorted((read_run(f) for f in wandb_dir.glob("offline-run-*/run-*.wandb")), key=lambda r: r.name)
