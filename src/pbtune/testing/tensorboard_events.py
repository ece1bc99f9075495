"""Read TensorBoard event files without TensorBoard (tensorboardX's own protobufs), for tests.

Example::

    scalars, texts = read_events("tb/exp/member-000")
    scalars["score"]   # [(step, value), ...]
"""

from __future__ import annotations

import glob
import os
import struct

__all__ = ["read_events"]


def read_events(folder: str) -> tuple[dict[str, list[tuple[int, float]]], list[tuple[int, str]]]:
    """(tag -> [(step, value)], [(step, lineage text)]) of every event file in ``folder``."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: list[tuple[int, str]] = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as handle:
            blob = handle.read()
        offset = 0
        while offset + 12 <= len(blob):
            (length,) = struct.unpack("<Q", blob[offset:offset + 8])
            if offset + 16 + length > len(blob):  # a record still being written
                break
            event = Event.FromString(blob[offset + 12:offset + 12 + length])
            offset += 16 + length
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
                elif value.tag.startswith("lineage"):
                    texts.append((event.step, b"".join(value.tensor.string_val).decode()))
    return scalars, texts
