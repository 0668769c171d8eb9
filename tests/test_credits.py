"""The credit ledger's period arithmetic and reservation rules (pure logic, no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crossroads.errors import GatewayError
from crossroads.gate.credits import CreditLedger, Spend, period_starts
from crossroads.gate.keys import display_label, generate_key, hash_key, model_allowed
from crossroads.store.rows import KeyRow


def test_period_starts_midnight_utc_monday_first_of_month() -> None:
    # Sunday 2026-11-22 23:59 UTC: the week began Monday the 16th.
    starts = period_starts(datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC))
    assert starts["daily"] == datetime(2026, 11, 22, tzinfo=UTC)
    assert starts["weekly"] == datetime(2026, 11, 16, tzinfo=UTC)
    assert starts["monthly"] == datetime(2026, 11, 1, tzinfo=UTC)
    # Monday 00:00 starts a new week; the 1st starts a new month even mid-week.
    assert period_starts(datetime(2026, 11, 23, 0, 0, tzinfo=UTC))["weekly"] == datetime(2026, 11, 23, tzinfo=UTC)
    assert period_starts(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))["monthly"] == datetime(2026, 12, 1, tzinfo=UTC)


def test_reset_boundaries_roll_counters() -> None:
    ledger = CreditLedger()
    ledger.starts = period_starts(datetime(2026, 11, 30, 23, 0, tzinfo=UTC))  # a Monday, last day of November
    ledger.spend["k"] = Spend(total=10, daily=1, weekly=3, monthly=7)
    ledger._roll(datetime(2026, 11, 30, 23, 59, tzinfo=UTC))
    assert (ledger.spend["k"].daily, ledger.spend["k"].weekly, ledger.spend["k"].monthly) == (1, 3, 7)
    ledger._roll(datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC))  # Tuesday the 1st: new day and month, same week
    spend = ledger.spend["k"]
    assert (spend.total, spend.daily, spend.weekly, spend.monthly) == (10, 0, 3, 0)
    ledger._roll(datetime(2026, 12, 7, 0, 0, 1, tzinfo=UTC))  # next Monday
    assert ledger.spend["k"].weekly == 0 and ledger.spend["k"].total == 10


@pytest.mark.parametrize(("reset", "used"), [(None, 10.0), ("daily", 1.0), ("weekly", 3.0), ("monthly", 7.0)])
def test_limit_counts_the_right_period(reset: str | None, used: float) -> None:
    ledger = CreditLedger()
    ledger.spend["k"] = Spend(total=10, daily=1, weekly=3, monthly=7)
    key = KeyRow(hash="k", name="n", label="l", limit=20.0, limit_reset=reset)
    assert ledger.remaining(key) == pytest.approx(20.0 - used)


def test_reserve_settle_and_402() -> None:
    ledger = CreditLedger()
    key = KeyRow(hash="k", name="n", label="l", limit=1.0)
    first = ledger.reserve(key, 0.6, prompt_cost=0.0, completion_price=0.001)
    with pytest.raises(GatewayError) as err:
        ledger.reserve(key, 0.6, prompt_cost=0.0, completion_price=0.001)
    assert err.value.status == 402 and "At most 400 max_tokens" in err.value.message
    ledger.settle(first, 0.1)
    ledger.settle(first, 0.1)  # settling twice changes nothing
    assert ledger.remaining(key) == pytest.approx(0.9)
    assert ledger.reserve(key, 0.6, prompt_cost=0.0, completion_price=0.001).amount == 0.6
    unlimited = KeyRow(hash="u", name="n", label="l")
    assert ledger.reserve(unlimited, 1e9, prompt_cost=0, completion_price=1).amount == 1e9


def test_key_format_hash_and_label() -> None:
    key = generate_key()
    assert key.startswith("sk-or-v1-") and len(key) == 9 + 64 and int(key[9:], 16) >= 0
    assert generate_key() != key
    assert hash_key(key) == hash_key(key.encode()) and len(hash_key(key)) == 64
    label = display_label(key)
    assert label.startswith("sk-or-v1-") and key not in label and len(label) < 20


def test_model_globs() -> None:
    assert model_allowed(None, "anything/at-all")
    assert model_allowed(["openai/*"], "openai/gpt-4o")
    assert not model_allowed(["openai/*"], "anthropic/claude-sonnet-4")
    assert model_allowed(["*/claude-*", "x/y"], "anthropic/claude-sonnet-4")
    assert not model_allowed([], "openai/gpt-4o")
