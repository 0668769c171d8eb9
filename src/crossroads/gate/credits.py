"""Credit limits that hold under concurrency.

Before a request goes upstream, its worst-case cost is reserved against the key's remaining limit; when it completes
the reservation is replaced by the real cost. All of it happens in this process's memory, synchronously (no await
between check and reserve), so concurrent requests cannot overspend. Spend is loaded from the store at start-up.

The ledger is exact within one process. With CROSSROADS_REDIS_URL set, keys with a limit are held in Redis instead
(gate/shared_credits.py), exact across every process of every instance; this ledger then only keeps this process's
share of the figures. Without Redis several processes would each keep their own, so `crossroads serve` refuses to
start several workers while a key has a limit, the API and the CLI refuse to set one while several workers run, and
a worker of several refuses requests of a key that has a limit anyway (`refuse_limits`): never an overspend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from crossroads.errors import GatewayError

if TYPE_CHECKING:
    from crossroads.store.rows import KeyRow

PERIODS = ("daily", "weekly", "monthly")
_DAY = timedelta(days=1)


def period_starts(now: datetime) -> dict[str, datetime]:
    """Midnight UTC today, Monday 00:00 UTC this week, the 1st 00:00 UTC this month."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return {"daily": day, "weekly": day - timedelta(days=day.weekday()), "monthly": day.replace(day=1)}


@dataclass(slots=True)
class Spend:
    total: float = 0.0
    daily: float = 0.0
    weekly: float = 0.0
    monthly: float = 0.0
    reserved: float = 0.0

    def in_period(self, reset: str | None) -> float:
        return getattr(self, reset) if reset in PERIODS else self.total


@dataclass(slots=True)
class Reservation:
    key_hash: str | None
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

    def load(self, spend_by_key: dict[str | None, dict[str, float]], starts: dict[str, datetime]) -> None:
        self.starts = starts
        for key_hash, figures in spend_by_key.items():
            entry = self.spend.setdefault(key_hash, Spend())
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

    def used(self, key_hash: str | None, reset: str | None) -> float:
        self._roll_if_due()
        entry = self.spend.get(key_hash)
        return entry.in_period(reset) if entry else 0.0

    def figures(self, key_hash: str | None) -> Spend:
        """A copy of the key's figures, periods rolled over if a boundary passed."""
        self._roll_if_due()
        entry = self.spend.get(key_hash)
        if entry is None:
            return Spend()
        return Spend(entry.total, entry.daily, entry.weekly, entry.monthly, entry.reserved)

    def sum_figures(self) -> Spend:
        """Every key's figures added up (the whole account's spend)."""
        self._roll_if_due()
        total = Spend()
        for entry in self.spend.values():
            total.total += entry.total
            total.daily += entry.daily
            total.weekly += entry.weekly
            total.monthly += entry.monthly
            total.reserved += entry.reserved
        return total

    def remaining(self, key: KeyRow) -> float | None:
        if key.limit is None:
            return None
        entry = self.spend.get(key.hash)
        used = self.used(key.hash, key.limit_reset)
        return key.limit - used - (entry.reserved if entry else 0.0)

    def reserve(self, key: KeyRow | None, amount: float, *, prompt_cost: float,
                completion_price: float) -> Reservation:
        """Reserve `amount` USD for a request, or raise 402 saying how many max_tokens would fit."""
        if key is None:
            return Reservation(None, 0.0)
        entry = self.spend.setdefault(key.hash, Spend())
        if key.limit is not None:
            if self.refuse_limits is not None:
                raise GatewayError(503, f"This key's credit limit cannot be enforced: {self.refuse_limits}",
                                   metadata={"code": "credit_limit_unenforceable"})
            left = key.limit - self.used(key.hash, key.limit_reset) - entry.reserved
            if amount > left:
                raise insufficient_credit(key.limit, left, amount, prompt_cost, completion_price)
        entry.reserved += amount
        return Reservation(key.hash, amount)

    def settle(self, reservation: Reservation, cost: float) -> None:
        """Replace the reservation with the real cost (exactly once)."""
        if reservation.settled:
            return
        reservation.settled = True
        entry = self.spend.get(reservation.key_hash)
        if entry is None:
            entry = self.spend[reservation.key_hash] = Spend()
        entry.reserved = max(entry.reserved - reservation.amount, 0.0)
        self._roll_if_due()
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


def insufficient_credit(limit: float, left: float, amount: float, prompt_cost: float,
                        completion_price: float) -> GatewayError:
    """The 402 of a reservation that does not fit, saying how many max_tokens would."""
    if completion_price > 0 and left > prompt_cost:
        fits = int((left - prompt_cost) / completion_price)
        hint = f" At most {fits} max_tokens would fit." if fits > 0 else ""
    else:
        hint = ""
    return GatewayError(
        402, f"Insufficient credit: this request may cost up to ${amount:.6f} but the key has "
             f"${max(left, 0.0):.6f} of its ${limit:g} limit left.{hint}",
        metadata={"limit": limit, "limit_remaining": max(left, 0.0), "reservation": amount})
