"""Credit limits held across every process of every instance on PostgreSQL, without Redis (issue 13).

`PostgresCreditLedger` is a drop-in for `RedisCreditLedger` (shared_credits.py) as `FleetCredits` uses it, kept in
two tables of the gateway's own database (store/schema.py, migration 0004). A request reserves on a chain of budgets
(its key's limit, its environment's, member's and workspace's budgets), each an account; only budgets with a limit
reach the database.

- `credit_accounts`, one row per limited account (column `key_hash`: a key's hash, or "ws:<id>", "env:<id>",
  "mem:<id>"): its total spend, the spend of the current day, week and month with the name of the period each
  belongs to ("YYYY-MM-DD", Monday's "YYYY-MM-DD", "YYYY-MM", UTC), and `reserved`, what its open reservations hold.
- `credit_reservations`, one row per open reservation and account: id "<reservation id>.<i>" for the i-th account
  (0-based) of the reservation's chain, its amount and the end of its lease (the database's clock).

Every operation is one statement (autocommit: one round trip, its own transaction), but for an account's very first
reservation and a refusal (one more each):
- reserve: one statement over the whole chain. It reads the accounts' rows (no lock) and, only when every limit
  fits there, locks them in account order (SELECT ... ORDER BY ... FOR UPDATE), judges every limit again on the rows
  as the last writer left them (READ COMMITTED hands a locking read the newest version), and only when all still
  fit adds the amount to every row and inserts the reservation's rows; else it writes nothing. Concurrent
  reservations sharing an account serialise on its row lock, so no process can reserve what another just took, and
  all or none of the chain is reserved. A refusal is checked once more after releasing the chain's reservations
  whose lease ended (as the Redis script does), which also says which budget refuses and how much it has left.
- settle: the DELETE of the reservation's rows (nothing for those a sweep released already) feeding an upsert of
  every account: `reserved -= amount` (once, whoever deletes the row), spend += cost in every period.
- sweep: releases every reservation whose lease ended (its process died: SIGKILL, host loss) on every account;
  FleetCredits calls it on its maintenance tick, so a budget recovers within a lease and a tick, and at once when
  one of its chains reserves. A reservation whose lease ended may be released account by account.

Periods: a period's figure counts only while its stored name is the current one or a later one, and settling into a
newer period replaces the name and the figure: a reset happens once, for everyone, in SQL. The current names come
from the database's clock (`statement_timestamp()`), so hosts whose clocks disagree still agree on when a day ends;
`clock` (tests) names them from a Python clock instead. A name is never moved backwards: a process whose clock lags
adds its cost to the newer period rather than undoing it.

Locks are always taken in the same order, so no two statements of the ledger can deadlock: existing reservation
rows before account rows (reservation rows are only inserted after their account rows are locked), several
reservation rows in id order (settle, renew), several account rows in account order (reserve, settle, sweep,
reconcile); a sweep skips the reservations another statement holds (they are being settled, renewed or swept).

Amounts are floats, as in the other ledgers; `reserved` is clamped at zero and a residue under 1e-9 USD left by
float rounding when reservations are released is dropped, so an account with nothing open holds exactly nothing.
"""

from __future__ import annotations

import secrets
from collections import Counter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from crossroads.gate.credits import PERIODS, Budget, Spend, insufficient_credit
from crossroads.gate.shared_credits import OpenReservations, SharedReservation, held_budgets, period_names
from crossroads.store.engine import translate_errors

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crossroads.store import Store

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

        def left(table: str, reserved: str) -> str:
            """What is left of budget `b`'s limit on its account's row `table` (`b.reset` names the figure)."""
            chosen = " ".join(f"WHEN '{period}' THEN {spent(period, table)}" for period in PERIODS)
            return f"b.lim - CASE b.reset {chosen} ELSE {table}.spent_total END - {reserved}"

        # The chain's budgets with a limit: account, limit, the figure it applies to, and its 1-based position.
        budgets = """unnest(CAST(:accounts AS text[]), CAST(:limits AS float8[]), CAST(:resets AS text[]))
                     WITH ORDINALITY AS b(account, lim, reset, ord)"""
        # `peek` judges the chain on the rows as the statement's snapshot has them, without locking: a refusal (a
        # client that keeps asking past its budget) then locks and writes nothing. Only when every limit fits there
        # are the rows locked, in account order (the sort runs before the lock): two chains sharing accounts never
        # wait for each other in a cycle. A locked row is the newest version (READ COMMITTED re-reads a row it had
        # to wait for), so `judged` decides on what the previous reservation left; `held` then writes every row or
        # none (a row updated after the snapshot is updated as the lock found it).
        self.reserve = sa.text(f"""
            WITH peek AS (
                SELECT b.ord, b.account, a.key_hash IS NOT NULL AS found, {left("a", "a.reserved")} AS room
                FROM {budgets} LEFT JOIN credit_accounts AS a ON a.key_hash = b.account),
            locked AS (
                SELECT a.* FROM credit_accounts AS a
                WHERE a.key_hash = ANY(CAST(:accounts AS text[]))
                  AND (SELECT bool_and(found AND room >= CAST(:amount AS float8)) FROM peek)
                ORDER BY a.key_hash FOR UPDATE),
            judged AS (
                SELECT b.ord, b.account, {left("l", "l.reserved")} >= CAST(:amount AS float8) AS fits
                FROM {budgets} LEFT JOIN locked AS l ON l.key_hash = b.account),
            verdict AS (SELECT coalesce(bool_and(fits), false) AS ok FROM judged),
            held AS (
                UPDATE credit_accounts AS a SET reserved = a.reserved + CAST(:amount AS float8)
                FROM verdict, judged
                WHERE verdict.ok AND a.key_hash = judged.account
                RETURNING a.key_hash, judged.ord),
            made AS (
                INSERT INTO credit_reservations (id, key_hash, amount, lease_until)
                SELECT CAST(:id AS text) || '.' || (held.ord - 1), held.key_hash, CAST(:amount AS float8),
                       {_LEASE_END}
                FROM held
                RETURNING id)
            SELECT count(*) FROM made""")
        # After a refusal: release the chain's reservations whose lease ended (on those accounts); how many, and
        # per budget whether its account exists and what is left now. Writes nothing when none ended: a chain out
        # of credit that keeps being asked costs a read per refusal, not a commit.
        self.recheck = sa.text(f"""
            WITH gone AS (
                DELETE FROM credit_reservations WHERE id IN (
                    SELECT id FROM credit_reservations
                    WHERE key_hash = ANY(CAST(:accounts AS text[])) AND lease_until < statement_timestamp()
                    FOR UPDATE SKIP LOCKED)
                RETURNING key_hash, amount),
            released AS (SELECT key_hash, sum(amount) AS amount FROM gone GROUP BY key_hash),
            locked AS (
                SELECT key_hash FROM credit_accounts WHERE key_hash IN (SELECT key_hash FROM released)
                ORDER BY key_hash FOR UPDATE),
            updated AS (
                UPDATE credit_accounts AS a SET reserved = {_release("a.reserved", "released.amount")}
                FROM released JOIN locked ON locked.key_hash = released.key_hash
                WHERE a.key_hash = released.key_hash
                RETURNING a.key_hash, a.reserved)
            SELECT b.ord, a.key_hash IS NOT NULL, {left("a", "coalesce(u.reserved, a.reserved)")}
            FROM {budgets} LEFT JOIN credit_accounts AS a ON a.key_hash = b.account
                 LEFT JOIN updated AS u ON u.key_hash = b.account
            ORDER BY b.ord""")
        self.create = sa.text("""
            INSERT INTO credit_accounts (key_hash)
            SELECT account FROM unnest(CAST(:accounts AS text[])) AS account ORDER BY account
            ON CONFLICT DO NOTHING""")
        rolled = ",\n".join(
            f"{column} = CASE WHEN {current(period)} THEN a.{column} ELSE {names[column]} END, "
            f"{figure} = CASE WHEN {current(period)} THEN a.{figure} + CAST(:cost AS float8) "
            f"ELSE CAST(:cost AS float8) END" for period, (column, figure) in _COLUMNS.items())
        # The reservation's rows are deleted (locked in id order, as renew locks them) before any account row is
        # locked: the rows to write are sorted by account, and the sort needs every released amount first. An
        # account without a row (a cost without a reservation) is created; `reserved` carries the released amount
        # into the update (a new row has none: reservation rows only exist for existing accounts).
        self.settle = sa.text(f"""
            WITH gone AS (
                DELETE FROM credit_reservations WHERE id IN (
                    SELECT id FROM credit_reservations WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id FOR UPDATE)
                RETURNING key_hash, amount),
            released AS (SELECT key_hash, sum(amount) AS amount FROM gone GROUP BY key_hash)
            INSERT INTO credit_accounts AS a
                (key_hash, spent_total, day, spent_day, week, spent_week, month, spent_month, reserved)
            SELECT v.account, CAST(:cost AS float8), {names["day"]}, CAST(:cost AS float8), {names["week"]},
                   CAST(:cost AS float8), {names["month"]}, CAST(:cost AS float8), coalesce(r.amount, 0)
            FROM unnest(CAST(:accounts AS text[])) AS v(account) LEFT JOIN released AS r ON r.key_hash = v.account
            ORDER BY v.account
            ON CONFLICT (key_hash) DO UPDATE SET reserved = {_release("a.reserved", "excluded.reserved")},
                spent_total = a.spent_total + CAST(:cost AS float8),
                {rolled}""")
        # Rows locked in id order, as settle locks them: a renewal and a settlement of one reservation (its rows on
        # several accounts) never wait for each other in a cycle. Counts reservations, not rows.
        self.renew = sa.text(f"""
            WITH renewed AS (
                UPDATE credit_reservations SET lease_until = {_LEASE_END} WHERE id IN (
                    SELECT id FROM credit_reservations WHERE id = ANY(CAST(:ids AS text[])) ORDER BY id FOR UPDATE)
                RETURNING id)
            SELECT count(DISTINCT split_part(id, '.', 1)) FROM renewed""")
        # Account rows are locked in account order (`locked`, before any is updated): two sweeps, or a sweep and a
        # reconciliation, never wait for each other in a cycle. Counts reservations (a reservation has a row per
        # account: "<id>.<i>").
        self.sweep = sa.text(f"""
            WITH gone AS (
                DELETE FROM credit_reservations WHERE id IN (
                    SELECT id FROM credit_reservations WHERE lease_until < statement_timestamp()
                    FOR UPDATE SKIP LOCKED)
                RETURNING id, key_hash, amount),
            totals AS (SELECT key_hash, sum(amount) AS amount FROM gone GROUP BY key_hash),
            locked AS (
                SELECT key_hash FROM credit_accounts WHERE key_hash IN (SELECT key_hash FROM totals)
                ORDER BY key_hash FOR UPDATE),
            updated AS (
                UPDATE credit_accounts AS a SET reserved = {_release("a.reserved", "totals.amount")}
                FROM totals JOIN locked ON locked.key_hash = totals.key_hash
                WHERE a.key_hash = totals.key_hash
                RETURNING 1)
            SELECT count(DISTINCT split_part(id, '.', 1)) FROM gone""")
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
            FROM credit_accounts AS a WHERE a.key_hash = ANY(CAST(:accounts AS text[]))""")

        # Each figure raised to the records' when lower, never lowered; a stored period older than the current one
        # takes the records' figure and the current name, a newer one (another clock ran ahead) is kept. Rows are
        # written in account order (see sweep).
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
            FROM unnest(CAST(:accounts AS text[]), CAST(:totals AS float8[]), CAST(:dailies AS float8[]),
                        CAST(:weeklies AS float8[]), CAST(:monthlies AS float8[]))
                 AS v(key_hash, total, daily, weekly, monthly)
            ORDER BY v.key_hash
            ON CONFLICT (key_hash) DO UPDATE SET
                spent_total = greatest(a.spent_total, excluded.spent_total),
                {", ".join(raised(period) for period in PERIODS)}""")


class PostgresCreditLedger:
    """Exact across every process sharing one PostgreSQL database. Database errors propagate (StoreUnavailable
    when it cannot be reached): the caller refuses the request (fail closed) rather than serve a limited budget it
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
        # The reservations this process holds and has not settled: account -> reservation ids (for `renew`).
        self.open = OpenReservations()

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

    async def reserve(self, chain: Sequence[Budget], amount: float, *, prompt_cost: float,
                      completion_price: float) -> SharedReservation:
        """Reserve `amount` USD for a request on every budget of `chain` that has a limit, all or nothing (nothing to
        hold without one), or raise 402 naming the first budget it does not fit and saying how many max_tokens
        would."""
        budgets = held_budgets(chain)
        if not budgets:
            return SharedReservation((), 0.0)
        accounts = [held.account for held in budgets]
        params = {"accounts": accounts, "limits": [held.limit for held in budgets],
                  "resets": [held.reset for held in budgets], "amount": float(amount), "lease": self.lease,
                  **self._periods()}
        refused, left = budgets[0], 0.0
        with translate_errors():
            async with self._engine.connect() as conn:
                for _ in range(4):
                    reservation_id = secrets.token_hex(8)
                    made = (await conn.execute(self._sql.reserve, {**params, "id": reservation_id})).scalar_one()
                    if made:  # a row per account: all of them (the statement writes all or none)
                        self.open.hold(accounts, reservation_id)
                        return SharedReservation(tuple(accounts), amount, reservation_id)
                    rows = (await conn.execute(self._sql.recheck, params)).all()
                    if not all(found for _, found, _ in rows):  # an account's first reservation anywhere
                        await conn.execute(self._sql.create, params)
                        continue
                    short = next(((int(order), float(room)) for order, _, room in rows if amount > room), None)
                    if short is not None:
                        refused, left = budgets[short[0] - 1], short[1]
                        break
                    # Room was made meanwhile (expired reservations released, a settlement): try again.
        raise insufficient_credit(refused.budget, left, amount, prompt_cost, completion_price)

    @staticmethod
    def _row_ids(reservation_id: str, accounts: int) -> list[str]:
        """The ids of a reservation's rows, one per account (see the module docstring)."""
        return [f"{reservation_id}.{index}" for index in range(accounts)]

    async def settle(self, reservation: SharedReservation, cost: float) -> None:
        """Replace the reservation with the real cost on every account (exactly once; an account whose row of the
        reservation ran out of lease and was released only adds its cost)."""
        if reservation.settled:
            return
        reservation.settled = True
        if not reservation.accounts or not reservation.id and cost <= 0:
            return
        self.open.release(reservation.accounts, reservation.id)
        ids = self._row_ids(reservation.id, len(reservation.accounts)) if reservation.id else []
        await self._execute(self._sql.settle, {"ids": ids, "accounts": list(reservation.accounts),
                                               "cost": float(cost), **self._periods()})

    async def renew(self) -> int:
        """Extend the lease of every reservation this process holds, in one statement; returns how many were
        still open (one released by a sweep after its lease ended stays released)."""
        if not self.open:
            return 0
        # A reservation is in the set of each of its accounts: as many rows as sets ("<id>.0" ...).
        accounts_of = Counter(reservation_id for ids in self.open.values() for reservation_id in ids)
        ids = [row for reservation_id, count in accounts_of.items() for row in self._row_ids(reservation_id, count)]
        return int((await self._execute(self._sql.renew, {"ids": ids, "lease": self.lease})).scalar_one())

    async def sweep(self) -> int:
        """Release every reservation whose lease ended (whichever process held it) on every account, in one
        statement; returns how many reservations."""
        return int((await self._execute(self._sql.sweep, {})).scalar_one())

    async def spend(self, account: str) -> Spend:
        """The account's figures (spend per period and what open reservations hold), in one statement."""
        return (await self.spend_of([account]))[account]

    async def spend_of(self, accounts: list[str]) -> dict[str, Spend]:
        """`spend` of several accounts, in one statement."""
        figures = {account: Spend() for account in accounts}
        if not accounts:
            return figures
        result = await self._execute(self._sql.spend, {"accounts": list(accounts), **self._periods()})
        for account, total, daily, weekly, monthly, reserved in result.all():
            figures[account] = Spend(total=float(total), daily=float(daily), weekly=float(weekly),
                                      monthly=float(monthly), reserved=float(reserved))
        return figures

    async def reconcile(self, spend_by_account: dict[str | None, dict[str, float]], *,
                        complete: bool = True) -> None:
        """Raise each figure to the database records' when it is lower, never lowering one (a settled cost whose
        record is still waiting to be written stays counted), in one statement. `complete` is accepted for
        RedisCreditLedger's interface: these figures cannot be lost apart from the records."""
        rows = sorted((account, figures) for account, figures in spend_by_account.items() if account is not None)
        if not rows:
            return
        params: dict[str, Any] = {"accounts": [account for account, _ in rows], **self._periods()}
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
