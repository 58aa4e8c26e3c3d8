"""Split a batch into groups of similar lengths, for work that is padded within a group and pays a fixed cost
per group (oneDNN reorders an LSTM's or a conv's weights on every call: ~5-20 ms for the encoder's LSTM layers).

The engine's batches are sorted by length but can still span a wide range (a small corpus fits in one
batch); running the padded batch as one would then spend much of its LSTM time on padding. Here the items,
sorted by length, are cut into consecutive groups minimising ``sum over groups (fixed cost + items x longest)``
(dynamic programming over the cut points), each group holding at least ``min_size`` items.
"""

from __future__ import annotations

from typing import List, Sequence


def length_groups(lengths: Sequence[int], min_size: int, group_cost: float) -> List[List[int]]:
    """Indices into ``lengths`` grouped as above, longest first; ``group_cost`` in the units of ``lengths``
    (the padded work one more group is worth). Fewer than ``2 * min_size`` items make one group."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    if n < 2 * max(1, min_size):
        return [order] if order else []
    size = max(1, min_size)
    inf = float("inf")
    best = [0.0] + [inf] * n  # best[i]: cost of grouping the i longest items
    cut = [0] * (n + 1)
    for end in range(size, n + 1):
        for start in range(0, end - size + 1):
            if best[start] == inf:
                continue
            cost = best[start] + group_cost + (end - start) * lengths[order[start]]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups: List[List[int]] = []
    end = n
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]
