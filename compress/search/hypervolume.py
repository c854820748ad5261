"""Exact hypervolume of a set of points (all objectives minimized), by recursive slicing.

Exponential in the number of objectives but fine for the 2-4 objectives and tens of points of a front.
"""

from __future__ import annotations


def _nondominated(points: list[tuple[float, ...]]) -> list[tuple[float, ...]]:
    keep = []
    for p in points:
        if not any(all(q[i] <= p[i] for i in range(len(p))) and q != p for q in points):
            keep.append(p)
    return sorted(set(keep))


def hypervolume(points: list[tuple[float, ...]], reference: tuple[float, ...]) -> float:
    """Volume dominated by ``points`` and bounded by ``reference`` (points beyond it contribute nothing)."""
    pts = [tuple(p) for p in points if all(v < r for v, r in zip(p, reference))]
    pts = _nondominated(pts)
    if not pts:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in pts)
    # Slice along the last objective: between consecutive levels the dominated region is constant.
    levels = sorted({p[-1] for p in pts})
    volume = 0.0
    for i, level in enumerate(levels):
        upper = levels[i + 1] if i + 1 < len(levels) else reference[-1]
        below = [p[:-1] for p in pts if p[-1] <= level]
        volume += hypervolume(below, reference[:-1]) * (upper - level)
    return volume
