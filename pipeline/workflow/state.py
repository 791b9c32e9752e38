"""What a pipeline remembers between invocations, and what makes a stage's outputs stale.

``<root>/pipeline_state.json`` (written atomically after every change) holds, per stage, its
MLflow run id, status, fingerprint and the stable config it ran with; the parent run's id.
A stage's fingerprint is a digest of what its outputs are a function of.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.core import io as sio
from pipeline.core.errors import TubeletError
from pipeline.workflow.pipeline_config import Stage, stable_config

STATE_FILE = "pipeline_state.json"


def read_json(uri: str) -> Any:
    """The JSON at ``uri``, or None when it is missing or unreadable."""
    try:
        return json.loads(sio.read_text(uri))
    except (FileNotFoundError, ValueError, TubeletError):
        return None


def load_state(root: str) -> dict[str, Any]:
    """The state of the pipeline at ``root``; a fresh one when missing or unreadable (never a crash)."""
    state = read_json(sio.join(root, STATE_FILE))
    return state if isinstance(state, dict) and state.get("version") == 1 else {"version": 1, "stages": {}}


def save_state(root: str, state: dict[str, Any]) -> None:
    sio.write_text(sio.join(root, STATE_FILE), json.dumps(state, indent=1, sort_keys=True, default=str) + "\n")


def fingerprint(stage: Stage, upstream: dict[str, str], identity: str = "") -> str:
    """What the stage's outputs are a function of: its stable config and its inputs' fingerprints.
    Shards are identified by their own bytes (``identity``), whatever config made them."""
    blob = identity or json.dumps([stable_config(stage.cfg), upstream], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def changed_keys(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> str:
    """``"key: old -> new, ..."`` for the first ``limit`` keys that differ ('' when none do)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "") if keys else ""


def only_new_defaults(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any]) -> bool:
    """Whether ``new`` differs from the recorded ``old`` (flattened stable configs) at most by keys
    ``old`` lacks that hold their ``defaults``: keys added to a job since its outputs were made, whose
    defaults keep what the job did before (a new key must). Such outputs are the same outputs."""
    keys = [k for k in set(old) | set(new) if old.get(k) != new.get(k)]
    return all(k not in old and k in new and k in defaults and new[k] == defaults[k] for k in keys)


__all__ = ["STATE_FILE", "changed_keys", "fingerprint", "load_state", "only_new_defaults", "read_json", "save_state"]
