"""The one conversion of L-inf radii: configs and records give them in units of 1/255 (the pixel
quantum of an 8-bit image), and models take pixels in [0, 1]."""

from __future__ import annotations


def eps(eps_255: float) -> float:
    """An L-inf radius in units of 1/255 as a radius over [0, 1] pixels."""
    return eps_255 / 255
