"""Credit limits that hold under concurrency.

A request's cost must fit every budget of its chain (`Budget`): its key's limit, its environment's, its member's and
its workspace's budget. Each budget is an account of the ledger (a key's hash; "env:<id>", "mem:<id>", "ws:<id>";
None for the master key). Before a request goes upstream, its worst-case cost is reserved on every account of the
chain at once, all or nothing: the reservation is refused (402, naming the budget) unless it fits every limit. When
the request completes the reservation is replaced by the real cost on every account. All of it happens in this
process's memory, synchronously (no await between check and reserve), so concurrent requests cannot overspend. Spend
is loaded from the store at start-up.

The ledger is exact within one process. With CROSSROADS_REDIS_URL set, or on PostgreSQL, budgets with a limit are
held in a shared ledger instead (gate/shared_credits.py, gate/pg_credits.py), exact across every process of every
instance; this ledger then only keeps this process's share of the figures. Without one several processes would each
keep their own, so `crossroads serve` refuses to start several workers while a key has a limit, the API and the CLI
refuse to set one while several workers run, and a worker of several refuses requests whose chain has a limit anyway
(`refuse_limits`): never an overspend.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from crossroads.errors import GatewayError

PERIODS = ("daily", "weekly", "monthly")
_DAY = timedelta(days=1)


def period_starts(now: datetime) -> dict[str, datetime]:
    """Midnight UTC today, Monday 00:00 UTC this week, the 1st 00:00 UTC this month."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"daily": day, "weekly": day - timedelta(days=day.weekday()), "monthly": day.replace(day=1)}


def next_reset(reset: str | None, now: datetime) -> datetime | None:
    """When a budget with this reset starts its next period (None: lifetime, it never does)."""
    if reset not in PERIODS:
        return None
    start = period_starts(now)[reset]
    if reset == "daily":
        return start + _DAY
    if reset == "weekly":
        return start + 7 * _DAY
    return (start + 32 * _DAY).replace(day=1)


@dataclass(slots=True)
class Spend:
    total: float = 0.0
    daily: float = 0.0
    weekly: float = 0.0
    monthly: float = 0.0
    reserved: float = 0.0

    def in_period(self, reset: str | None) -> float:
        return getattr(self, reset) if reset in PERIODS else self.total


@dataclass(frozen=True, slots=True)
class Budget:
    """One level a request's cost must fit."""
    level: str               # "key" | "environment" | "member" | "workspace"  (named in the 402)
    account: str | None      # ledger account id: a key's hash; "ws:<id>"; "env:<id>"; "mem:<id>"; None = the master key
    limit: float | None      # None: tracked (spend figures) but not limited
    limit_reset: str | None  # None (lifetime) | "daily" | "weekly" | "monthly"
    name: str = ""           # what the 402 calls it, e.g. the workspace's name


def is_key_account(account: str | None) -> bool:
    """Whether `account` is a key's (or the master key's): the other levels' ids carry a "kind:" prefix, and a key's
    hash (64 hex digits) never has a colon."""
    return account is None or ":" not in account


@dataclass(slots=True)
class Reservation:
    accounts: tuple[str | None, ...]  # every account of the chain, in the chain's order
    amount: float
    settled: bool = False


class CreditLedger:
    def __init__(self, *, refuse_limits: str | None = None) -> None:
        self.spend: dict[str | None, Spend] = {}
        self.starts = period_starts(datetime.now(UTC))
        # Set when this process cannot hold a limit (it is one of several workers, each with its own ledger): a key
        # with a limit is then refused rather than served beyond its limit, however the limit got there (the API and
        # the CLI refuse to set one, but a key may have been edited by hand or by an older version).
        self.refuse_limits = refuse_limits

    def load(self, spend_by_account: dict[str | None, dict[str, float]], starts: dict[str, datetime]) -> None:
        self.starts = starts
        for account, figures in spend_by_account.items():
            entry = self.spend.setdefault(account, Spend())
            entry.total = figures.get("total", 0.0)
            for period in PERIODS:
                setattr(entry, period, figures.get(period, 0.0))

    def _roll_if_due(self) -> None:
        # Every period starts at a UTC midnight, so nothing can roll before the next one: one float comparison per
        # request instead of computing three period starts.
        if time.time() >= self._next_roll:
            self._roll(datetime.now(UTC))

    @property
    def starts(self) -> dict[str, datetime]:
        return self._starts

    @starts.setter
    def starts(self, starts: dict[str, datetime]) -> None:
        self._starts = starts
        self._next_roll = (starts["daily"] + _DAY).timestamp()

    def _roll(self, now: datetime) -> None:
        starts = period_starts(now)
        for period in PERIODS:
            if starts[period] != self.starts[period]:
                for entry in self.spend.values():
                    setattr(entry, period, 0.0)
        self.starts = starts

    def used(self, account: str | None, reset: str | None) -> float:
        self._roll_if_due()
        entry = self.spend.get(account)
        return entry.in_period(reset) if entry else 0.0

    def figures(self, account: str | None) -> Spend:
        """A copy of the account's figures, periods rolled over if a boundary passed."""
        self._roll_if_due()
        entry = self.spend.get(account)
        if entry is None:
            return Spend()
        return Spend(entry.total, entry.daily, entry.weekly, entry.monthly, entry.reserved)

    def sum_figures(self) -> Spend:
        """Every key's figures (and the master key's) added up: the whole gateway's spend. The other levels'
        accounts are left out: they hold the same requests' costs again."""
        self._roll_if_due()
        total = Spend()
        for account, entry in self.spend.items():
            if not is_key_account(account):
                continue
            total.total += entry.total
            total.daily += entry.daily
            total.weekly += entry.weekly
            total.monthly += entry.monthly
            total.reserved += entry.reserved
        return total

    def reserve(self, chain: Sequence[Budget], amount: float, *, prompt_cost: float,
                completion_price: float) -> Reservation:
        """Reserve `amount` USD for a request on every account of `chain` (distinct accounts), or change nothing and
        raise 402 naming the first budget it does not fit, saying how many max_tokens would."""
        if not chain:
            return Reservation((), 0.0)
        spend = self.spend
        # Every limit is checked before anything is reserved: a refusal leaves no trace.
        for budget in chain:
            limit = budget.limit
            if limit is None:
                continue
            if self.refuse_limits is not None:
                raise unenforceable(budget, self.refuse_limits)
            self._roll_if_due()
            entry = spend.get(budget.account)
            left = limit if entry is None else limit - entry.in_period(budget.limit_reset) - entry.reserved
            if amount > left:
                raise insufficient_credit(budget, left, amount, prompt_cost, completion_price)
        # Unlimited accounts hold the reservation too: their figures (and "reserved") are what the API reports.
        for budget in chain:
            entry = spend.get(budget.account)
            if entry is None:
                entry = spend[budget.account] = Spend()
            entry.reserved += amount
        return Reservation(tuple([budget.account for budget in chain]), amount)

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Replace the reservation with the real cost on every account of its chain (exactly once)."""
        if reservation.settled:
            return
        reservation.settled = True
        self._roll_if_due()
        amount = reservation.amount
        for account in reservation.accounts:
            entry = self.spend.get(account)
            if entry is None:
                entry = self.spend[account] = Spend()
            entry.reserved = max(entry.reserved - amount, 0.0)
            entry.total += cost
            entry.daily += cost
            entry.weekly += cost
            entry.monthly += cost


def shared_credit_store(redis_url: str | None, database_url: str) -> str | None:
    """Where credit limits are held for every process: "redis" when CROSSROADS_REDIS_URL is set, else "postgresql"
    when the database is PostgreSQL, else None (each process's memory: one process only)."""
    if redis_url:
        return "redis"
    if database_url.split(":", 1)[0].split("+", 1)[0] in ("postgresql", "postgres"):
        return "postgresql"
    return None


def unenforceable(budget: Budget, reason: str) -> GatewayError:
    """The 503 of a budget with a limit this process cannot hold (see `CreditLedger.refuse_limits`)."""
    what = "This key's credit limit" if budget.level == "key" else f"The {budget.level} {budget.name!r} budget"
    return GatewayError(503, f"{what} cannot be enforced: {reason}", metadata={"code": "credit_limit_unenforceable"})


def usd_text(value: float) -> str:
    """USD for a message: cents for a dollar or more, up to six decimals below (a request often costs a fraction of
    a cent), and never "$0.000000" for an amount that is not zero."""
    if value == 0:
        return "$0.00"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    if abs(value) < 0.000001:
        return "<$0.000001"
    text = f"{value:.6f}".rstrip("0")
    return "$" + (text + "0" if len(text.split(".")[1]) < 2 else text)


def insufficient_credit(budget: Budget, left: float, amount: float, prompt_cost: float,
                        completion_price: float) -> GatewayError:
    """The 402 of a reservation that does not fit `budget` (which has `left` USD), saying how many max_tokens
    would."""
    limit = budget.limit if budget.limit is not None else 0.0
    if completion_price > 0 and left > prompt_cost:
        fits = int((left - prompt_cost) / completion_price)
        hint = f" At most {fits} max_tokens would fit." if fits > 0 else ""
    else:
        hint = ""
    remaining = max(left, 0.0)
    holder = "the key" if budget.level == "key" else f"the {budget.level} {budget.name!r} budget"
    metadata: dict[str, object] = {"limit": limit, "limit_remaining": remaining, "reservation": amount,
                                   "level": budget.level}
    if budget.level != "key":
        metadata["budget"] = budget.name
    return GatewayError(
        402, f"Insufficient credit: this request may cost up to {usd_text(amount)} but {holder} has "
             f"{usd_text(remaining)} of its {usd_text(limit)} limit left.{hint}",
        metadata=metadata)
