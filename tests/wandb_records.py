"""Reads an offline W&B run file (``run-*.wandb``) into wandb's own protobuf ``Record``s.

The file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then
32 KiB blocks of chunks, each with a 7-byte header (CRC-32C, length, type FULL/FIRST/MIDDLE/
LAST). Chunks are joined into records and parsed with ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from google.protobuf.message import DecodeError
from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path}: not a W&B run file"
    out, parts, pos = [], [], 7
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left  # zero padding to the end of the block
            continue
        if pos + 7 + length > len(data):
            break  # a record still being written (the file is read while wandb writes it)
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            parts = [chunk]
        else:
            parts.append(chunk)
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
            parts = []
    return out


def wait_until_closed(path: str | Path, timeout: float = 60.0) -> None:
    """W&B's writer flushes in the background after ``finish()``: wait for the exit record."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in records(path)):
                return
        except (AssertionError, struct.error, DecodeError):
            pass  # header not written yet, or a record caught half-written
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout}s")
        time.sleep(0.2)


def history(path: str | Path) -> list[dict]:
    """Each history record as {key: value}."""
    rows = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json) if item.value_json else None
            rows.append(row)
    return rows


def config(path: str | Path) -> dict:
    out = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "config":
            for item in rec.config.update:
                key = item.key or "/".join(item.nested_key)
                out[key] = json.loads(item.value_json)
    return out
