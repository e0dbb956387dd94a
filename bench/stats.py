"""The tick bench's statistics over paired rounds, free of I/O (tests/test_bench_stats.py checks them):
which of two paths wins, and by how much at most, when each round measures both."""
import math


def sign_test(wins: int, losses: int) -> float:
    """Two-sided sign test over paired rounds (ties left out): the chance of a split at least this
    uneven if both paths were equally likely to win a round. Under 0.05 needs at least 6 rounds."""
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def verdict(mine, theirs) -> str:
    """'ahead', 'behind' or 'undecided' over rounds (lower is better), by the sign test at 5%."""
    wins = sum(a < b for a, b in zip(mine, theirs))
    losses = sum(a > b for a, b in zip(mine, theirs))
    p = sign_test(wins, losses)
    word = "undecided" if p >= 0.05 else "ahead" if wins > losses else "behind"
    return f"{word} (p<0.01)" if p < 0.005 else f"{word} (p={p:.2f})"


def median_interval(values, level=0.95):
    """A distribution-free interval for the median of `values` (here a path's ratio to HAProxy,
    round by round): the k-th lowest and k-th highest value, with k the largest rank that still
    covers the median with at least `level` chance (binomial). It is the sign test read the other
    way: the verdict is 'undecided' when 1.00x lies inside. None below 6 values (even the lowest
    and highest of 5 cover it with only 94% chance)."""
    n, s = len(values), sorted(values)
    # the k-th lowest misses the median as often as k - 1 wins of n would come by chance
    ks = [k for k in range(1, n // 2 + 1) if sign_test(k - 1, n - k + 1) <= 1 - level]
    return (s[ks[-1] - 1], s[n - ks[-1]]) if ks else None
