"""Run records: one JSON file per (model, regime, attack, data, seed) under ``results/runs/``.

The study builds a typed :class:`~robust_mnv1.records.run_record.RunRecord` (schema version 1,
documented in the README) and calls :func:`~robust_mnv1.records.store.write_record`; the leaderboard
reads them back with :func:`~robust_mnv1.records.store.load_records`. Records are validated on both
sides by :func:`~robust_mnv1.records.validate.validate_record`, with hand-written checks so the schema
has no extra dependency and every error names the offending field.

Robust masks are per-sample booleans over the first ``n`` images of the evaluation order
(:func:`robust_mnv1.evaluation.protocol.eval_order`, named by the record's ``config.eval.order``; the
dataset's own order in records without one), packed with ``np.packbits(mask, bitorder="little")``
(sample ``i`` is bit ``i % 8`` of byte ``i // 8``; unused high bits of the last byte are zero) and
base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from robust_mnv1.infra.errors import UserError

SCHEMA_VERSION = 1
REGIMES = ("standard", "pgd-at", "fast-at", "trades")
ATTACKS = ("fgsm", "pgd", "apgd", "cw")
EPS_ATTACKS = ("fgsm", "pgd", "apgd")
NORMS = ("linf", "l2")
ENV_KEYS = ("device", "torch", "torchvision", "foolbox", "art", "python", "git_commit", "platform")

_SAFE_PART = re.compile(r"[^A-Za-z0-9.+-]+")


class RecordError(UserError):
    """A run record is malformed; the message names the bad field."""


class RecordWarning(UserWarning):
    """A record file in the runs directory was skipped because it could not be read or validated."""


def encode_mask(mask: Any) -> str:
    """Pack a 1-D boolean mask (numpy array, list or torch tensor) into a base64 string."""
    if hasattr(mask, "detach"):  # torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim != 1:
        raise UserError(f"encode_mask needs a 1-D mask, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise UserError("encode_mask needs a boolean (or 0/1) mask")
        arr = arr.astype(bool)
    return base64.b64encode(np.packbits(arr, bitorder="little").tobytes()).decode("ascii")


def decode_mask(s: str, n: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`: the first ``n`` samples as a boolean array.

    Raises :class:`RecordError` when the string is not base64, has the wrong length for ``n``
    or sets padding bits beyond ``n`` (signs of a mask that belongs to another ``n``).
    """
    if not isinstance(s, str):
        raise RecordError(f"robust mask must be a base64 string, got {type(s).__name__}")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise RecordError(f"robust mask is not valid base64 ({exc})") from None
    if len(raw) != (n + 7) // 8:
        raise RecordError(f"robust mask holds {len(raw)} bytes, expected {(n + 7) // 8} for n={n}")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little").astype(bool)
    if bits[n:].any():
        raise RecordError(f"robust mask sets bits beyond n={n}")
    return bits[:n]


def make_run_id(model_name: str, regime: str, attack: str, data_key: str, seed: int) -> str:
    """Filesystem-safe id ``<model>__<regime>__<attack>__<data>__s<seed>``.

    Characters outside ``[A-Za-z0-9.+-]`` become ``-`` so ``__`` only ever separates fields.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    parts = []
    for label, part in (
        ("model name", model_name),
        ("regime", regime),
        ("attack", attack),
        ("data key", data_key),
    ):
        if not isinstance(part, str):
            raise UserError(f"{label} must be a string, got {part!r}")
        safe = _SAFE_PART.sub("-", part).strip("-.")
        if not safe:
            raise UserError(f"{label} {part!r} has no filesystem-safe characters; use letters, digits, . + -")
        parts.append(safe)
    return "__".join([*parts, f"s{seed}"])


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 hex digest of the canonical JSON (sorted keys, no spaces) of ``config``."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
