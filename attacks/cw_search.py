"""The state C&W's binary search over ``c`` carries from one step to the next, and where it is kept.

A binary-search step starts from ``x`` with fresh Adam state, so this is all that a stopped
:class:`~attacks.cw.CarliniWagnerL2` call needs to go on from its last finished step and give the
uninterrupted call's results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

# Constants never grow past this; a sample that needs more is not attackable at useful distances.
_MAX_CONST = 1e10


class SearchCheckpoint(Protocol):
    """Where :class:`~attacks.cw.CarliniWagnerL2` keeps each chunk's binary search after every step of it.

    Keys name a chunk's images, labels and the attack's settings; one checkpoint serves one model
    (a state saved for other weights would resume a search that does not belong to them).
    """

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The tensors last saved under ``key``, or None."""

    def save(self, key: str, state: dict[str, torch.Tensor]) -> None:
        """Keep ``state`` under ``key``, replacing what was there."""


@dataclass
class BinarySearch:
    """C&W's binary search over ``c`` for one chunk, between two of its steps: the constants, their
    bounds, and each sample's best point and distance so far."""

    steps_done: int
    const: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    best_adv: torch.Tensor
    best_l2: torch.Tensor

    def update(self, found: torch.Tensor) -> None:
        """Take one step's verdicts: a constant that broke a sample bounds it from above, else below."""
        self.upper = torch.where(found, torch.minimum(self.upper, self.const), self.upper)
        self.lower = torch.where(found, self.lower, torch.maximum(self.lower, self.const))
        bisect = (self.lower + self.upper) / 2.0
        self.const = torch.where(torch.isinf(self.upper), self.const * 10.0, bisect).clamp(max=_MAX_CONST)
        self.steps_done += 1

    def state(self) -> dict[str, torch.Tensor]:
        """Copies on the CPU: the search goes on updating its own tensors in place."""
        tensors = {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        copies = {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}
        return {"steps_done": torch.tensor(self.steps_done), **copies}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], like: torch.Tensor) -> BinarySearch | None:
        """The search ``state`` holds, on ``like``'s device, if it is one for ``like``'s samples."""
        try:
            search = cls(
                steps_done=int(state["steps_done"]),
                **{
                    k: state[k].to(like.device, copy=True)
                    for k in ("const", "lower", "upper", "best_adv", "best_l2")
                },
            )
        except KeyError:
            return None
        m = like.shape[0]
        shapes_match = search.best_adv.shape == like.shape and all(
            t.shape == (m,) for t in (search.const, search.lower, search.upper, search.best_l2)
        )
        return search if shapes_match else None
