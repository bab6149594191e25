"""The time budget's arithmetic (omniseq/train/budget.py), with a made-up clock: when it fits, and to what."""

from __future__ import annotations

from omniseq.train.budget import COMPILE_STEPS, FIT_AFTER, REFIT_EVERY, SLACK, TimeBudget, steps_that_fit


def test_steps_that_fit_divides_what_is_left_by_the_step_time():
    # 100 s budget, 40 spent at step 10, 2 s a step: 30 more steps fit, of the 200 planned
    assert steps_that_fit(10, 200, 2.0, 40.0, 100.0) == 40
    assert steps_that_fit(10, 200, 3.0, 40.0, 100.0) == 30  # 60 / 3 = 20 more


def test_steps_that_fit_keeps_a_plan_that_fits_or_overruns_only_within_the_slack():
    assert steps_that_fit(10, 40, 2.0, 40.0, 100.0) == 40  # ends at exactly 100 s
    within = 100.0 * SLACK / 2  # projected overrun smaller than the slack: left alone
    assert steps_that_fit(10, 40, 2.0, 40.0 + within, 100.0) == 40
    assert steps_that_fit(10, 40, 2.0, 40.0 + 100.0 * SLACK * 2, 100.0) < 40


def test_an_overspent_budget_still_takes_one_more_step_and_never_adds_any():
    assert steps_that_fit(10, 200, 2.0, 150.0, 100.0) == 11
    assert steps_that_fit(12, 12, 2.0, 150.0, 100.0) == 12  # overspent at the last step: no step past it


def test_fits_are_due_after_fit_after_steps_then_every_refit_every():
    budget = TimeBudget.begin(1.0, step=0, now=0.0)
    due = [s for s in range(1, 45) if budget.due(s, now=float(s))]
    assert due == [FIT_AFTER + k * REFIT_EVERY for k in range(4) if FIT_AFTER + k * REFIT_EVERY < 45]
    assert budget.timed_from == (COMPILE_STEPS, float(COMPILE_STEPS))  # untimed before it


def test_a_resumed_loop_counts_from_its_own_start_and_keeps_the_seconds_spent_before():
    budget = TimeBudget.begin(2.0, step=50, now=1000.0, spent_before=70.0)
    assert not any(budget.due(s, now=1000.0 + 2 * (s - 50)) for s in range(51, 50 + FIT_AFTER))
    assert budget.due(50 + FIT_AFTER, now=1000.0 + 2 * FIT_AFTER)
    per_step, spent = budget.timing(50 + FIT_AFTER, now=1000.0 + 2 * FIT_AFTER)
    assert per_step == 2.0 and spent == 70.0 + 2 * FIT_AFTER
    # 120 s budget, 90 spent: 15 more steps fit after step 60
    assert steps_that_fit(50 + FIT_AFTER, 500, per_step, spent, budget.seconds) == 50 + FIT_AFTER + 15
