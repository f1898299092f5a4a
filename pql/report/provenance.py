"""Where and with what code each run ran, from its ``manifest.json`` (:mod:`pql.store.manifest`), for reports.

A *field* is a dotted path into the manifest, list items by index: ``devices.v_learner``,
``git.commit``, ``packages.torch``, ``cpu``, ``host``, ``gpus.0.name``. The manifest's top level
describes the session that started the run (a resumed run's later sessions are under ``resumes``).
A run from before manifests has none; its ``status.json`` still records ``host`` and ``devices``,
which are read there. A value that is missing reads as ``unknown``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pql.config import ConfigError
from pql.store.run_dir import MANIFEST, STATUS

# The top-level keys of manifest.json: pql.store.manifest.session()'s, with pql.store.run_dir.RunDir.record_session's.
MANIFEST_FIELDS = ("schema", "started", "git", "python", "packages", "host", "platform", "cpu", "cpus",
                   "memory_gib", "gpus", "devices", "command", "resumes", "resumed_without_manifest")
STATUS_FIELDS = ("host", "devices")  # also in status.json, for runs without a manifest
UNKNOWN = "unknown"
# per_run-<profile>.csv columns -> their manifest field (empty where a run does not record it).
PROVENANCE_COLUMNS = {"commit": "git.commit", "dirty": "git.dirty", "torch": "packages.torch", "host": "host",
                      "sim_device": "devices.sim", "v_learner_device": "devices.v_learner",
                      "p_learner_device": "devices.p_learner"}
SHORT_COMMIT = 12


def check_field(field: str) -> str:
    """``field`` if its top-level name is one of the manifest's; ConfigError naming the ones there are."""
    top = field.split(".", 1)[0]
    if top not in MANIFEST_FIELDS or "" in field.split("."):
        raise ConfigError(f"--by {field}: '{top}' is not a field of a run's manifest.json; its fields are "
                          f"{', '.join(MANIFEST_FIELDS)} (nested ones dotted, e.g. devices.v_learner, "
                          f"packages.torch, gpus.0.name)")
    return field


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_facts(run: Path) -> dict[str, Any]:
    """The run's manifest; for a run without one, the fields its ``status.json`` also records."""
    manifest = _read_json(run / MANIFEST)
    if manifest:
        return manifest
    status = _read_json(run / STATUS)
    return {key: status[key] for key in STATUS_FIELDS if key in status}


def lookup(facts: dict[str, Any], field: str) -> Any:
    """The value of the dotted ``field`` in ``facts`` (a list item by its index), None where there is none."""
    value: Any = facts
    for part in field.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def field_text(value: Any) -> str:
    """A field's value as a group name: ``unknown`` where missing, JSON for a mapping or a list."""
    if value is None:
        return UNKNOWN
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def provenance(facts: dict[str, Any]) -> dict[str, Any]:
    """The ``PROVENANCE_COLUMNS`` of one run (None where it does not record one; the commit shortened)."""
    row = {column: lookup(facts, field) for column, field in PROVENANCE_COLUMNS.items()}
    if isinstance(row["commit"], str):
        row["commit"] = row["commit"][:SHORT_COMMIT]
    return row


def by_table(field: str, runs: Iterable[tuple[str, str]], states: Iterable[str]) -> str:
    """Counts of runs per value of ``field`` (rows) and state (columns: ``states``, then any other state a
    run has), as text; ``runs`` are (value, state) pairs."""
    counts = Counter(runs)
    values = sorted({value for value, _ in counts})
    columns = list(dict.fromkeys([*states, *(state for _, state in counts)]))
    width = max(len(field), *(len(v) for v in values)) if values else len(field)
    lines = [f"  runs by {field}:", "    " + field.ljust(width) + "".join(f"  {s:>7}" for s in columns)]
    for value in values:
        lines.append("    " + value.ljust(width) + "".join(f"  {counts[value, s]:>7}" for s in columns))
    return "\n".join(lines)
