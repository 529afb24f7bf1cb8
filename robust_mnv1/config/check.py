"""One check of the whole composed config, run by the CLI pre-flight before any output directory or work.

:data:`SCHEMA` holds a rule for every key of every config group: its type, range or choices. A few
checks tie keys together or look at the machine (:data:`_CHECKS`). Every failure is a
:class:`UserError` of one line that names the key, the value and what it must be. No model is built
and torch is imported only when the config asks for CUDA, so a bad value costs about a second, and a
huge ``model.alpha`` cannot run the check out of memory.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from robust_mnv1.infra.errors import UserError

# The choices that modules importing torch also define; tests/test_config_check.py keeps them equal.
TASKS = ("train", "study")
BASE_RESOLUTION = {"cifar": 32, "imagenet": 224}  # robust_mnv1.models.PROFILES
METHODS = ("pgd", "fgsm_rs", "trades")  # robust_mnv1.training.objectives
ORDERS = ("stratified", "dataset")  # robust_mnv1.evaluation.protocol
PGD_LOSSES = ("ce", "margin")  # attacks.losses
DATASETS = ("cifar10", "imagefolder", "digits")  # robust_mnv1.data.sources
# Datasets whose size is fixed, so a config can be held against it before reading them:
# (train images, test images, classes, image size).
KNOWN_DATA = {"digits": (1437, 360, 10, 32), "cifar10": (50000, 10000, 10, 32)}
GRID_KEYS = ("alpha", "rho", "seed")


@dataclass(frozen=True)
class Rule:
    """What a value must be: ``text`` completes "KEY must be ...", ``plural`` the same for a list of them."""

    text: str
    ok: Callable[[Any], bool]
    plural: str = ""


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def number(lo: float, hi: float | None = None, *, open_lo: bool = False, open_hi: bool = False) -> Rule:
    if hi is None:
        bound = f"{'>' if open_lo else '>='} {lo}"
    else:
        bound = f"in {'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"

    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        return (v > lo if open_lo else v >= lo) and (hi is None or (v < hi if open_hi else v <= hi))

    return Rule(f"a number {bound}", ok, f"numbers {bound}")


def integer(lo: int, hi: int | None = None) -> Rule:
    bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    ok = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)
    return Rule(f"an integer {bound}", ok, f"integers {bound}")


def choice(*values: str) -> Rule:
    return Rule(f"one of {', '.join(values)}", lambda v: isinstance(v, str) and v in values)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.text}", lambda v: v is None or rule.ok(v))


def list_of(rule: Rule, *, empty: bool = False) -> Rule:
    text = f"a {'' if empty else 'non-empty '}list of {rule.plural}"
    return Rule(text, lambda v: isinstance(v, list) and (empty or bool(v)) and all(map(rule.ok, v)))


def pattern(regex: str, text: str) -> Rule:
    return Rule(text, lambda v: isinstance(v, str) and re.fullmatch(regex, v) is not None)


def _is_grid(v: Any) -> bool:
    if v is None:
        return True
    return isinstance(v, list) and all(
        isinstance(p, dict) and {"alpha", "rho"} <= p.keys() <= set(GRID_KEYS) for p in v
    )


BOOL = Rule("true or false", lambda v: isinstance(v, bool))
COUNT = integer(1)
TEXT = pattern(r".*\S.*", "a non-empty string")
EPS_255 = number(0, 255)

# train and every finetune group share the SGD recipe.
_RECIPE = {
    "epochs": COUNT,
    "batch_size": COUNT,
    "lr": number(0, open_lo=True),
    "momentum": number(0, 1, open_hi=True),
    "nesterov": BOOL,
    "weight_decay": number(0),
    "schedule": choice("onecycle", "cosine"),
    "warmup_frac": number(0, 1, open_hi=True),
    "label_smoothing": number(0, 1, open_hi=True),
    "augment": BOOL,
    "eval_every": COUNT,
    "eval_batch_size": COUNT,
}
_ADVERSARY = {
    # The regime names record files and cache entries beside the standard model's.
    "regime": pattern(
        r"(?!standard$)[A-Za-z0-9_-]+", "a name of letters, digits, - or _ other than standard"
    ),
    "method": choice(*METHODS),
    "beta": number(0),
    "eps_255": number(0, 255, open_lo=True),
    "step_255": number(0, 255, open_lo=True),
    "steps": COUNT,
}

SCHEMA: dict[str, Rule] = {
    "task": choice(*TASKS),
    "seed": integer(0, 2**32 - 1),
    "device": pattern(r"auto|cpu|cuda(:\d+)?", "one of auto, cpu, cuda, cuda:N"),
    "cuda_graph": Rule("one of auto, true, false", lambda v: v == "auto" or isinstance(v, bool)),
    "threads": Rule(
        "auto or a whole number >= 1",
        lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    ),
    "cache_dir": TEXT,
    "results_dir": TEXT,
    "study.grid": Rule("null or a list of {alpha, rho} or {alpha, rho, seed} mappings", _is_grid),
    "study.jobs": COUNT,
    "study.evaluate": BOOL,
    "study.retrain": BOOL,
    "study.order": choice("grid", "cheapest"),
    "model.alpha": number(0, 4, open_lo=True),
    "model.rho": number(0, 1, open_lo=True),
    "model.profile": choice(*BASE_RESOLUTION),
    "model.num_classes": optional(integer(2)),
    "data.name": choice(*DATASETS),
    "data.label": optional(TEXT),
    "data.num_classes": integer(2),
    "data.image_size": integer(1),
    "data.root": optional(TEXT),
    "data.download": BOOL,
    **{f"train.{k}": rule for k, rule in _RECIPE.items()},
    **{f"finetune.{k}": rule for k, rule in {**_RECIPE, **_ADVERSARY}.items()},
    "attack.fgsm.eps_255": list_of(EPS_255),
    "attack.fgsm.batch_size": COUNT,
    "attack.pgd.eps_255": list_of(EPS_255),
    "attack.pgd.steps": COUNT,
    "attack.pgd.restarts": COUNT,
    "attack.pgd.random_start": BOOL,
    "attack.pgd.loss": choice(*PGD_LOSSES),
    "attack.pgd.margin_at_255": list_of(EPS_255, empty=True),
    "attack.pgd.batch_size": COUNT,
    "attack.apgd.eps_255": list_of(EPS_255),
    "attack.apgd.ce_steps": COUNT,
    "attack.apgd.targeted_steps": COUNT,
    "attack.apgd.n_target_classes": integer(1, 9),
    "attack.apgd.batch_size": COUNT,
    "attack.apgd.square.samples": integer(0),
    "attack.apgd.square.queries": COUNT,
    "attack.cw.steps": COUNT,
    "attack.cw.binary_search_steps": COUNT,
    "attack.cw.confidence": number(0),
    "attack.cw.lr": number(0, open_lo=True),
    "attack.cw.initial_const": number(0, open_lo=True),
    "attack.cw.l2_radii": list_of(number(0, open_lo=True)),
    "attack.cw.batch_size": COUNT,
    "eval.n_examples": optional(COUNT),
    "eval.order": choice(*ORDERS),
    "eval.n_cw": optional(COUNT),
    "eval.sanity.enabled": BOOL,
    "eval.sanity.n": optional(COUNT),
    "eval.sanity.eps_255": number(0, 255, open_lo=True),
    "eval.headline_eps_255": number(0, 255, open_lo=True),
    "eval.max_clean_drop": number(0, 1),
    "eval.latency.enabled": BOOL,
    "eval.latency.reps": COUNT,
}
# Keys only some group options have (cifar10's download, trades' beta); any other key of a
# group that is present must be there.
OPTIONAL = {"data.download", "finetune.beta"}
PATHS = ("cache_dir", "results_dir")


def validate(cfg: DictConfig) -> None:
    """Raise a one-line :class:`UserError` for the first thing wrong with ``cfg``; build nothing."""
    values = _values(cfg)
    for check in _CHECKS:
        check(values)


def _values(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of ``cfg`` as ``{dotted key: plain value}``, each checked against its rule.

    A path that interpolates ``${hydra:...}`` is left out: Hydra sets it when the run starts (the
    quick start's ``results_dir`` lies inside the run directory Hydra creates).
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    values: dict[str, Any] = {}
    stack = [("", raw)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and any(k.startswith(f"{path}.") for k in SCHEMA):
                stack.append((f"{path}.", value))
            elif path not in SCHEMA:
                parent = prefix.rstrip(".")
                valid = sorted(k[len(prefix) :].split(".")[0] for k in SCHEMA if k.startswith(prefix))
                where = f" under {parent}" if parent else ""
                raise UserError(f"unknown key {path}; valid keys{where}: {', '.join(dict.fromkeys(valid))}")
            elif not (path in PATHS and isinstance(value, str) and "${hydra:" in value):
                values[path] = _checked(path, _resolve(cfg, path))
        for path in SCHEMA:
            parent, _, key = path.rpartition(".")
            if parent == prefix.rstrip(".") and path not in OPTIONAL and key not in node:
                raise UserError(f"{path} is missing; it must be {SCHEMA[path].text}")
    return values


def _resolve(cfg: DictConfig, path: str) -> Any:
    try:
        value = OmegaConf.select(cfg, path, throw_on_resolution_failure=True)
    except OmegaConfBaseException as e:
        raise UserError(f"{path} cannot be resolved: {str(e).splitlines()[0]}") from None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _checked(path: str, value: Any) -> Any:
    rule = SCHEMA[path]
    if not rule.ok(value):
        raise UserError(f"{path} must be {rule.text}, got {value!r}")
    return value


def _check_grid(v: dict[str, Any]) -> None:
    seen: dict[tuple, int] = {}
    for i, point in enumerate(v["study.grid"] or []):
        for key, rule_key in zip(GRID_KEYS, ("model.alpha", "model.rho", "seed"), strict=True):
            if key in point and not SCHEMA[rule_key].ok(point[key]):
                raise UserError(f"study.grid[{i}].{key} must be {SCHEMA[rule_key].text}, got {point[key]!r}")
        unit = (point["alpha"], point["rho"], point.get("seed", v["seed"]))
        if unit in seen:
            raise UserError(f"study.grid[{i}] repeats study.grid[{seen[unit]}] (alpha, rho, seed = {unit})")
        seen[unit] = i


def _check_resolution(v: dict[str, Any]) -> None:
    """round(base * rho) must leave at least one pixel (a rho in (0, 1] can still round to 0)."""
    base = BASE_RESOLUTION[v["model.profile"]]
    rhos = [("model.rho", v["model.rho"])]
    rhos += [(f"study.grid[{i}].rho", p["rho"]) for i, p in enumerate(v["study.grid"] or [])]
    for key, rho in rhos:
        if round(base * rho) < 1:
            raise UserError(
                f"{key} must be at least {0.5 / base:.4g} for profile {v['model.profile']} "
                f"(input round({base} * rho) >= 1 px), got {rho!r}"
            )


def _check_adversaries(v: dict[str, Any]) -> None:
    if v["finetune.method"] == "trades" and "finetune.beta" not in v:
        raise UserError("finetune.method=trades needs finetune.beta (a number >= 0); use finetune=trades")
    if v.get("attack.pgd.restarts", 1) > 1 and not v["attack.pgd.random_start"]:
        raise UserError(
            f"attack.pgd.restarts={v['attack.pgd.restarts']} needs attack.pgd.random_start=true: "
            "restarting from the clean image repeats the same run"
        )
    if "attack.apgd.eps_255" in v:
        _check_apgd(v)
    _check_headline(v)
    unused = set(v.get("attack.pgd.margin_at_255", [])) - set(v.get("attack.pgd.eps_255", []))
    if unused:
        raise UserError(
            f"attack.pgd.margin_at_255 must be among attack.pgd.eps_255 {v['attack.pgd.eps_255']}, "
            f"got {sorted(unused)}"
        )


def _check_headline(v: dict[str, Any]) -> None:
    """The board's headline columns and worst case need every L-inf attack at the headline radius."""
    h = v["eval.headline_eps_255"]
    for grid in (f"attack.{family}.eps_255" for family in ("fgsm", "pgd", "apgd")):
        if h not in v.get(grid, [h]):
            raise UserError(f"eval.headline_eps_255={h} must be in {grid} {v[grid]}: the board's headline")


def _check_apgd(v: dict[str, Any]) -> None:
    """APGD attacks what FGSM and PGD left robust, so both must run, at each of its eps."""
    for family in ("fgsm", "pgd"):
        if f"attack.{family}.eps_255" not in v:
            raise UserError(f"attack.apgd attacks what {family} left robust: add it (attack=all has both)")
        missing = set(v["attack.apgd.eps_255"]) - set(v[f"attack.{family}.eps_255"])
        if missing:
            raise UserError(
                f"attack.apgd.eps_255 must be among attack.{family}.eps_255 {v[f'attack.{family}.eps_255']}, "
                f"got {sorted(missing)}"
            )
    k, classes = v["attack.apgd.n_target_classes"], v["data.num_classes"]
    if k >= classes:
        raise UserError(
            f"attack.apgd.n_target_classes={k} needs more classes than the data's {classes}: "
            f"use at most {classes - 1}"
        )


def _check_classes(v: dict[str, Any]) -> None:
    n = v["model.num_classes"]
    if n is not None and n != v["data.num_classes"]:
        raise UserError(
            f"model.num_classes={n} but data.num_classes={v['data.num_classes']}; set one to match"
        )
    known = KNOWN_DATA.get(v["data.name"])
    if known is None:
        return
    for key, actual in (("num_classes", known[2]), ("image_size", known[3])):
        given = v[f"data.{key}"]
        if given != actual:
            raise UserError(
                f"data.{key}={given} but {v['data.name']} has {key}={actual}; set data.{key}={actual}"
            )
    check_data_sizes(v, known[0], known[1], v["data.name"])


def check_data_sizes(v: dict[str, Any] | DictConfig, n_train: int, n_test: int, name: str) -> None:
    """Refuse batches larger than the training set and evaluations larger than the test set.

    The pre-flight calls it for datasets of fixed size;
    :func:`robust_mnv1.config.spec.model_spec` again once
    a dataset is read. An evaluation is never silently cut to the test set: its config hash would
    name a size it did not have.
    """
    get = (lambda k: OmegaConf.select(v, k)) if isinstance(v, DictConfig) else v.get
    study = get("task") == "study"
    limits = [("train.batch_size", n_train, "training images")]
    if study:
        limits += [
            ("finetune.batch_size", n_train, "training images"),
            ("eval.n_examples", n_test, "test images"),
            ("eval.n_cw", n_test, "test images"),
        ]
        if get("eval.sanity.enabled"):
            limits.append(("eval.sanity.n", n_test, "test images"))
    for key, limit, what in limits:
        n = get(key)
        if n is not None and n > limit:
            null = ", or null for all of them" if key.startswith("eval.") else ""
            raise UserError(
                f"{key}={n} is more than the {limit} {what} of {name}; set it to at most {limit}{null}"
            )


def _check_data_root(v: dict[str, Any]) -> None:
    if v["data.name"] == "digits":
        return
    root = v["data.root"]
    if root is None:
        raise UserError(f"data.root is not set for data={v['data.name']}; set data.root=PATH")
    path = os.path.abspath(os.path.expanduser(root))
    if v["data.name"] == "imagefolder" and not os.path.exists(path):
        raise UserError(
            f"data.root={path} does not exist; set data.root=PATH to a directory with train/<class>/* "
            "and test/<class>/*, or a .tar.gz of one"
        )


def _check_paths(v: dict[str, Any]) -> None:
    """cache_dir, and results_dir when the run writes records, must be writable directories or creatable."""
    writes_records = v["task"] == "study" and v["study.evaluate"]
    for key in [k for k in PATHS if k in v and (k == "cache_dir" or writes_records)]:
        path = Path(os.path.expanduser(v[key]))
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            what = "is a file, not a directory" if probe == path else f"cannot be created: {probe} is a file"
            raise UserError(f"{key}={v[key]} {what}; choose another {key}")
        try:
            # An unnamed temporary file (O_TMPFILE) proves the directory writable without leaving a name.
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as e:
            raise UserError(
                f"{key}={v[key]} is not writable ({probe}: {e.strerror}); choose another {key}"
            ) from None


def _check_device(v: dict[str, Any]) -> None:
    device, graph = v["device"], v["cuda_graph"]
    if device == "cpu" and graph is True:
        raise UserError("cuda_graph=true needs a CUDA device, but device=cpu; use cuda_graph=auto")
    if device.startswith("cuda") or (device == "auto" and graph is True):
        # Only here is torch imported: whether CUDA is there is the machine's answer, not the config's.
        from robust_mnv1.infra.device import resolve_device, use_cuda_graph

        use_cuda_graph(OmegaConf.create({"cuda_graph": graph}), resolve_device(device))


_CHECKS: tuple[Callable[[dict[str, Any]], None], ...] = (
    _check_grid,
    _check_resolution,
    _check_adversaries,
    _check_classes,
    _check_data_root,
    _check_paths,
    _check_device,
)
