"""What every command-line entry point shares: experiment registration and one-line errors.

Hydra reports a bad override or an unknown experiment with several lines and a hint about
HYDRA_FULL_ERROR. :func:`preflight` composes the config first, with Hydra's own compose API,
and turns any failure into one line that lists the valid choices, before Hydra creates an
output directory or the run touches anything.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
import uuid
from collections.abc import Callable
from importlib.resources import files

from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from robust_mnv1.infra.errors import UserError

# Hydra flags that do not change the composed config; any other flag (--cfg, --info, -cn, ...)
# changes what Hydra does, so the preflight leaves those invocations to Hydra alone.
_PLAIN_FLAGS = {"-m", "--multirun"}
# Faults of the machine, not of the code, that a run can meet while it writes.
_FILESYSTEM_FAULTS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
}


def experiment_names() -> list[str]:
    return sorted(p.name[:-5] for p in files("experiments").iterdir() if p.name.endswith(".yaml"))


@functools.cache
def register_experiments() -> None:
    """Put ``experiments/*.yaml`` into Hydra's ``experiment`` group (once a process: the store keeps them).

    The experiments live in their own top-level package (the design card's layout) rather than
    under ``robust_mnv1/conf``; registering them through the ConfigStore makes ``experiment=NAME``
    work the same from a source checkout, an editable install and a wheel.
    """
    store = ConfigStore.instance()
    for name in experiment_names():
        text = files("experiments").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
        if "# @package _global_" not in text:
            raise RuntimeError(f"experiments/{name}.yaml must start with '# @package _global_'")
        store.store(group="experiment", name=name, node=OmegaConf.create(text), package="_global_")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_suffix"):
        # Cached so the run dir and every later reference to it agree within one process.
        suffix = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        OmegaConf.register_new_resolver("run_suffix", lambda: suffix)


def fail(message: str, code: int = 2) -> None:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


def compose_config(overrides: list[str], config_name: str = "config") -> DictConfig:
    """Compose the config as Hydra would, outside a Hydra run (tests and the preflight use it)."""
    register_experiments()
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="robust_mnv1.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def preflight(argv: list[str], config_name: str, validate: Callable[[DictConfig], None]) -> None:
    """Compose every point of the requested run or sweep, validate it, and exit with one line on error."""
    if any(a.startswith("-") and a not in _PLAIN_FLAGS for a in argv):
        return
    args = [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as e:
        fail(f"bad override: {str(e).splitlines()[0]}")
    sweeps = [(i, list(o.sweep_string_iterator())) for i, o in enumerate(parsed) if o.is_sweep_override()]
    base = [o.input_line if not o.is_sweep_override() else None for o in parsed]
    points = [[*base]]
    if sweeps and any(a in _PLAIN_FLAGS for a in argv):
        first = {i: f"{parsed[i].get_key_element()}={vals[0]}" for i, vals in sweeps}
        points = []
        for i, vals in sweeps:
            for v in vals:
                points.append(
                    [
                        first.get(j, x) if j != i else f"{parsed[i].get_key_element()}={v}"
                        for j, x in enumerate(base)
                    ]
                )
    elif sweeps:
        points = [[o.input_line for o in parsed]]
    for point in points:
        cfg = _compose_or_fail([p for p in point if p is not None], config_name)
        try:
            validate(cfg)
        except UserError as e:
            fail(str(e))


def _compose_or_fail(overrides: list[str], config_name: str) -> DictConfig:
    try:
        return compose_config(overrides, config_name)
    except MissingConfigException as e:
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        if e.options and group:
            fail(f"unknown {group} {name!r}; valid choices: {', '.join(sorted(e.options))}")
        fail(str(e).splitlines()[0])
    except (HydraException, OmegaConfBaseException) as e:
        fail(_describe(e, overrides, config_name))
    raise AssertionError("unreachable")


def _describe(e: Exception, overrides: list[str], config_name: str) -> str:
    """One line for a failed override: which override, why, and the keys that do exist there."""
    cause = e.__cause__ or e
    reason = str(cause).splitlines()[0]
    text = str(e)
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if f"'{key}'" in text or key in reason:
            parent = key.rpartition(".")[0]
            rest = [x for x in overrides if x != o]
            try:
                node = compose_config(rest, config_name)
                node = OmegaConf.select(node, parent) if parent else node
            except (HydraException, OmegaConfBaseException):
                node = None
            valid = (
                f"; valid keys{' under ' + parent if parent else ''}: {', '.join(map(str, node.keys()))}"
                if isinstance(node, DictConfig)
                else ""
            )
            return f"bad override {o!r}: {reason}{valid}"
    return reason


def filesystem_fault(e: BaseException) -> str | None:
    """One line for a full disk or an unwritable path met mid-run; None for any other error (a bug)."""
    if isinstance(e, OSError):
        code, where = e.errno, e.filename
    else:
        # safetensors' writer reports an OS error as a SafetensorError ending in "(os error 28)".
        found = re.search(r"\(os error (\d+)\)", str(e))
        code, where = (int(found[1]) if found else None), None
    if code not in _FILESYSTEM_FAULTS:
        return None
    at = f": {where}" if where else f" ({type(e).__name__})"
    return f"{os.strerror(code)}{at}; fix that (space, permissions or path) and rerun: finished work is kept"


def user_errors_exit(fn: Callable) -> Callable:
    """Run ``fn``; a :class:`UserError` becomes one line on stderr and exit code 2, a filesystem fault
    (:func:`filesystem_fault`) one line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except Exception as e:
            message = filesystem_fault(e)
            if message is None:
                raise
            fail(message, code=1)

    return wrapper
