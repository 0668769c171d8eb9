"""The credit ledger's period arithmetic and reservation rules (pure logic, no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crossroads.errors import GatewayError
from crossroads.gate.credits import Budget, CreditLedger, Spend, period_starts, usd_text
from crossroads.gate.keys import display_label, generate_key, hash_key, model_allowed


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


def key(limit: float | None = None, reset: str | None = None, account: str = "k") -> Budget:
    return Budget("key", account, limit, reset)


def workspace(limit: float | None, name: str = "acme", account: str = "ws:acme") -> Budget:
    return Budget("workspace", account, limit, None, name)


@pytest.mark.parametrize(("reset", "used"), [(None, 10.0), ("daily", 1.0), ("weekly", 3.0), ("monthly", 7.0)])
def test_limit_counts_the_right_period(reset: str | None, used: float) -> None:
    ledger = CreditLedger()
    ledger.spend["k"] = Spend(total=10, daily=1, weekly=3, monthly=7)
    assert ledger.used("k", reset) == used
    with pytest.raises(GatewayError) as refused:
        ledger.reserve([key(20.0, reset)], 20.0 - used + 0.01, prompt_cost=0, completion_price=0)
    assert refused.value.metadata["limit_remaining"] == pytest.approx(20.0 - used)
    assert ledger.reserve([key(20.0, reset)], 20.0 - used, prompt_cost=0, completion_price=0).amount == 20.0 - used


def test_reserve_settle_and_402() -> None:
    ledger = CreditLedger()
    chain = [key(1.0)]
    first = ledger.reserve(chain, 0.6, prompt_cost=0.0, completion_price=0.001)
    assert first.accounts == ("k",)
    with pytest.raises(GatewayError) as err:
        ledger.reserve(chain, 0.6, prompt_cost=0.0, completion_price=0.001)
    assert err.value.status == 402 and err.value.message == (
        "Insufficient credit: this request may cost up to $0.60 but the key has $0.40 of its $1.00 limit left. "
        "At most 400 max_tokens would fit.")
    assert err.value.metadata == {"limit": 1.0, "limit_remaining": pytest.approx(0.4), "reservation": 0.6,
                                  "level": "key"}
    ledger.settle(first, 0.1)
    ledger.settle(first, 0.1)  # settling twice changes nothing
    assert ledger.figures("k").total == pytest.approx(0.1) and ledger.figures("k").reserved == 0.0
    assert ledger.reserve(chain, 0.6, prompt_cost=0.0, completion_price=0.001).amount == 0.6
    assert ledger.reserve([key(account="u")], 1e9, prompt_cost=0, completion_price=1).amount == 1e9
    nothing = ledger.reserve([], 5.0, prompt_cost=0, completion_price=0)
    assert nothing.accounts == () and nothing.amount == 0.0
    ledger.settle(nothing, 1.0)  # no account to charge


def test_the_master_key_is_tracked_but_never_limited() -> None:
    ledger = CreditLedger(refuse_limits="several workers")
    held = ledger.reserve([key(account=None)], 3.0, prompt_cost=0, completion_price=0)
    assert held.accounts == (None,) and ledger.figures(None).reserved == 3.0
    ledger.settle(held, 2.0)
    assert (ledger.figures(None).total, ledger.figures(None).reserved) == (2.0, 0.0)


def test_a_chain_stops_at_its_tightest_budget() -> None:
    ledger = CreditLedger()
    chain = [key(10.0), Budget("environment", "env:prod", None, None, "prod"), workspace(2.5)]
    admitted = 0
    for _ in range(40):
        try:
            ledger.reserve(chain, 0.25, prompt_cost=0.0, completion_price=0.0001)
            admitted += 1
        except GatewayError as exc:
            refused = exc
    assert admitted == 10
    assert refused.status == 402 and refused.metadata["level"] == "workspace"
    assert refused.metadata["budget"] == "acme" and refused.metadata["limit"] == 2.5
    assert "but the workspace 'acme' budget has $0.00 of its $2.50 limit left." in refused.message
    # Every account of the chain holds every admitted reservation, the unlimited environment too.
    for account in ("k", "env:prod", "ws:acme"):
        assert ledger.figures(account).reserved == 2.5


def test_the_402_says_how_many_max_tokens_fit_the_budget() -> None:
    ledger = CreditLedger()
    chain = [key(10.0), Budget("member", "mem:ann", 0.5, "daily", "ann@example.com")]
    with pytest.raises(GatewayError) as refused:
        ledger.reserve(chain, 0.6, prompt_cost=0.1, completion_price=0.001)
    assert refused.value.message == (
        "Insufficient credit: this request may cost up to $0.60 but the member 'ann@example.com' budget has "
        "$0.50 of its $0.50 limit left. At most 400 max_tokens would fit.")
    assert refused.value.metadata == {"limit": 0.5, "limit_remaining": 0.5, "reservation": 0.6, "level": "member",
                                      "budget": "ann@example.com"}


def test_keys_sharing_a_workspace_budget_never_exceed_it() -> None:
    ledger = CreditLedger()
    shared = workspace(10.0)
    chains = [[key(100.0, account="a"), shared], [key(100.0, account="b"), shared]]
    admitted = {"a": 0, "b": 0}
    for index in range(100):
        chain = chains[index % 2]
        try:
            ledger.reserve(chain, 1.0, prompt_cost=0, completion_price=0)
            admitted[str(chain[0].account)] += 1
        except GatewayError as exc:
            assert exc.metadata["level"] == "workspace"
    assert admitted == {"a": 5, "b": 5}
    assert ledger.figures("ws:acme").reserved == 10.0


def test_a_refusal_leaves_no_trace_on_any_account() -> None:
    ledger = CreditLedger()
    ledger.spend["ws:acme"] = Spend(total=0.5, daily=0.5, weekly=0.5, monthly=0.5)
    before = {account: ledger.figures(account) for account in ("k", "env:dev", "ws:acme")}
    # The key and the environment fit, the workspace (last in the chain) does not: nothing is reserved anywhere.
    chain = [key(10.0), Budget("environment", "env:dev", 5.0, None, "dev"), workspace(1.0)]
    with pytest.raises(GatewayError) as refused:
        ledger.reserve(chain, 0.6, prompt_cost=0, completion_price=0)
    assert refused.value.metadata["level"] == "workspace"
    assert {account: ledger.figures(account) for account in before} == before
    # The key refuses first (chain order) though the workspace would refuse too.
    with pytest.raises(GatewayError) as refused:
        ledger.reserve([key(0.1), workspace(1.0)], 0.6, prompt_cost=0, completion_price=0)
    assert refused.value.metadata["level"] == "key" and "budget" not in refused.value.metadata
    assert {account: ledger.figures(account) for account in before} == before


def test_settle_moves_reserved_to_spend_on_every_account() -> None:
    ledger = CreditLedger()
    chain = [key(10.0, "daily"), Budget("member", "mem:ann", 5.0, "monthly", "ann"), workspace(None)]
    held = ledger.reserve(chain, 2.0, prompt_cost=0, completion_price=0)
    assert held.accounts == ("k", "mem:ann", "ws:acme")
    ledger.settle(held, 0.75)
    ledger.settle(held, 0.75)
    for account in held.accounts:
        assert ledger.figures(account) == Spend(total=0.75, daily=0.75, weekly=0.75, monthly=0.75, reserved=0.0)


def test_refuse_limits_refuses_a_chain_with_any_limit() -> None:
    ledger = CreditLedger(refuse_limits="several workers, no shared ledger")
    assert ledger.reserve([key(None), workspace(None)], 1.0, prompt_cost=0, completion_price=0).amount == 1.0
    with pytest.raises(GatewayError) as refused:
        ledger.reserve([key(None), workspace(5.0)], 1.0, prompt_cost=0, completion_price=0)
    assert refused.value.status == 503 and refused.value.metadata["code"] == "credit_limit_unenforceable"
    assert "'acme'" in refused.value.message
    with pytest.raises(GatewayError) as refused:
        ledger.reserve([key(5.0)], 1.0, prompt_cost=0, completion_price=0)
    assert refused.value.message == "This key's credit limit cannot be enforced: several workers, no shared ledger"
    assert ledger.figures("k").reserved == 1.0  # only the admitted one


def test_sum_figures_adds_up_keys_and_the_master_key_only() -> None:
    ledger = CreditLedger()
    levels = [workspace(None), Budget("environment", "env:e", None, None), Budget("member", "mem:m", 9.0, None)]
    for account in ("a" * 64, "b" * 64, None):
        chain = [Budget("key", account, None, None), *levels]
        ledger.settle(ledger.reserve(chain, 1.0, prompt_cost=0, completion_price=0), 0.25)
    ledger.reserve([Budget("key", "a" * 64, None, None), workspace(None)], 2.0, prompt_cost=0, completion_price=0)
    total = ledger.sum_figures()
    assert (total.total, total.daily, total.monthly, total.reserved) == (0.75, 0.75, 0.75, 2.0)
    assert ledger.figures("ws:acme").total == 0.75  # the same spend, counted once in the sum


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


@pytest.mark.parametrize(("value", "text"), [
    (0, "$0.00"), (1, "$1.00"), (2.5, "$2.50"), (1234.5, "$1,234.50"), (0.6, "$0.60"), (0.05, "$0.05"),
    (0.00001, "$0.00001"), (0.000019, "$0.000019"), (0.0000004, "<$0.000001")])
def test_usd_text_in_messages(value: float, text: str) -> None:
    assert usd_text(value) == text
