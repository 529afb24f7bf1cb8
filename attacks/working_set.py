"""Per-sample early exit for the batched attacks: the samples still in work, as one compactable set.

A batched attack keeps, for each sample, a few tensors (its iterate, optimiser state, best point so
far...) and stops paying forward and backward passes for a sample once it is done (broken, or stalled).
Dropping the done samples is one gather per tensor plus one host-device synchronisation (the number of
samples left decides the new shapes), so attacks do it only every few steps, and only once enough of
the set is done: on CUDA each new batch shape can also cost a cuDNN autotuning pass.
"""

from __future__ import annotations

import torch

# Steps between the synchronising checks for broken samples in the fixed-budget attacks (PGD, APGD).
# Checking every step would save a little more work but stall the GPU's launch queue each step;
# checking rarely keeps computing samples that are already done.
CHECK_EVERY = 2
# Shrink the working batch only once this fraction of it is done: each new batch shape can cost a
# cuDNN autotuning pass, so tiny compactions would cost more than they save.
COMPACT_FRACTION = 0.25


class WorkingSet:
    """The per-sample tensors of the samples an attack is still working on, and their rows in the chunk.

    Every tensor given as a keyword (and every tensor attribute set later) has one row per sample in
    work; ``idx`` holds those samples' rows in the chunk. ``results`` maps names to chunk-wide tensors
    the attack fills in: the set starts with their rows under the same names and :meth:`store` writes
    them back, which :meth:`compact` does before dropping rows.
    """

    def __init__(self, idx: torch.Tensor, results: dict[str, torch.Tensor], **tensors: torch.Tensor) -> None:
        self.idx = idx
        self._results = results
        for name, full in results.items():
            setattr(self, name, full[idx])
        for name, tensor in tensors.items():
            setattr(self, name, tensor)

    def __len__(self) -> int:
        return int(self.idx.numel())

    def store(self) -> None:
        """Write the result tensors of the samples in work back into the chunk-wide tensors."""
        for name, full in self._results.items():
            full[self.idx] = getattr(self, name)

    def compact(self, keep: torch.Tensor, *, min_fraction: float = 0.0) -> bool:
        """Keep only the samples at positions ``keep`` (sorted, from ``nonzero``); False once none is left.

        Nothing changes unless at least ``min_fraction`` of the set (and at least one sample) would
        leave: a small compaction costs a gather per tensor and a new batch shape for little saving.
        """
        n_keep = int(keep.numel())
        if len(self) - n_keep < max(1.0, min_fraction * len(self)):
            return True
        self.store()
        if n_keep == 0:
            return False
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value[keep])
        return True


class BestIterateSet(WorkingSet):
    """The working set of a fixed-budget attack that maximises a loss (PGD, APGD).

    Per sample it keeps ``best``, the first adversarial point found and, until there is one, the
    highest-loss point; ``loss``, that point's loss; and ``found``, whether the sample is broken. These
    are the result tensors, written back into the chunk-wide ``best``, ``found`` and ``loss``.
    """

    def __init__(
        self,
        idx: torch.Tensor,
        *,
        best: torch.Tensor,
        found: torch.Tensor,
        loss: torch.Tensor,
        **tensors: torch.Tensor,
    ) -> None:
        super().__init__(idx, {"best": best, "found": found, "loss": loss}, **tensors)

    def record(self, point: torch.Tensor, loss: torch.Tensor, is_adv: torch.Tensor) -> None:
        """Take ``point`` as the best of the samples it breaks first, or whose loss it raises before that."""
        take = ~self.found & (is_adv | (loss > self.loss))
        self.best = torch.where(take.view(-1, *([1] * (point.dim() - 1))), point, self.best)
        self.loss = torch.where(take, loss, self.loss)
        self.found = self.found | is_adv

    def drop_found(self, step: int) -> bool:
        """At every ``CHECK_EVERY``-th step, drop the broken samples (see :meth:`WorkingSet.compact`).

        False once no sample is left, which ends the run.
        """
        if step % CHECK_EVERY:
            return True
        return self.compact((~self.found).nonzero().squeeze(1), min_fraction=COMPACT_FRACTION)
