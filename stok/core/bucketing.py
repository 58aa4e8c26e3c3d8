"""Sharding over ranks and length-bucketed batching by a padded-frame budget.

Sharding is deterministic and independent of what is already done, so a resumed run (even with
another world size) gives every utterance to exactly one rank. Batches are formed over a rank's
utterances sorted by length, longest first (an out-of-memory batch shows up at once), so that the
padding each batch carries stays small.
"""

from __future__ import annotations

from typing import List, Optional, Sequence


def shard(durations: Sequence[Optional[float]], rank: int, world: int) -> List[int]:
    """Indices this rank owns. With all durations known: longest-first round robin (balanced work);
    otherwise round robin in the given (key) order."""
    n = len(durations)
    if world <= 1:
        return list(range(n))
    if all(d is not None for d in durations):
        order = sorted(range(n), key=lambda i: (-durations[i], i))
    else:
        order = list(range(n))
    return sorted(order[rank::world])


def make_batches(costs: Sequence[int], max_cost: int = 0, batch_size: int = 0,
                 bucketing: bool = True) -> List[List[int]]:
    """Group indices into batches whose padded cost (size x longest item) stays within ``max_cost``
    and whose size stays within ``batch_size`` (0: no limit). An item over the budget gets a batch alone."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i)) if bucketing else list(range(len(costs)))
    batches: List[List[int]] = []
    cur: List[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, costs[i])
        too_big = max_cost and (len(cur) + 1) * new_longest > max_cost
        too_many = batch_size and len(cur) >= batch_size
        if cur and (too_big or too_many):
            batches.append(cur)
            cur, new_longest = [], costs[i]
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches


def padding_stats(batches: Sequence[Sequence[int]], costs: Sequence[int]) -> dict:
    """Real and padded frame totals; ``padding_ratio`` = share of computed frames that are padding."""
    real = sum(costs[i] for b in batches for i in b)
    padded = sum(len(b) * max(costs[i] for i in b) for b in batches if b)
    return {"real_frames": int(real), "padded_frames": int(padded),
            "padding_ratio": (padded - real) / padded if padded else 0.0}
