import math

from libs.backoff import backoff_delay


def test_delays_double_from_the_first_up_to_the_longest() -> None:
    assert [backoff_delay(n, 0.5, 4.0) for n in (1, 2, 3, 4, 5, 50)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [backoff_delay(n, 1.0, 60.0) for n in (1, 2, 3, 7, 8)] == [1.0, 2.0, 4.0, 60.0, 60.0]


def test_without_a_cap_delays_keep_doubling_and_long_runs_do_not_overflow() -> None:
    assert [backoff_delay(n, 2.0) for n in (1, 2, 10)] == [2.0, 4.0, 1024.0]
    assert backoff_delay(2000, 1.0, 60.0) == 60.0
    assert math.isfinite(backoff_delay(2000, 1.0))


def test_a_count_below_one_waits_the_first_delay() -> None:
    assert backoff_delay(0, 3.0, 60.0) == 3.0
