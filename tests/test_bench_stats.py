"""The tick bench's verdicts (bench/stats.py): the README's 'ahead', 'behind' and intervals rest on them."""
import importlib.util
import math
import os
import statistics

from hypothesis import given, strategies as st

_spec = importlib.util.spec_from_file_location(
    "bench_stats", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "stats.py"))
stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stats)


def test_sign_test_matches_the_binomial_tail():
    assert math.isclose(stats.sign_test(12, 3), 2 * 576 / 2 ** 15)      # 0.035: 12 of 15 decides
    assert math.isclose(stats.sign_test(11, 4), 2 * 1941 / 2 ** 15)     # 0.118: 11 of 15 does not
    assert math.isclose(stats.sign_test(6, 0), 2 / 64)
    assert stats.sign_test(5, 0) == 2 / 32                               # 5 of 5 cannot decide at 5%
    assert stats.sign_test(3, 4) == 1.0 and stats.sign_test(0, 0) == 1.0


def test_verdict_reads_lower_as_better_and_leaves_ties_out():
    assert stats.verdict([1] * 12 + [9] * 3, [5] * 15) == "ahead (p=0.04)"
    assert stats.verdict([5] * 15, [1] * 12 + [9] * 3) == "behind (p=0.04)"
    assert stats.verdict([1] * 6 + [5] * 9, [5] * 15) == "ahead (p=0.03)"    # 9 ties: 6 of 6
    assert stats.verdict([1] * 15, [2] * 15) == "ahead (p<0.01)"
    assert stats.verdict([1, 9] * 7, [5] * 14) == "undecided (p=1.00)"


def test_median_interval_on_known_ranks():
    assert stats.median_interval(list(range(1, 16))) == (4, 12)     # 15 rounds: 4th lowest to 4th highest
    assert stats.median_interval([6, 1, 5, 2, 4, 3]) == (1, 6)      # 6 rounds: only the extremes cover 95%
    assert stats.median_interval([1, 2, 3, 4, 5]) is None           # 5: even the extremes cover only 94%


@given(st.lists(st.floats(min_value=0.01, max_value=100), min_size=6, max_size=60))
def test_median_interval_holds_the_median_with_95_percent_cover(values):
    lo, hi = stats.median_interval(values)
    s, n = sorted(values), len(values)
    assert lo <= statistics.median(values) <= hi
    # the k-th lowest and the k-th highest, for the largest k that still covers the median 95% of the time
    def cover(k):
        return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
    assert any((s[k - 1], s[n - k]) == (lo, hi) and cover(k) >= 0.95 and (k == n // 2 or cover(k + 1) < 0.95)
               for k in range(1, n // 2 + 1))


@given(st.lists(st.sampled_from([0.5, 0.8, 0.95, 1.05, 1.3, 2.0]) | st.floats(min_value=0.01, max_value=100)
                .filter(lambda x: x != 1.0), min_size=6, max_size=40))
def test_interval_and_verdict_agree(ratios):
    """The interval is the sign test read the other way: the verdict is 'undecided' exactly when
    1.00x lies inside (ratios as the report takes them: HAProxy's latency over the path's)."""
    mine = [1.0] * len(ratios)
    lo, hi = stats.median_interval(ratios)
    word = stats.verdict(mine, ratios).split()[0]
    assert word == ("undecided" if lo < 1 < hi else "ahead" if lo > 1 else "behind")
