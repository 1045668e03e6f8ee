"""Helpers shared by the tests: small datasets built in temporary folders.

Every test that needs data builds its own, so the tests never depend on
(or touch) the dataset in ``data/``.
"""

import contextlib
import json
import os
import sqlite3
import sys
import tempfile
import unittest

import audit_dataset
import audit_log_service
import enhanced_audit_log_service

MODULES = (audit_log_service, enhanced_audit_log_service)


def write_dataset(data_dir, events, anchor=None):
    """Write ``events`` (dicts) as a dataset in ``data_dir``; return paths.

    Each event needs created_at, actor_id, action, resource_type,
    resource_id and payload (JSON-able, or bytes written as they are); an
    ``id`` is optional.  ``anchor`` adds the dataset_info row.
    """
    os.makedirs(data_dir, exist_ok=True)
    _, db_path, payload_path = audit_dataset.resolve_paths(data_dir)
    conn = sqlite3.connect(db_path)
    try:
        conn.executescript(audit_dataset.SCHEMA_SQL)
        conn.execute(audit_dataset.INDEX_SQL)
        offset = 0
        with open(payload_path, "wb") as out:
            for i, event in enumerate(events, 1):
                raw = event["payload"]
                if not isinstance(raw, bytes):
                    raw = (json.dumps(raw) + "\n").encode("utf-8")
                out.write(raw)
                conn.execute(audit_dataset.INSERT_SQL, (
                    event.get("id", i), event["created_at"],
                    event["actor_id"], event["action"],
                    event["resource_type"], event["resource_id"],
                    event.get("payload_offset", offset),
                    event.get("payload_len", len(raw))))
                offset += len(raw)
        if anchor is not None:
            conn.execute("INSERT INTO dataset_info (anchor, seed, rows,"
                         " source) VALUES (?, NULL, ?, 'test')",
                         (anchor, len(events)))
        conn.commit()
    finally:
        conn.close()
    return db_path, payload_path


def event(created_at, actor_id=1, action="UPDATE", resource_type="ORDER",
          resource_id="ORDER-1", payload=None, **extra):
    """One event dict for write_dataset; the payload defaults to a marker."""
    if payload is None:
        payload = {"created_at": created_at, "actor": actor_id}
    return dict(extra, created_at=created_at, actor_id=actor_id,
                action=action, resource_type=resource_type,
                resource_id=resource_id, payload=payload)


def reset(module):
    """Forget what ``module`` cached about datasets (snapshot, checks)."""
    if module is enhanced_audit_log_service:
        module._snapshot = None
    else:
        module._ready.clear()


@contextlib.contextmanager
def using_dataset(data_dir, modules=MODULES):
    """Point ``modules`` at the dataset in ``data_dir`` for a block."""
    with audit_dataset.pointed_at(modules, data_dir) as paths:
        try:
            for module in modules:
                reset(module)
            yield paths
        finally:
            for module in modules:
                reset(module)


@contextlib.contextmanager
def temporary_dataset(events, anchor=None, modules=MODULES):
    """Write ``events`` to a temporary dataset and point ``modules`` at it."""
    with tempfile.TemporaryDirectory(prefix="audit-test-") as tmp:
        write_dataset(tmp, events, anchor)
        with using_dataset(tmp, modules) as paths:
            yield paths


def for_both_modules(mixin):
    """Define ``Baseline<name>`` and ``Enhanced<name>`` test cases, in the
    module that defines ``mixin``, each with ``module`` set to one
    implementation."""
    namespace = sys.modules[mixin.__module__].__dict__
    for label, module in (("Baseline", audit_log_service),
                          ("Enhanced", enhanced_audit_log_service)):
        name = label + mixin.__name__
        namespace[name] = type(name, (mixin, unittest.TestCase),
                               {"module": module,
                                "__module__": mixin.__module__})
    return mixin
