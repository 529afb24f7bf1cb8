"""The run record as typed values: what the study produces, the store writes and reads, and the board
consumes.

The JSON schema (version 1, in the README) stays the one format on disk; these classes are its
in-memory form. :meth:`RunRecord.from_dict` validates a parsed record and builds the classes,
:meth:`RunRecord.to_dict` gives back exactly the dict it came from (committed records round-trip
unchanged, which the tests check on every one of them). Blocks the schema leaves open stay
mappings: the record's config (a snapshot of what made it), the environment, the timing and the
sanity checks' reports (each check reports its own numbers).

A key the schema does not know is refused rather than dropped, so that rewriting a record never
loses a field silently; a new field needs a class field here and a schema rule in ``validate.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from robust_mnv1.records.schema import SCHEMA_VERSION, RecordError, decode_mask
from robust_mnv1.records.validate import validate_record


def _known(cls: type, d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``d``'s items, refusing a key that ``cls`` has no field for."""
    unknown = sorted(set(d) - {f.name for f in fields(cls)})
    if unknown:
        raise RecordError(f"record field '{where}{unknown[0]}' is not in schema version {SCHEMA_VERSION}")
    return dict(d)


def _block(cls: type, d: Mapping[str, Any], where: str) -> Any:
    """A flat block of ``cls``, its ``[lo, hi]`` interval (if any) as a tuple."""
    items = _known(cls, d, where)
    if "ci95" in items:
        items["ci95"] = _pair(items["ci95"])
    return cls(**items)


def _dict(obj: Any, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A block's fields as a dict, leaving out the ``optional`` ones that are None (absent in JSON)."""
    return {
        f.name: getattr(obj, f.name)
        for f in fields(obj)
        if not (f.name in optional and getattr(obj, f.name) is None)
    }


def _pair(value: Any) -> tuple[float, float]:
    lo, hi = value
    return (lo, hi)


@dataclass(frozen=True)
class ModelInfo:
    """The evaluated model: architecture, cost, and the digests of its weights (and its parent's)."""

    name: str
    alpha: float
    rho: float
    profile: str
    input_resolution: int
    params: int
    macs: int
    weights: str | None = None
    parent_weights: str | None = None
    # {"device": ..., "precision": ...} of the training; evaluation is fp32 on env.device.
    trained_on: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _dict(self, ("weights", "parent_weights", "trained_on"))


@dataclass(frozen=True)
class DataInfo:
    name: str
    label: str
    key: str
    n_train: int
    n_test: int

    def to_dict(self) -> dict[str, Any]:
        return _dict(self)


@dataclass(frozen=True)
class CleanResult:
    """Clean accuracy over the record's first ``n`` images, with the per-image correct mask."""

    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    correct_mask: str | None = None  # records made before masks were kept lack it

    def mask(self) -> np.ndarray | None:
        return None if self.correct_mask is None else decode_mask(self.correct_mask, self.n)

    def to_dict(self) -> dict[str, Any]:
        return {**_dict(self, ("correct_mask",)), "ci95": list(self.ci95)}


@dataclass(frozen=True)
class EpsResult:
    """One attack at one radius: the images it left robust (clean-correct and not broken)."""

    attack: str
    norm: str
    eps: float
    eps_255: float
    loss: str
    n: int
    robust: int
    accuracy: float
    ci95: tuple[float, float]
    robust_mask: str
    # APGD only: the images FGSM and PGD left robust, and how many of them each stage broke.
    attacked: int | None = None
    broken: Mapping[str, int] | None = None

    def mask(self) -> np.ndarray:
        return decode_mask(self.robust_mask, self.n)

    def to_dict(self) -> dict[str, Any]:
        out = {**_dict(self, ("attacked", "broken")), "ci95": list(self.ci95)}
        if self.broken is not None:
            out["broken"] = dict(self.broken)
        return out


@dataclass(frozen=True)
class CwRadius:
    """C&W robust accuracy at one L2 radius."""

    l2: float
    accuracy: float
    ci95: tuple[float, float]
    n: int | None = None
    correct: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**_dict(self, ("n", "correct")), "ci95": list(self.ci95)}


@dataclass(frozen=True)
class CwResult:
    """C&W L2: the median minimal distance over clean-correct images (inf where C&W never broke one)."""

    n: int
    n_clean_correct: int
    median_l2: float
    median_l2_ci95: tuple[float, float]
    mean_l2: float
    success_rate: float
    robust_at: tuple[CwRadius, ...]
    steps: int
    binary_search_steps: int
    l2_per_image: tuple[float, ...] | None = None  # records made before it existed lack it

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CwResult:
        d = _known(cls, d, "cw.")
        d["median_l2_ci95"] = _pair(d["median_l2_ci95"])
        d["robust_at"] = tuple(_block(CwRadius, r, "cw.robust_at[].") for r in d["robust_at"])
        if d.get("l2_per_image") is not None:
            d["l2_per_image"] = tuple(d["l2_per_image"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        out = _dict(self, ("l2_per_image",))
        out["median_l2_ci95"] = list(self.median_l2_ci95)
        out["robust_at"] = [r.to_dict() for r in self.robust_at]
        if self.l2_per_image is not None:
            out["l2_per_image"] = list(self.l2_per_image)
        return out


@dataclass(frozen=True)
class SanityResult:
    """The gradient-masking checks of the model: each report names a check and whether it flagged."""

    passed: bool
    flags: tuple[str, ...]
    reports: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SanityResult:
        d = _known(cls, d, "sanity.")
        return cls(d["passed"], tuple(d["flags"]), tuple(d["reports"]))

    @classmethod
    def combined(cls, reports: list[Mapping[str, Any]]) -> SanityResult:
        flags = tuple(r["name"] for r in reports if r["flagged"])
        return cls(not flags, flags, tuple(reports))

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "flags": list(self.flags), "reports": [dict(r) for r in self.reports]}


@dataclass(frozen=True)
class RunRecord:
    """One (model, regime, attack, data, seed): its results, the config that made them and its hash."""

    run_id: str
    model: ModelInfo
    regime: str
    attack: str
    data: DataInfo
    seed: int
    config: Mapping[str, Any]
    config_hash: str
    clean: CleanResult
    eps_results: tuple[EpsResult, ...]
    cw: CwResult | None
    sanity: SanityResult
    timing: Mapping[str, float]
    latency_ms_cpu_b1: float | None
    env: Mapping[str, str | None]
    created: str
    schema_version: int = SCHEMA_VERSION
    # Peak memory (MiB) of the process while the record's unit ran, up to the record: ``peak_rss_mib``,
    # ``peak_cuda_mib`` on CUDA. Records made before it was measured have none.
    memory: Mapping[str, float] | None = None

    @property
    def eval_order(self) -> str:
        """The image order the record's evaluations took a prefix of (``dataset`` in records made
        before the order was configurable)."""
        return self.config.get("eval", {}).get("order", "dataset")

    @property
    def headline_eps_255(self) -> float:
        """The radius the board headlines this record at (``eval.headline_eps_255``); records made
        before it was configurable were all made, and are reported, at 8/255."""
        return float(self.config.get("eval", {}).get("headline_eps_255", 8))

    def linf(self) -> list[EpsResult]:
        return [e for e in self.eps_results if e.norm == "linf"]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        """Validate a parsed record (:func:`~robust_mnv1.records.validate.validate_record`) and type it;
        :class:`RecordError` names the first bad field."""
        validate_record(d)
        d = _known(cls, d, "")
        return cls(
            run_id=d["run_id"],
            model=_block(ModelInfo, d["model"], "model."),
            regime=d["regime"],
            attack=d["attack"],
            data=_block(DataInfo, d["data"], "data."),
            seed=d["seed"],
            config=d["config"],
            config_hash=d["config_hash"],
            clean=_block(CleanResult, d["clean"], "clean."),
            eps_results=tuple(_block(EpsResult, e, "eps_results[].") for e in d["eps_results"]),
            cw=None if d["cw"] is None else CwResult.from_dict(d["cw"]),
            sanity=SanityResult.from_dict(d["sanity"]),
            timing=d["timing"],
            latency_ms_cpu_b1=d["latency_ms_cpu_b1"],
            env=d["env"],
            created=d["created"],
            schema_version=d["schema_version"],
            memory=d.get("memory"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The record as its JSON object (schema version 1)."""
        return {
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "model": self.model.to_dict(),
            "regime": self.regime,
            "attack": self.attack,
            "data": self.data.to_dict(),
            "seed": self.seed,
            "config": self.config,
            "config_hash": self.config_hash,
            "clean": self.clean.to_dict(),
            "eps_results": [e.to_dict() for e in self.eps_results],
            "cw": None if self.cw is None else self.cw.to_dict(),
            "sanity": self.sanity.to_dict(),
            "timing": dict(self.timing),
            "latency_ms_cpu_b1": self.latency_ms_cpu_b1,
            "env": dict(self.env),
            "created": self.created,
            **({} if self.memory is None else {"memory": dict(self.memory)}),
        }
