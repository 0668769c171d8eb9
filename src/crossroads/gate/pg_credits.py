"""Credit limits held across every process of every instance on PostgreSQL, without Redis (issue 13).

`PostgresCreditLedger` is a drop-in for `RedisCreditLedger` (shared_credits.py) as `FleetCredits` uses it, kept in
two tables of the gateway's own database (store/schema.py, migration 0004):

- `credit_accounts`, one row per limited key: its total spend, the spend of the current day, week and month with
  the name of the period each belongs to ("YYYY-MM-DD", Monday's "YYYY-MM-DD", "YYYY-MM", UTC), and `reserved`, what
  its open reservations hold.
- `credit_reservations`, one row per open reservation: its amount and the end of its lease (the database's clock).

Every operation is one statement (autocommit: one round trip, its own transaction), but for a key's very first
reservation and a refusal (one more each):
- reserve: a conditional UPDATE of the key's row, `reserved += amount` only where `limit - spend - reserved >=
  amount`, and the INSERT of the reservation fed by what it returned. Concurrent reservations of a key serialise on
  its row lock and PostgreSQL re-checks the condition on the row as the previous one left it (READ COMMITTED), so no
  process can reserve what another just took. A refusal is checked once more after releasing the key's reservations
  whose lease ended (as the Redis script does), which also says how much is left for the 402.
- settle: the DELETE of the reservation (nothing when a sweep released it already) feeding the UPDATE of the row:
  `reserved -= amount` (once, whoever deletes it), spend += cost in every period.
- sweep: releases every reservation whose lease ended (its process died: SIGKILL, host loss); FleetCredits calls it
  on its maintenance tick, so a key's credit recovers within a lease and a tick, and at once when the key reserves.

Periods: a period's figure counts only while its stored name is the current one or a later one, and settling into a
newer period replaces the name and the figure: a reset happens once, for everyone, in SQL. The current names come
from the database's clock (`statement_timestamp()`), so hosts whose clocks disagree still agree on when a day ends;
`clock` (tests) names them from a Python clock instead. A name is never moved backwards: a process whose clock lags
adds its cost to the newer period rather than undoing it.

Locks are always taken in the same order, so no two statements of the ledger can deadlock: an existing reservation
row before an account row (a reservation row is only inserted after its account row is locked), and several account rows in key order (sweep, reconcile); a sweep skips the reservations another
statement holds (they are being settled, renewed or swept).

Amounts are floats, as in the other ledgers; `reserved` is clamped at zero and a residue under 1e-9 USD left by
float rounding when reservations are released is dropped, so a key with nothing open holds exactly nothing.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crossroads.gate.credits import PERIODS, Spend, insufficient_credit
from crossroads.gate.shared_credits import SharedReservation, period_names
from crossroads.store.engine import translate_errors

if TYPE_CHECKING:
    from crossroads.store import Store
    from crossroads.store.rows import KeyRow

# The current periods by the database's clock, named as period_names() names them.
_NOW_UTC = "(statement_timestamp() AT TIME ZONE 'UTC')"
_DB_PERIODS = {"day": f"to_char({_NOW_UTC}, 'YYYY-MM-DD')",
               "week": f"to_char(date_trunc('week', {_NOW_UTC}), 'YYYY-MM-DD')",  # ISO weeks start on Monday
               "month": f"to_char({_NOW_UTC}, 'YYYY-MM')"}
_BOUND_PERIODS = {"day": "CAST(:day AS text)", "week": "CAST(:week AS text)", "month": "CAST(:month AS text)"}
_COLUMNS = {"daily": ("day", "spent_day"), "weekly": ("week", "spent_week"), "monthly": ("month", "spent_month")}
_LEASE_END = "statement_timestamp() + make_interval(secs => CAST(:lease AS float8))"


def _release(reserved: str, amount: str) -> str:
    """`reserved - amount`, never below zero and without a float residue under a nano-dollar."""
    return f"CASE WHEN {reserved} - {amount} < 1e-9 THEN 0 ELSE {reserved} - {amount} END"


class _Statements:
    """The ledger's SQL, its current-period names either the database clock's or bound parameters."""

    def __init__(self, names: dict[str, str]) -> None:
        def current(period: str, table: str = "a") -> str:
            column = _COLUMNS[period][0]
            return f'{table}.{column} COLLATE "C" >= {names[column]}'  # "YYYY-MM[-DD]" compare as plain bytes

        def spent(period: str, table: str = "a") -> str:
            return f"CASE WHEN {current(period, table)} THEN {table}.{_COLUMNS[period][1]} ELSE 0 END"

        spend = {"total": "a.spent_total", **{period: spent(period) for period in PERIODS}}
        left = {reset: f"CAST(:limit AS float8) - {expr} - a.reserved" for reset, expr in spend.items()}
        self.reserve = {reset: sa.text(f"""
            WITH held AS (
                UPDATE credit_accounts AS a SET reserved = a.reserved + CAST(:amount AS float8)
                WHERE a.key_hash = :key_hash AND {left[reset]} >= CAST(:amount AS float8)
                RETURNING a.key_hash)
            INSERT INTO credit_reservations (id, key_hash, amount, lease_until)
            SELECT CAST(:id AS text), held.key_hash, CAST(:amount AS float8), {_LEASE_END} FROM held
            RETURNING id""") for reset in spend}
        # After a refusal: release the key's reservations whose lease ended; how many, and what is left now (no row
        # when the key has no account yet). Writes nothing when none ended: a key out of credit that keeps being
        # asked costs a read per refusal, not a commit.
        self.recheck = {reset: sa.text(f"""
            WITH gone AS (
                DELETE FROM credit_reservations WHERE id IN (
                    SELECT id FROM credit_reservations
                    WHERE key_hash = :key_hash AND lease_until < statement_timestamp()
                    FOR UPDATE SKIP LOCKED)
                RETURNING amount),
            released AS (SELECT count(*) AS n, coalesce(sum(amount), 0) AS amount FROM gone),
            updated AS (
                UPDATE credit_accounts AS a SET reserved = {_release("a.reserved", "released.amount")}
                FROM released WHERE a.key_hash = :key_hash AND released.n > 0
                RETURNING a.reserved)
            SELECT released.n, {left[reset].replace("a.reserved", "coalesce((SELECT reserved FROM updated), a.reserved)")}
            FROM credit_accounts AS a, released WHERE a.key_hash = :key_hash""") for reset in spend}
        self.create = sa.text("INSERT INTO credit_accounts (key_hash) VALUES (:key_hash) ON CONFLICT DO NOTHING")
        rolled = ",\n".join(
            f"{column} = CASE WHEN {current(period)} THEN a.{column} ELSE {names[column]} END, "
            f"{figure} = CASE WHEN {current(period)} THEN a.{figure} + CAST(:cost AS float8) "
            f"ELSE CAST(:cost AS float8) END" for period, (column, figure) in _COLUMNS.items())
        self.settle = sa.text(f"""
            WITH gone AS (DELETE FROM credit_reservations WHERE id = :id RETURNING amount),
            released AS (SELECT coalesce(sum(amount), 0) AS amount FROM gone)
            UPDATE credit_accounts AS a SET reserved = {_release("a.reserved", "released.amount")},
                spent_total = a.spent_total + CAST(:cost AS float8),
                {rolled}
            FROM released WHERE a.key_hash = :key_hash""")
        self.renew = sa.text(f"""
            UPDATE credit_reservations SET lease_until = {_LEASE_END} WHERE id = ANY(CAST(:ids AS text[]))""")
        # Account rows are locked in key order (`locked`, before any is updated): two sweeps, or a sweep and a
        # reconciliation, never wait for each other in a cycle.
        self.sweep = sa.text(f"""
            WITH gone AS (
                DELETE FROM credit_reservations WHERE id IN (
                    SELECT id FROM credit_reservations WHERE lease_until < statement_timestamp()
                    FOR UPDATE SKIP LOCKED)
                RETURNING key_hash, amount),
            totals AS (SELECT key_hash, count(*) AS n, sum(amount) AS amount FROM gone GROUP BY key_hash),
            locked AS (
                SELECT key_hash FROM credit_accounts WHERE key_hash IN (SELECT key_hash FROM totals)
                ORDER BY key_hash FOR UPDATE)
            UPDATE credit_accounts AS a SET reserved = {_release("a.reserved", "totals.amount")}
            FROM totals JOIN locked ON locked.key_hash = totals.key_hash
            WHERE a.key_hash = totals.key_hash
            RETURNING totals.n""")
        # The periodic reconciliation's turn: a `meta` row holding until when (ms since the epoch, the database's
        # clock) the last claim runs; a claim succeeds only once that time has passed.
        self.claim = sa.text("""
            INSERT INTO meta AS m (name, value)
            VALUES ('credit_reconcile_until',
                    CAST(extract(epoch FROM statement_timestamp()) * 1000 + CAST(:interval_ms AS bigint) AS bigint))
            ON CONFLICT (name) DO UPDATE SET value = excluded.value
            WHERE m.value <= CAST(extract(epoch FROM statement_timestamp()) * 1000 AS bigint)
            RETURNING 1""")
        self.spend = sa.text(f"""
            SELECT a.key_hash, a.spent_total, {spent("daily")}, {spent("weekly")}, {spent("monthly")}, a.reserved
            FROM credit_accounts AS a WHERE a.key_hash = ANY(CAST(:key_hashes AS text[]))""")

        # Each figure raised to the records' when lower, never lowered; a stored period older than the current one
        # takes the records' figure and the current name, a newer one (another clock ran ahead) is kept. Rows are
        # written in key order (see sweep).
        def raised(period: str) -> str:
            column, figure = _COLUMNS[period]
            return (f"{column} = CASE WHEN {current(period)} THEN a.{column} ELSE {names[column]} END, "
                    f"{figure} = CASE WHEN NOT {current(period)} THEN excluded.{figure} "
                    f"WHEN a.{column} = {names[column]} THEN greatest(a.{figure}, excluded.{figure}) "
                    f"ELSE a.{figure} END")
        self.reconcile = sa.text(f"""
            INSERT INTO credit_accounts AS a
                (key_hash, spent_total, day, spent_day, week, spent_week, month, spent_month)
            SELECT v.key_hash, v.total, {names["day"]}, v.daily, {names["week"]}, v.weekly, {names["month"]},
                   v.monthly
            FROM unnest(CAST(:key_hashes AS text[]), CAST(:totals AS float8[]), CAST(:dailies AS float8[]),
                        CAST(:weeklies AS float8[]), CAST(:monthlies AS float8[]))
                 AS v(key_hash, total, daily, weekly, monthly)
            ORDER BY v.key_hash
            ON CONFLICT (key_hash) DO UPDATE SET
                spent_total = greatest(a.spent_total, excluded.spent_total),
                {", ".join(raised(period) for period in PERIODS)}""")


class PostgresCreditLedger:
    """Exact across every process sharing one PostgreSQL database. Database errors propagate (StoreUnavailable
    when it cannot be reached): the caller refuses the request (fail closed) rather than serve a limited key it
    cannot count. Uses the gateway's store (its engine and pool) and never closes it."""

    name = "PostgreSQL"  # what logs and errors call the ledger's store

    def __init__(self, store: Store, *, lease: float, clock: Any = None) -> None:
        if store._dialect != "postgresql":
            raise ValueError(f"the PostgreSQL credit ledger needs a PostgreSQL database, not {store._dialect}")
        self.lease = lease
        self.prefix = "pg"  # interface of RedisCreditLedger; nothing is named after it here
        self.marker = f"{self.prefix}:reconciled"  # likewise: PostgreSQL keeps its figures, nothing to mark
        self._clock = clock
        # Every statement stands alone: autocommit spares the BEGIN and COMMIT round trips.
        self._engine = store._writer.execution_options(isolation_level="AUTOCOMMIT")
        self._sql = _Statements(_DB_PERIODS if clock is None else _BOUND_PERIODS)
        # The reservations this process holds and has not settled: key hash -> reservation ids (for `renew`).
        self.open: dict[str, set[str]] = {}

    def _periods(self) -> dict[str, str]:
        """The bound current-period names when a clock was given (else the SQL reads the database's clock)."""
        if self._clock is None:
            return {}
        names = period_names(self._clock())
        return {"day": names["daily"], "week": names["weekly"], "month": names["monthly"]}

    async def _execute(self, statement: Any, params: dict[str, Any]) -> Any:
        with translate_errors():
            async with self._engine.connect() as conn:
                return await conn.execute(statement, params)

    async def reserve(self, key: KeyRow | None, amount: float, *, prompt_cost: float,
                      completion_price: float) -> SharedReservation:
        """Reserve `amount` USD for a request of `key` (nothing to hold without a limit), or raise 402 saying how
        many max_tokens would fit."""
        if key is None or key.limit is None:
            return SharedReservation(None if key is None else key.hash, 0.0)
        reset = key.limit_reset if key.limit_reset in PERIODS else "total"
        params = {"key_hash": key.hash, "limit": float(key.limit), "amount": float(amount), "lease": self.lease,
                  **self._periods()}
        left = 0.0
        with translate_errors():
            async with self._engine.connect() as conn:
                for _ in range(4):
                    reservation_id = secrets.token_hex(8)
                    held = await conn.execute(self._sql.reserve[reset], {**params, "id": reservation_id})
                    if held.first() is not None:
                        self.open.setdefault(key.hash, set()).add(reservation_id)
                        return SharedReservation(key.hash, amount, reservation_id)
                    row = (await conn.execute(self._sql.recheck[reset], params)).first()
                    if row is None:  # the key's first reservation anywhere
                        await conn.execute(self._sql.create, params)
                        continue
                    left = float(row[1])
                    if amount > left:
                        break
                    # Room was made meanwhile (expired reservations released, a settlement): try again.
        raise insufficient_credit(key.limit, left, amount, prompt_cost, completion_price)

    async def settle(self, reservation: SharedReservation, cost: float) -> None:
        """Replace the reservation with the real cost (exactly once; a reservation whose lease ran out and was
        released only adds its cost)."""
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.key_hash is None or not reservation.id and cost <= 0:
            return
        held = self.open.get(reservation.key_hash)
        if held is not None:
            held.discard(reservation.id)
            if not held:
                del self.open[reservation.key_hash]
        params = {"id": reservation.id, "key_hash": reservation.key_hash, "cost": float(cost), **self._periods()}
        with translate_errors():
            async with self._engine.connect() as conn:
                result = await conn.execute(self._sql.settle, params)
                if result.rowcount == 0:  # a cost without a reservation, of a key never reserved for
                    await conn.execute(self._sql.create, params)
                    await conn.execute(self._sql.settle, params)

    async def renew(self) -> int:
        """Extend the lease of every reservation this process holds, in one statement; returns how many were
        still open (one released by a sweep after its lease ended stays released)."""
        if not self.open:
            return 0
        ids = [reservation_id for ids in self.open.values() for reservation_id in ids]
        result = await self._execute(self._sql.renew, {"ids": ids, "lease": self.lease})
        return result.rowcount

    async def sweep(self) -> int:
        """Release every reservation whose lease ended (whichever process held it), in one statement; returns how
        many."""
        rows = (await self._execute(self._sql.sweep, {})).all()
        return sum(int(row[0]) for row in rows)

    async def spend(self, key_hash: str) -> Spend:
        """The key's figures (spend per period and what open reservations hold), in one statement."""
        return (await self.spend_of([key_hash]))[key_hash]

    async def spend_of(self, key_hashes: list[str]) -> dict[str, Spend]:
        """`spend` of several keys, in one statement."""
        figures = {key_hash: Spend() for key_hash in key_hashes}
        if not key_hashes:
            return figures
        result = await self._execute(self._sql.spend, {"key_hashes": list(key_hashes), **self._periods()})
        for key_hash, total, daily, weekly, monthly, reserved in result.all():
            figures[key_hash] = Spend(total=float(total), daily=float(daily), weekly=float(weekly),
                                      monthly=float(monthly), reserved=float(reserved))
        return figures

    async def reconcile(self, spend_by_key: dict[str | None, dict[str, float]], *, complete: bool = True) -> None:
        """Raise each figure to the database records' when it is lower, never lowering one (a settled cost whose
        record is still waiting to be written stays counted), in one statement. `complete` is accepted for
        RedisCreditLedger's interface: these figures cannot be lost apart from the records."""
        rows = sorted((key_hash, figures) for key_hash, figures in spend_by_key.items() if key_hash is not None)
        if not rows:
            return
        params: dict[str, Any] = {"key_hashes": [key_hash for key_hash, _ in rows], **self._periods()}
        for name, column in (("total", "totals"), ("daily", "dailies"), ("weekly", "weeklies"),
                             ("monthly", "monthlies")):
            params[column] = [float(figures.get(name, 0.0)) for _, figures in rows]
        await self._execute(self._sql.reconcile, params)

    async def claim_reconcile(self, interval: float) -> bool:
        """Whether this process is the one of the fleet to run this interval's periodic reconciliation (the first
        to ask once the previous claim's `interval` ran out)."""
        result = await self._execute(self._sql.claim, {"interval_ms": max(1, round(interval * 1000))})
        return result.first() is not None

    async def ping(self) -> None:
        await self._execute(sa.text("SELECT 1"), {})

    async def close(self) -> None:
        """Nothing to release: the store (and its engine) is the gateway's."""
