"""A record's attacks, batch by batch, with what is done kept on disk so that a stopped evaluation
resumes part-way.

PGD and APGD over 10,000 test images take hours of one CPU core for the larger models, and a record is
written only when its last attack is done. :func:`attack_in_parts` runs one attack call a batch at a
time, and after each batch :class:`AttackProgress` writes (atomically) the per-image results so far
and the state of the attack's random generator. A restarted evaluation of the same record takes the
finished calls and batches from there. Because a native attack continues its generator from call to
call (:meth:`attacks.base.Attack.__call__`), the result is the one an uninterrupted run gives, bit
for bit.

C&W attacks its 500 images in one batch, for up to an hour: there :class:`AttackProgress` is the
attack's :class:`~attacks.cw_search.SearchCheckpoint`, keeping the binary search after each of its steps in a
safetensors file beside the JSON one, so a stop costs at most one binary-search step.

A progress file belongs to one record, config, set of weights and version of the attack code
(:func:`code_digest`); one that names anything else is discarded and the record starts over.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

import attacks
from attacks.base import Attack
from robust_mnv1.infra.atomic import atomic_write, atomic_write_json
from robust_mnv1.records.schema import decode_mask, encode_mask

log = logging.getLogger(__name__)


@functools.cache
def code_digest() -> str:
    """sha256 of the sources that decide an attack's per-image results: the ``attacks`` package and
    the protocol that chains its calls. A change there makes earlier partial results unusable."""
    here = Path(__file__).parent
    files = [*sorted(Path(attacks.__file__).parent.rglob("*.py")), here / "protocol.py", here / "progress.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


class AttackProgress:
    """The finished attack calls and batches of one record, kept in the JSON file ``path``, and the
    search states of a C&W record (:meth:`load`, :meth:`save`) in ``path`` with ``.safetensors``.

    ``identity`` names what the results belong to (record, config hash, weights); a file made for
    another identity or by other attack code is ignored, and overwritten at the first save.
    """

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path = path
        self.search_path = path.with_suffix(".safetensors")
        self.identity = {**identity, "code": code_digest()}
        self.calls: dict[str, dict[str, Any]] = {}
        self.seconds_before = 0.0
        self._started = time.perf_counter()
        self._read()

    def _read(self) -> None:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable attack progress %s (%s): the record starts over", self.path, exc)
            return
        if not isinstance(state, dict) or state.get("identity") != self.identity:
            log.info("ignoring attack progress %s made for other weights, config or code", self.path)
            return
        self.calls, self.seconds_before = state["calls"], float(state["seconds"])
        batches = sum(c["batches"] for c in self.calls.values())
        log.info(
            "resuming %s from %s (%.0f s of earlier work)",
            self.identity.get("record", self.path.stem),
            f"{batches} attack batches" if batches else "its search state",
            self.seconds_before,
        )

    def seconds(self) -> float:
        """Seconds spent on the record: this run's so far, plus the runs the progress came from."""
        return self.seconds_before + time.perf_counter() - self._started

    def resume(self, key: str, n: int) -> dict[str, Any] | None:
        """What call ``key`` on ``n`` images finished before, or None."""
        call = self.calls.get(key)
        return call if call is not None and call["n"] == n else None

    def save_batches(
        self,
        key: str,
        n: int,
        batches: int,
        correct: torch.Tensor,
        success: torch.Tensor,
        generator: torch.Generator | None,
    ) -> None:
        """Keep call ``key``'s results on its first ``len(correct)`` of ``n`` images (``batches`` batches)."""
        self.calls[key] = {
            "n": n,
            "batches": batches,
            "clean_correct": encode_mask(correct),
            "success": encode_mask(success),
            "generator": None if generator is None else _encode_state(generator.get_state()),
        }
        self._write()

    def _write(self) -> None:
        atomic_write_json(
            self.path, {"identity": self.identity, "calls": self.calls, "seconds": self.seconds()}
        )

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The C&W search state last saved under ``key`` (a ``SearchCheckpoint``), or None."""
        return self._searches().get(key)

    def save(self, key: str, state: dict[str, torch.Tensor]) -> None:
        """Keep the search state ``state`` under ``key``, and the seconds spent on the record so far."""
        searches = {**self._searches(), key: state}
        flat = {f"{k}/{name}": t.contiguous() for k, s in searches.items() for name, t in s.items()}
        metadata = {"identity": json.dumps(self.identity, sort_keys=True)}
        atomic_write(self.search_path, lambda p: save_file(flat, str(p), metadata=metadata))
        self._write()

    def _searches(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every search state in the safetensors file, by key; none from a file of another identity."""
        try:
            with safe_open(str(self.search_path), framework="pt") as f:
                if (f.metadata() or {}).get("identity") != json.dumps(self.identity, sort_keys=True):
                    return {}
                searches: dict[str, dict[str, torch.Tensor]] = {}
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    key, _, tensor = name.partition("/")
                    searches.setdefault(key, {})[tensor] = f.get_tensor(name)
                return searches
        except FileNotFoundError:
            return {}
        except (OSError, SafetensorError) as exc:
            log.warning("ignoring unreadable search state %s (%s): C&W starts over", self.search_path, exc)
            return {}

    def discard(self) -> None:
        """Delete the files: the record they were for is written."""
        self.path.unlink(missing_ok=True)
        self.search_path.unlink(missing_ok=True)


def attack_in_parts(
    attack: Attack,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    progress: AttackProgress | None = None,
    key: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(clean_correct, success)`` of ``attack(model, x, y)``, computed a batch at a time; with
    ``progress``, each batch is kept under ``key`` and a call finished or begun before resumes."""
    n, step = len(y), attack.batch_size
    generator = None
    if attack.random_seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(attack.random_seed)
    correct = torch.zeros(0, dtype=torch.bool, device=y.device)
    success = correct
    batches = 0
    earlier = progress.resume(key, n) if progress is not None else None
    if earlier is not None:
        batches = earlier["batches"]
        k = min(batches * step, n)
        correct = torch.from_numpy(decode_mask(earlier["clean_correct"], k)).to(y.device)
        success = torch.from_numpy(decode_mask(earlier["success"], k)).to(y.device)
        if generator is not None and earlier["generator"] is not None:
            generator.set_state(_decode_state(earlier["generator"]))
    starts = range(batches * step, n, step)
    for start in tqdm(starts, desc=key or attack.name, unit="batch", leave=False, disable=len(starts) < 2):
        res = attack(model, x[start : start + step], y[start : start + step], generator=generator)
        correct, success = torch.cat([correct, res.clean_correct]), torch.cat([success, res.success])
        batches += 1
        if progress is not None:
            progress.save_batches(key, n, batches, correct, success, generator)
    return correct, success


def _encode_state(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode("ascii")


def _decode_state(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())
