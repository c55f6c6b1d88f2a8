"""The one back-off: its delays, and the count of failures in a row it keeps."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from hepto.backoff import Backoff, BackoffPolicy


class BackoffPolicyTests(SynchronousTestCase):
    def test_doubles_up_to_the_maximum(self) -> None:
        policy = BackoffPolicy(initial=1, factor=2, maximum=30)
        self.assertEqual([policy.delay(n) for n in range(1, 8)], [1, 2, 4, 8, 16, 30, 30])

    def test_a_week_long_crash_loop_stays_at_the_maximum(self) -> None:
        self.assertEqual(BackoffPolicy().delay(10**6), 30.0)

    def test_a_stable_run_clears_the_count(self) -> None:
        policy = BackoffPolicy(stable_after=60)
        self.assertEqual(policy.failures_after(5, 59.9), 6)
        self.assertEqual(policy.failures_after(5, 60), 1)

    def test_nonsense_is_refused(self) -> None:
        self.assertRaises(ValueError, BackoffPolicy, initial=10, maximum=1)
        self.assertRaises(ValueError, BackoffPolicy, factor=0.5)


class BackoffTests(SynchronousTestCase):
    def test_each_failure_waits_longer(self) -> None:
        backoff = Backoff(BackoffPolicy(initial=1, maximum=10))
        self.assertEqual([backoff.failed() for _ in range(6)], [1, 2, 4, 8, 10, 10])
        self.assertEqual(backoff.failures, 6)

    def test_a_success_starts_over(self) -> None:
        backoff = Backoff(BackoffPolicy(initial=0.5, maximum=60))
        backoff.failed()
        backoff.failed()
        backoff.reset()
        self.assertEqual(backoff.failed(), 0.5)

    def test_a_stable_run_starts_over_a_short_one_does_not(self) -> None:
        backoff = Backoff(BackoffPolicy(initial=1, maximum=30, stable_after=60))
        self.assertEqual([backoff.failed(run_time=1) for _ in range(3)], [1, 2, 4])
        self.assertEqual(backoff.failed(run_time=60), 1)
        self.assertEqual(backoff.failed(run_time=59), 2)

    def test_without_a_run_time_nothing_is_forgiven(self) -> None:
        # Retries that answer (a batch, a pass) end their streak with reset() alone.
        backoff = Backoff(BackoffPolicy(initial=1, maximum=30, stable_after=0))
        self.assertEqual([backoff.failed() for _ in range(3)], [1, 2, 4])
