"""Messages between processes about an answer: what one asks the process that runs it.

They travel through ``chat.fanout`` (the channel layer); the process that runs
the answer answers (``Registry.handle_control``), the others stay silent.
"""

from __future__ import annotations

import uuid
from typing import Literal, TypedDict

from chat.protocol import StopReason


class StopRequest(TypedDict):
    """Stop this answer now; ``by`` names who, for the timeline (a staff member)."""

    action: Literal["stop"]
    message: str
    reason: StopReason
    by: str


class SnapshotRequest(TypedDict):
    """The answer's exact text and reasoning so far (a watcher joined late, or saw a gap)."""

    action: Literal["snapshot"]
    message: str


class AliveRequest(TypedDict):
    """Does a process still run this answer? Silence means its process is gone."""

    action: Literal["alive"]
    message: str


Request = StopRequest | SnapshotRequest | AliveRequest


class Snapshot(TypedDict):
    text: str
    reasoning: str


class Stopped(TypedDict):
    stopped: bool


class Alive(TypedDict):
    alive: bool


Reply = Snapshot | Stopped | Alive


def stop(message_id: uuid.UUID, reason: StopReason, by: str = "") -> StopRequest:
    return {"action": "stop", "message": str(message_id), "reason": reason, "by": by}


def snapshot(message_id: uuid.UUID) -> SnapshotRequest:
    return {"action": "snapshot", "message": str(message_id)}


def alive(message_id: uuid.UUID) -> AliveRequest:
    return {"action": "alive", "message": str(message_id)}
