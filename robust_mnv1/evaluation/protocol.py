"""The evaluation protocol: clean accuracy, an attack over its eps grid, sanity checks, latency.

Every accuracy comes with a Wilson 95% interval and, at each eps, the per-sample "robust" mask
(clean-correct and not broken), so the leaderboard can take the per-sample worst case across
attack families.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

import attacks
from attacks import FGSM
from robust_mnv1.data import Split
from robust_mnv1.evaluation.progress import AttackProgress, attack_in_parts
from robust_mnv1.evaluation.specs import APGDSpec, CWSpec, FGSMSpec, PGDSpec, SquareSpec
from robust_mnv1.infra.errors import UserError
from robust_mnv1.infra.units import eps
from robust_mnv1.records.intervals import bootstrap_ci, wilson_ci
from robust_mnv1.records.run_record import CleanResult, CwRadius, CwResult, EpsResult, SanityResult
from robust_mnv1.records.schema import encode_mask

# The evaluation order's shuffle is the same for every model, seed and run, so that all records of a
# model attack the same images and their per-image masks can be combined.
EVAL_ORDER_SEED = 0
ORDERS = ("stratified", "dataset")


def check_eval_order(order: str) -> None:
    """One-line error for an ``eval.order`` that is not one of :data:`ORDERS`."""
    if order not in ORDERS:
        raise UserError(f"unknown eval.order {order!r}; valid choices: {', '.join(ORDERS)}")


def eval_order(y: torch.Tensor, order: str = "stratified") -> torch.Tensor:
    """The order in which evaluations take test images; every evaluation uses a prefix of it.

    ``"dataset"`` is the split's own order. An image folder lists its test images class by class, so
    there its first 1000 CIFAR-10 images are all airplanes. ``"stratified"`` shuffles each class with a
    fixed seed and interleaves the classes in proportion to their size (image k of a class of m sits
    at position (k + 0.5) / m), so every prefix holds each class in its share of the test set.
    """
    check_eval_order(order)
    if order == "dataset":
        return torch.arange(len(y))
    labels = y.cpu().numpy()
    rng = np.random.default_rng(EVAL_ORDER_SEED)
    position = np.empty(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        position[rng.permutation(members)] = (np.arange(len(members)) + 0.5) / len(members)
    return torch.from_numpy(np.lexsort((labels, position)))  # by position, ties by class


def eval_subset(
    split: Split, n: int | None, device: torch.device, order: str = "stratified"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images of :func:`eval_order` (all when ``n`` is None), as floats in [0, 1]."""
    idx = eval_order(split.y, order)[:n]
    return split.x[idx].to(device).float().div_(255), split.y[idx].to(device)


def _share(k: int, n: int) -> float:
    return k / n if n else 0.0


@torch.no_grad()
def clean_accuracy(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024
) -> CleanResult:
    """Clean accuracy with its interval and the per-image correct mask, which pairs records of
    different models image by image (their fooling rates, and C&W distances of commonly correct images)."""
    was_training = model.training
    model.eval()
    try:
        mask = torch.cat(
            [
                model(xb).argmax(1) == yb
                for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
            ]
        )
    finally:
        model.train(was_training)
    k, n = int(mask.sum()), len(y)
    return CleanResult(n, k, _share(k, n), wilson_ci(k, n), encode_mask(mask))


def check_clean(clean: CleanResult, recorded: float, max_drop: float, what: str) -> None:
    """Refuse to report a model whose clean accuracy is far below what training recorded.

    The tolerance widens by the Wilson interval, since a small eval subset is noisy.
    """
    lo, hi = clean.ci95
    if hi + max_drop < recorded:
        raise UserError(
            f"{what}: clean accuracy {clean.accuracy:.4f} (95% CI [{lo:.4f}, {hi:.4f}]) is far below the "
            f"cached model's recorded {recorded:.4f}; stale checkpoint? delete the cache entry"
        )


def _eps_entry(name: str, eps_255: float, loss: str, robust: torch.Tensor, **apgd: Any) -> EpsResult:
    n, k = len(robust), int(robust.sum())
    return EpsResult(
        attack=name,
        norm="linf",
        eps=eps(eps_255),
        eps_255=eps_255,
        loss=loss,
        n=n,
        robust=k,
        accuracy=_share(k, n),
        ci95=wilson_ci(k, n),
        robust_mask=encode_mask(robust.cpu().numpy()),
        **apgd,
    )


def run_fgsm(model, x, y, spec: FGSMSpec) -> list[EpsResult]:
    results = FGSM.over_eps(model, x, y, [eps(e) for e in spec.eps_255], batch_size=spec.batch_size)
    return [
        _eps_entry("fgsm", e, "ce", res.clean_correct & ~res.success)
        for e, res in zip(spec.eps_255, results, strict=True)
    ]


def run_pgd(model, x, y, spec: PGDSpec, seed: int, progress: AttackProgress | None = None) -> list[EpsResult]:
    """PGD over the eps grid, smallest eps first, each eps attacking only the previous one's survivors.

    A perturbation inside a small ball lies inside every larger one, so a sample broken at one eps is
    broken at all larger ones. Attacking survivors only keeps that true of the reported masks (a
    standalone run at a larger eps can miss a sample a smaller eps broke) and skips samples already
    known to be broken. With ``progress``, a stopped run resumes from its last finished batch.
    """
    out = []
    alive = torch.ones(len(y), dtype=torch.bool, device=y.device)
    for e in sorted(spec.eps_255):
        robust = torch.zeros_like(alive)
        idx = alive.nonzero().squeeze(1)
        if idx.numel():
            correct, success = attack_in_parts(
                spec.attack(e, seed), model, x[idx], y[idx], progress, f"pgd@{e:g}:{spec.loss}"
            )
            survived = correct & ~success
            if spec.adds_margin(e) and survived.any():
                # Margin loss catches saturated softmax, where CE gradients vanish: it attacks CE's survivors.
                keep = survived.nonzero().squeeze(1)
                correct, success = attack_in_parts(
                    spec.attack(e, seed, loss="margin"),
                    model,
                    x[idx[keep]],
                    y[idx[keep]],
                    progress,
                    f"pgd@{e:g}:margin",
                )
                survived[keep] = correct & ~success
            robust[idx] = survived
        out.append(_eps_entry("pgd", e, spec.loss_label(e), robust))
        alive = robust
    return out


def survivors(entries: Iterable[EpsResult], eps_255: float, n: int) -> torch.Tensor:
    """The images every L-inf entry of ``entries`` at ``eps_255`` left robust (per-sample AND), as a
    bool[n] mask; there must be at least one entry there, each over the same n images."""
    masks = [e.mask() for e in entries if e.norm == "linf" and e.eps_255 == eps_255]
    if not masks or any(len(m) != n for m in masks):
        raise ValueError(f"the records hold no entries over {n} images at eps {eps_255}/255 to build on")
    return torch.from_numpy(np.logical_and.reduce(masks))


def run_apgd(
    model,
    x,
    y,
    spec: APGDSpec,
    seed: int,
    before: dict[float, torch.Tensor],
    progress: AttackProgress | None = None,
) -> list[EpsResult]:
    """APGD-CE, then APGD-T on what it left, at each eps of ``spec.eps_255``, attacking only the images
    ``before[eps]`` marks robust (those every FGSM and PGD record left robust there).

    The entries' masks are therefore robust to every attack of the protocol at that eps: the worst
    case, as the leaderboard takes it; what APGD added is ``attacked - robust``. With ``progress``, a
    stopped run resumes from its last finished batch.
    """
    out = []
    for e in spec.eps_255:
        robust = before[e].to(y.device).clone()
        broken = {}
        for name, attack in spec.stages(e, seed):
            idx = robust.nonzero().squeeze(1)
            broken[name] = 0
            if idx.numel():
                correct, success = attack_in_parts(attack, model, x[idx], y[idx], progress, f"{name}@{e:g}")
                # An image FGSM/PGD left robust is clean-correct, so a success is exactly "broken here".
                robust[idx] = correct & ~success
                broken[name] = int(success.sum())
        out.append(
            _eps_entry("apgd", e, "apgd-ce+apgd-t", robust, attacked=int(before[e].sum()), broken=broken)
        )
    return out


def square_check(
    model, x, y, robust: torch.Tensor, eps_255: float, spec: SquareSpec, seed: int
) -> dict[str, Any] | None:
    """The gradient-free Square attack on a seeded sample of the images every gradient attack left
    robust at ``eps_255`` (``attacks.checks.check_square_breaks_robust``): the sanity report, flagged
    when Square breaks more than the check's share of them, a sign that the gradients misled. None
    when ``spec.samples`` is 0 (the check is off)."""
    if spec.samples == 0:
        return None
    idx = robust.nonzero().squeeze(1).cpu()
    if not idx.numel():
        return {"name": "square_breaks_robust", "flagged": False, "detail": "no robust image to check"}
    pick = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed))[: spec.samples]]
    pick = pick.to(x.device)
    report = attacks.checks.check_square_breaks_robust(
        model, x[pick], y[pick], eps=eps(eps_255), samples=spec.samples, queries=spec.queries, seed=seed
    )
    return report.to_dict()


def run_cw(model, x, y, spec: CWSpec, seed: int, progress: AttackProgress | None = None) -> CwResult:
    """C&W's record entry; with ``progress``, a stopped run resumes from its last binary-search step."""
    res = spec.attack(progress)(model, x, y)
    correct = res.clean_correct.cpu().numpy()
    broken = res.success.cpu().numpy() & correct
    # Minimal L2 over clean-correct samples; one C&W never broke counts as infinitely robust.
    l2 = np.where(broken, res.l2.cpu().numpy(), np.inf)[correct]
    finite = l2[np.isfinite(l2)]
    median = float(np.median(l2)) if len(l2) else float("nan")
    n = len(y)
    radii = []
    for r in spec.l2_radii:
        k = round(res.robust_accuracy_at(r) * n)
        radii.append(CwRadius(l2=r, accuracy=_share(k, n), ci95=wilson_ci(k, n), n=n, correct=k))
    return CwResult(
        n=n,
        n_clean_correct=int(correct.sum()),
        median_l2=median,
        median_l2_ci95=bootstrap_ci(l2, np.median, seed=seed) if len(l2) else (float("nan"),) * 2,
        mean_l2=float(finite.mean()) if len(finite) else float("nan"),
        success_rate=float(broken.sum() / max(1, correct.sum())),
        robust_at=tuple(radii),
        steps=spec.steps,
        binary_search_steps=spec.binary_search_steps,
        # Per-image distances let the leaderboard redraw the median (its findings' bootstrap);
        # 6 significant digits keep a 1000-image record small.
        l2_per_image=tuple(float(f"{v:.6g}") for v in l2),
    )


def sanity(model, x, y, eps: float, seed: int) -> SanityResult:
    return SanityResult.combined(
        [r.to_dict() for r in attacks.checks.run_all(model, x, y, eps=eps, seed=seed)]
    )


def cpu_latency_ms(model: torch.nn.Module, image_size: int, reps: int) -> float:
    """Median wall time of one batch-1 forward on one CPU thread, in ms: the edge-deployment figure.

    One thread, so the figure does not depend on how many cores the study host happens to have.
    """
    import copy

    m = copy.deepcopy(model).to("cpu").eval()
    x = torch.rand(1, 3, image_size, image_size)
    times = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for i in range(reps + 5):
                t0 = time.perf_counter()
                m(x)
                if i >= 5:  # the first calls pay one-off allocation costs
                    times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times) * 1e3)
