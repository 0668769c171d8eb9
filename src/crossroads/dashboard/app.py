"""The dashboard: server-rendered pages under `/`, on the gateway's own port, signed in with a management key.

Nothing here runs on the inference path: its routes are separate entries in the gateway's route table, and its
pages read the key cache, the registry, the health board and the generation store.
"""

from __future__ import annotations

import csv
import hmac
import io
import logging
import math
from datetime import UTC, date, datetime, timedelta
from datetime import time as dt_time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import jinja2

from crossroads.api.account import add_key, change_key, check_key_limit, key_changes, place_key
from crossroads.api.asgi import Request, respond
from crossroads.dashboard.access import Access, local_path, resolve
from crossroads.dashboard.charts import bar_chart
from crossroads.dashboard.people import PeoplePages, over_https, people_origin
from crossroads.dashboard.sessions import Session, SessionStore, SignInThrottle
from crossroads.errors import GatewayError
from crossroads.gate.directory import DEFAULT
from crossroads.gate.keys import is_expired
from crossroads.gate.oauth import PendingGrants, callback_problem, challenge_problem
from crossroads.gate.passwords import verify_password_async
from crossroads.observability.hub import refused_key
from crossroads.observability.record import key_label
from crossroads.routing.health import STATUS_EJECTED, STATUS_OK, STATUS_PROBING

if TYPE_CHECKING:
    from crossroads.api.app import Gateway
    from crossroads.config import RouteConditionConfig
    from crossroads.store.rows import KeyRow, UserRow

log = logging.getLogger("crossroads.dashboard")
HERE = Path(__file__).parent
COOKIE = "crossroads_session"
SSO_COOKIE = "crossroads_sso"  # a single sign-on under way (dashboard/oidc.py: its state lives in the browser)
PAGE_SIZE = 50
CSV_LIMIT = 100_000
WINDOWS = {"24h": "the last 24 hours", "7d": "the last 7 days", "30d": "the last 30 days"}
OUTCOME_SAMPLE = 50_000  # newest requests the overview's error rate and latency percentiles are computed from
CSV_COLUMNS = ("id", "created_at", "key_hash", "model", "provider_name", "upstream_model", "api_type", "streamed",
               "status", "error", "finish_reason", "tokens_prompt", "tokens_completion", "tokens_reasoning",
               "tokens_cached", "cost", "latency_ms", "generation_time_ms", "ttft_ms", "app_title", "http_referer",
               "user")
# No inline script or style anywhere: every script and stylesheet is a file under /static.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action {form_action}; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.format(form_action="'self'").encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
]
STATES = {STATUS_OK: "healthy", STATUS_PROBING: "probing", STATUS_EJECTED: "ejected"}
STATIC_TYPES = {".css": b"text/css; charset=utf-8", ".js": b"text/javascript; charset=utf-8"}
NAVIGATION = [("Overview", "/"), ("API Keys", "/keys"), ("Models", "/models"), ("Activity", "/activity"),
              ("Connections", "/connections"), ("Budgets", "/budgets"), ("Members", "/members")]
SUPER_ADMIN_NAVIGATION = [("Credits", "/credits")]  # the gateway's own budget: the master key's and admins' only
# A password sign-in with an unknown email checks this hash, so that it takes as long as one with a known email.
_NO_SUCH_USER = "$argon2id$v=19$m=65536,t=3,p=4$MWDjEle2suAJ0calh7jdTQ$vjBNaGuGuy7LeqTnlz1StWVPZp+sJekY33DuO6ZXWHk"


class Dashboard:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.sessions = SessionStore()
        self.throttle = SignInThrottle()
        self.grants = PendingGrants()
        sso = gateway.config.server.oidc
        self.oidc: Any = None  # dashboard single sign-on (server.oidc)
        if sso is not None:  # imported only then: its JOSE and crypto libraries weigh megabytes in every worker
            from crossroads.dashboard.oidc import OidcSettings, OidcSignIn

            self.oidc = OidcSignIn(OidcSettings(sso.issuer, sso.client_id, sso.client_secret, tuple(sso.scopes)))
        self.people = PeoplePages(self)
        self.templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.templates.filters["usd"] = _usd
        self.templates.filters["when"] = _when
        self.templates.filters["plain"] = _plain_number
        self.static = {path.name: path.read_bytes() for path in (HERE / "static").iterdir() if path.is_file()}

    def routes(self) -> list[tuple[str, str, Any]]:
        pages = [
            ("GET", "/", self.overview), ("GET", "/signin", self.sign_in_page), ("POST", "/signin", self.sign_in),
            ("POST", "/signout", self.sign_out), ("GET", "/keys", self.keys_page), ("POST", "/keys", self.create_key),
            ("POST", "/keys/update", self.update_key), ("GET", "/keys/edit", self.edit_key_page), ("GET", "/models", self.models_page),
            ("GET", "/activity", self.activity_page), ("GET", "/connections", self.connections_page),
            ("GET", "/auth", self.consent_page), ("POST", "/auth", self.consent),
            ("GET", "/credits", self.credits_page), ("GET", "/activity/view", self.generation_page),
            ("GET", "/activity.csv", self.activity_csv), *self.people.routes(),
            ("GET", "/signin/sso", self.sso_start), ("GET", "/signin/sso/callback", self.sso_finish),
        ]
        return [*((method, path, self._html_errors(handler)) for method, path, handler in pages),
                *(("GET", f"/static/{name}", self._static_handler(name)) for name in self.static)]

    def _html_errors(self, handler: Any) -> Any:
        """A refused page (bad CSRF token, bad /auth request, unknown record) answers a page a person can read,
        with the same status, rather than the API's JSON error."""
        async def handler_with_error_page(request: Request) -> None:
            try:
                await handler(request)
            except GatewayError as error:
                if request.started:
                    raise
                headers = [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
                try:
                    session = await self._session(request)
                    access = await self._access(session) if session is not None else None
                except Exception:  # noqa: BLE001 - e.g. the database is what failed: the page goes without
                    session, access = None, None
                await self._page(request, "error.html", access, session=session, status=error.status,
                                 headers=headers, message=error.message)
        return handler_with_error_page

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _static_handler(self, name: str) -> Any:
        body = self.static[name]
        headers = [(b"cache-control", b"public, max-age=3600"), (b"x-content-type-options", b"nosniff")]
        content_type = [(b"content-type", STATIC_TYPES.get(Path(name).suffix, b"application/octet-stream"))]

        async def handler(request: Request) -> None:
            await respond(request, 200, body, headers, content_type)
        return handler

    async def _page(self, request: Request, template: str, access: Access | None, *, session: Session | None = None,
                    status: int = 200, headers: list[tuple[bytes, bytes]] | None = None,
                    form_target: str | None = None, **context: Any) -> None:
        """Render a page with the security headers; `form_target` is an origin the page's form may lead to (the
        consent form's redirect to the app: browsers apply form-action to a form's redirects too)."""
        if access is not None:
            session = access.session
        navigation = NAVIGATION + (SUPER_ADMIN_NAVIGATION if access is not None and access.super_admin else [])
        here = request.path + ("?" + request.scope["query_string"].decode("latin-1")
                               if request.scope.get("query_string") else "")
        html = self.templates.get_template(template).render(
            navigation=navigation if access is not None else [], current=request.path, here=local_path(here),
            session=session, access=access, sso=self.oidc is not None, **context)
        security = SECURITY_HEADERS
        if form_target is not None:
            security = [(b"content-security-policy", CSP.format(form_action=f"'self' {form_target}").encode()),
                        *SECURITY_HEADERS[1:]]
        await respond(request, status, html.encode(), [*security, *(headers or [])],
                      [(b"content-type", b"text/html; charset=utf-8")])

    async def _redirect(self, request: Request, location: str, headers: list[tuple[bytes, bytes]] | None = None
                        ) -> None:
        await respond(request, 303, b"", [(b"location", location.encode()), *SECURITY_HEADERS, *(headers or [])],
                      [(b"content-type", b"text/plain")])

    def _token(self, request: Request) -> str | None:
        return self._cookie_value(request, COOKIE)

    @staticmethod
    def _cookie_value(request: Request, cookie_name: str) -> str | None:
        cookie = request.header("cookie") or ""
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == cookie_name:
                return value
        return None

    async def _session(self, request: Request) -> Session | None:
        session = await self.sessions.get(self._token(request))
        if session is not None and session.key_hash is not None:
            # A management key that was disabled, deleted or has expired ends its sessions at the next request.
            row = self.gateway.services.keys.get(session.key_hash)
            if row is None or row.disabled or is_expired(row):
                await self.sessions.end_for_key(session.key_hash)
                return None
        if session is not None and session.user_id is not None:
            # Roles and memberships as the database has them now (changed through another worker a moment ago).
            await self.gateway.services.keys.reload_directory()
            user = self.gateway.services.keys.directory.users.get(session.user_id)
            if user is None or user.disabled:
                await self.sessions.end_for_user(session.user_id)
                return None
        return session

    async def _access(self, session: Session) -> Access | None:
        directory = self.gateway.services.keys.directory
        key = self.gateway.services.keys.get(session.key_hash) if session.key_hash is not None else None
        user = directory.users.get(session.user_id) if session.user_id is not None else None
        return resolve(session, directory, key=key, user=user)

    async def _signed_in(self, request: Request) -> Access | None:
        """What the session may see and do, or None after redirecting to the sign-in page (which comes back here
        afterwards). 403 for a person who is in no workspace (any more)."""
        session = await self._session(request)
        if session is not None:
            access = await self._access(session)
            if access is None:
                raise GatewayError(403, "You are not a member of any workspace: ask a workspace's owner or admin "
                                        "to invite you")
            return access
        here = request.path
        query = request.scope.get("query_string", b"").decode("latin-1")
        if here != "/" or query:
            here = here + ("?" + query if query else "")
            await self._redirect(request, "/signin?" + urlencode({"next": here}))
        else:
            await self._redirect(request, "/signin")
        return None

    def _form(self, request: Request, session: Session | None) -> dict[str, str]:
        """The posted form; 403 unless it carries the session's CSRF token (and comes from this origin)."""
        origin = request.header("origin")
        host = request.header("host")
        if origin and host and origin.split("://", 1)[-1] != host:
            raise GatewayError(403, "Cross-origin form posts are refused")
        fields = {name: values[-1] for name, values in parse_qs(request.body.decode("utf-8", "replace"),
                                                                  keep_blank_values=True).items()}
        if session is not None and not hmac.compare_digest(fields.get("csrf", ""), session.csrf):
            raise GatewayError(403, "Missing or wrong CSRF token: reload the page and try again")
        return fields

    def _cookie(self, request: Request, value: str, max_age: int | None = None) -> tuple[bytes, bytes]:
        secure = over_https(request)
        attributes = f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
        if max_age is not None:
            attributes += f"; Max-Age={max_age}"
        return (b"set-cookie", attributes.encode())

    # -- sign-in ---------------------------------------------------------------------------------------------------
    async def sign_in_page(self, request: Request) -> None:
        next_page = local_path(request.query().get("next"))
        if await self._session(request) is not None:
            await self._redirect(request, next_page)
            return
        await self._page(request, "signin.html", None, error=None, next_page=next_page, email="")

    async def sign_in(self, request: Request) -> None:
        fields = self._form(request, None)
        next_page = local_path(fields.get("next"))
        address = (request.scope.get("client") or ("unknown",))[0]
        wait = self.throttle.retry_after(address)
        if wait > 0:
            await self._page(request, "signin.html", None, status=429, next_page=next_page, email="",
                             headers=[(b"retry-after", str(math.ceil(wait)).encode())],
                             error=f"Too many failed sign-ins from this address; try again in {math.ceil(wait)} s.")
            return
        if "email" in fields:
            await self._sign_in_person(request, fields, address, next_page)
            return
        key = fields.get("key", "").strip()
        try:
            principal = self.gateway.auth.authenticate({b"authorization": b"Bearer " + key.encode()}) if key \
                else None
        except GatewayError:
            principal = None
        if principal is None or not principal.can_manage:
            self.throttle.failed(address)
            self.gateway.observability.denials.record(
                "auth", refused_key(key_label(key)), "/signin",
                f"dashboard sign-in refused for {address}")
            await self._page(request, "signin.html", None, status=401, next_page=next_page, email="",
                             error="Sign-in needs the master key or a management key." if principal is None
                             else "This is not a management key: only the master key or a management key can sign in.")
            return
        self.throttle.succeeded(address)
        token, _ = await self.sessions.create(principal.kind, principal.key_hash)
        await self._redirect(request, next_page, [self._cookie(request, token)])

    async def _sign_in_person(self, request: Request, fields: dict[str, str], address: str, next_page: str) -> None:
        """Email and password: a person's session (their workspaces and roles are looked up on every page)."""
        email = fields.get("email", "").strip().lower()
        await self.gateway.services.keys.reload_directory()  # a person added through another worker a moment ago
        user = next((u for u in self.gateway.services.keys.directory.users.values() if u.email == email), None)
        known = user is not None and not user.disabled and user.password_hash is not None
        # An unknown email costs the same hash check as a wrong password: the answer's timing tells nothing.
        matched = await verify_password_async(user.password_hash if known else _NO_SUCH_USER,  # type: ignore[union-attr]
                                              fields.get("password", ""))
        if not (known and matched):
            self.throttle.failed(address)
            self.gateway.observability.denials.record(
                "auth", "password", "/signin", f"dashboard password sign-in refused for {address}")
            await self._page(request, "signin.html", None, status=401, next_page=next_page, email=email,
                             error="Wrong email or password.")
            return
        self.throttle.succeeded(address)
        await self._start_person_session(request, user, next_page)  # type: ignore[arg-type]

    async def _start_person_session(self, request: Request, user: UserRow, next_page: str,
                                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
        token, _ = await self.sessions.create("user", None, user_id=user.id)
        await self._redirect(request, next_page, [self._cookie(request, token), *(headers or [])])

    # -- single sign-on (OpenID Connect) ---------------------------------------------------------------------------
    def _sso_redirect_uri(self, request: Request) -> str:
        return f"{people_origin(request)}/signin/sso/callback"

    def _sso_cookie(self, request: Request, value: str, max_age: int) -> tuple[bytes, bytes]:
        # SameSite=Lax: the provider's redirect back is a cross-site top-level navigation, which Strict would strip.
        secure = "; Secure" if over_https(request) else ""
        return (b"set-cookie", f"{SSO_COOKIE}={value}; Path=/signin/sso; HttpOnly; SameSite=Lax; "
                               f"Max-Age={max_age}{secure}".encode())

    async def sso_start(self, request: Request) -> None:
        if self.oidc is None:
            raise GatewayError(404, "Single sign-on is not configured (server.oidc)")
        from crossroads.dashboard.oidc import OidcError

        next_page = local_path(request.query().get("next"))
        try:
            url, pending = await self.oidc.start(self._sso_redirect_uri(request), next_page)
        except OidcError as error:
            log.warning("dashboard single sign-on could not start: %s", error)
            raise GatewayError(502, str(error)) from None
        await self._redirect(request, url, [self._sso_cookie(request, pending, 15 * 60)])

    async def sso_finish(self, request: Request) -> None:
        """The provider's redirect back: the person it vouches for signs in, if they have an account here (matched
        by the provider's subject, else by verified email; or invited, when they came from an invitation link)."""
        if self.oidc is None:
            raise GatewayError(404, "Single sign-on is not configured (server.oidc)")
        from crossroads.dashboard.oidc import OidcError

        address = (request.scope.get("client") or ("unknown",))[0]
        clear = self._sso_cookie(request, "", 0)
        try:
            signed = await self.oidc.finish(request.query(), self._cookie_value(request, SSO_COOKIE),
                                            self._sso_redirect_uri(request))
        except OidcError as error:
            self.gateway.observability.denials.record("auth", "sso", "/signin/sso",
                                                      f"dashboard single sign-on refused for {address}: {error}")
            await self._page(request, "signin.html", None, status=401, next_page="/", email="", error=str(error),
                             headers=[clear])
            return
        user = await self.people.sso_user(signed)
        if user is None or user.disabled:
            self.gateway.observability.denials.record("auth", "sso", "/signin/sso",
                                                      f"dashboard single sign-on: no account for {address}")
            problem = (f"{signed.email} has no account here: ask a workspace's owner or admin to invite you, then "
                       "open the invitation link." if signed.email_verified or user is not None else
                       f"The identity provider has not verified {signed.email}, so it cannot be matched to an "
                       "account here.")
            await self._page(request, "signin.html", None, status=403, next_page="/", email="", error=problem,
                             headers=[clear])
            return
        await self._start_person_session(request, user, signed.next_page, [clear])

    async def sign_out(self, request: Request) -> None:
        session = await self._session(request)
        self._form(request, session)
        await self.sessions.end(self._token(request))
        await self._redirect(request, "/signin", [self._cookie(request, "", max_age=0)])

    # -- pages -----------------------------------------------------------------------------------------------------
    async def _days(self, days: int, access: Access | None) -> tuple[list[dict[str, Any]], list[str]]:
        """Usage rows (those `access` sees; None: every one) of the last `days` days (UTC, today included) and those
        days' dates in order."""
        today = datetime.now(UTC).date()
        first = today - timedelta(days=days - 1)
        dates = [(first + timedelta(days=i)).isoformat() for i in range(days)]
        return await self.gateway.services.store.activity(
            first, today, None, workspace_id=access.workspace_id if access is not None else None,
            user_id=access.own_only if access is not None else None), dates

    async def _buckets(self, window: str, access: Access
                       ) -> tuple[list[dict[str, Any]], list[tuple[str, str]], datetime]:
        """Usage rows of the window, its buckets in order as (key, chart label), and the first bucket's start. "24h"
        is the last 24 UTC hours (this one included), by hour; "7d" and "30d" are days (today included)."""
        if window == "24h":
            hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
            starts = [hour - timedelta(hours=23 - i) for i in range(24)]
            rows = await self.gateway.services.store.activity(starts[0].date(), hour.date(), None, hourly=True,
                                                              workspace_id=access.workspace_id,
                                                              user_id=access.own_only)
            return rows, [(s.strftime("%Y-%m-%d %H"), s.strftime("%H:00")) for s in starts], starts[0]
        rows, dates = await self._days(int(window[:-1]), access)
        return rows, [(d, d[5:]) for d in dates], datetime.combine(date.fromisoformat(dates[0]), dt_time(), UTC)

    async def overview(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        window = request.query().get("window", "30d")
        if window not in WINDOWS:
            window = "30d"
        rows, buckets, since = await self._buckets(window, access)
        bucket_format = "%Y-%m-%d %H" if window == "24h" else "%Y-%m-%d"
        per_bucket = {key: {"requests": 0, "cost": 0.0, "tokens": 0, "errors": 0} for key, _ in buckets}
        by_model: dict[str, dict[str, float]] = {}
        by_key: dict[str | None, dict[str, float]] = {}
        for row in rows:
            if (bucket := per_bucket.get(row["date"])) is None:
                continue  # the 24 h window's rows start at midnight of its first day
            bucket["requests"] += row["requests"]
            bucket["cost"] += row["cost"]
            bucket["tokens"] += row["prompt_tokens"] + row["completion_tokens"]
            for table, name in ((by_model, row["model"]), (by_key, row["key_hash"])):
                entry = table.setdefault(name, {"requests": 0, "cost": 0.0})
                entry["requests"] += row["requests"]
                entry["cost"] += row["cost"]
        totals = {name: sum(b[name] for b in per_bucket.values()) for name in ("requests", "cost", "tokens")}
        outcomes = await self.gateway.services.store.request_outcomes(
            since, OUTCOME_SAMPLE, workspace_id=access.workspace_id, user_id=access.own_only)
        by_app: dict[str, dict[str, float]] = {}
        for created_at, status, _, app, cost in outcomes:
            bucket = per_bucket.get(created_at.astimezone(UTC).strftime(bucket_format))
            if status >= 400 and bucket is not None:
                bucket["errors"] += 1
            if app:
                entry = by_app.setdefault(app, {"requests": 0, "cost": 0.0})
                entry["requests"] += 1
                entry["cost"] += cost
        latencies = sorted(o[2] for o in outcomes if o[2] is not None and o[1] < 400)
        health = {"sampled": len(outcomes), "capped": len(outcomes) >= OUTCOME_SAMPLE,
                  "error_rate": (sum(1 for o in outcomes if o[1] >= 400) / len(outcomes) if outcomes else None),
                  "p50": _percentile(latencies, 0.5), "p95": _percentile(latencies, 0.95)}
        names = {row.hash: row.name for row in await self.gateway.services.store.list_keys() if access.sees_key(row)}
        unit = "hour" if window == "24h" else "day"

        def series(name: str) -> list[tuple[str, float]]:
            return [(label, per_bucket[key][name]) for key, label in buckets]

        charts = [
            bar_chart(series("requests"), title=f"Requests per {unit}"),
            bar_chart(series("cost"), title=f"Spend per {unit} (USD)", fmt=_usd),
            bar_chart(series("tokens"), title=f"Tokens per {unit}"),
            bar_chart(series("errors"), title=f"Failed requests per {unit}"),
        ]
        top_models = sorted(by_model.items(), key=lambda item: -item[1]["requests"])[:10]
        top_keys = [("master key" if k is None else names.get(k, k[:12]), v)
                    for k, v in sorted(by_key.items(), key=lambda item: -item[1]["requests"])[:10]]
        top_apps = sorted(by_app.items(), key=lambda item: -item[1]["requests"])[:10]
        await self._page(request, "overview.html", access, totals=totals, top_models=top_models, top_keys=top_keys,
                         top_apps=top_apps, charts=charts, window=window, windows=WINDOWS, health=health)

    async def credits_page(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        if not access.super_admin:
            raise GatewayError(403, "The gateway's credits are the master key's and admins' to see; a workspace's "
                                    "budgets are on the Budgets page")
        rows, dates = await self._days(30, None)  # the gateway's credits: every workspace's spend
        per_day = dict.fromkeys(dates, 0.0)
        for row in rows:
            if row["date"] in per_day:
                per_day[row["date"]] += row["cost"]
        budget = self.gateway.config.accounting.budget
        usage = (await self.gateway.services.total_figures()).total
        await self._page(request, "credits.html", access, budget=budget, usage=usage,
                         remaining=None if budget is None else budget - usage,
                         chart=bar_chart([(d[5:], v) for d, v in per_day.items()], title="Spend per day (USD)",
                                         fmt=_usd))

    async def keys_page(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        new_key = await self.sessions.take_flash(self._token(request) or "", access.session, "key")  # shown once
        await self._keys(request, access, new_key=new_key, error=None)

    async def _keys(self, request: Request, access: Access, *, new_key: str | None, error: str | None,
                    status: int = 200) -> None:
        rows = [row for row in await self.gateway.services.store.list_keys() if access.sees_key(row)]
        directory = self.gateway.services.keys.directory
        keys = []
        figures = await self.gateway.services.key_figures(rows)
        for row in rows:
            used = figures[row.hash].total
            environment = directory.environments.get(row.environment_id)
            owner = directory.users.get(row.user_id) if row.user_id is not None else None
            keys.append({"row": row, "used": used, "changes": access.changes_key(row),
                         "share": min(100, round(100 * used / row.limit)) if row.limit else None,
                         "place": (self.gateway.services.workspace_name(row.workspace_id) or "") + " / "
                         + (environment.name if environment is not None else row.environment_id),
                         "owner": owner.email if owner is not None else None})
        home = access.workspace or directory.workspaces.get(DEFAULT)
        environments = sorted(e.name for e in directory.environments_of(home.id)) if home is not None else []
        await self._page(request, "keys.html", access, status=status, keys=keys, new_key=new_key, error=error,
                         models=sorted(self._models_for(access)), environments=environments,
                         home=home.name if home is not None else DEFAULT)

    async def create_key(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        fields = self._form(request, access.session)
        try:
            changes = key_changes(_key_body(fields), creating=True)
            changes["workspace"] = access.workspace_id or DEFAULT
            changes["environment"] = fields.get("environment") or DEFAULT
            plaintext, _ = await add_key(self.gateway, place_key(self.gateway, access.principal, changes))
        except GatewayError as error:
            await self._keys(request, access, new_key=None, error=error.message,
                             status=error.status if error.status < 500 else 400)
            return
        await self.sessions.set_flash(self._token(request) or "", access.session, "key", plaintext)
        await self._redirect(request, "/keys")

    def _changeable(self, access: Access, key_hash: str) -> KeyRow:
        """A key the session may change: another workspace's (or, for a member, another person's) is not found."""
        row = self.gateway.services.keys.get(key_hash)
        if row is None or not access.changes_key(row):
            raise GatewayError(404, "API key not found")
        return row

    async def update_key(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        fields = self._form(request, access.session)
        key_hash, action = fields.get("hash", ""), fields.get("action")
        current = self._changeable(access, key_hash)
        if action == "delete":
            if await self.gateway.services.store.delete_key(key_hash):
                self.gateway.services.keys.drop(key_hash)
                await self.sessions.end_for_key(key_hash)
        elif action == "edit":
            try:
                changes = key_changes(_key_body(fields, editing=True), creating=False)
                if "limit" in changes:
                    check_key_limit(self.gateway, access.principal, current, changes["limit"])
                row = await change_key(self.gateway, key_hash, changes)
            except GatewayError as error:
                await self._page(request, "key_edit.html", access, status=400, row=current, error=error.message)
                return
            if row is None:
                raise GatewayError(404, "API key not found")
        elif action in ("disable", "enable"):
            row = await change_key(self.gateway, key_hash, {"disabled": action == "disable"})
            if row is not None and row.disabled:
                await self.sessions.end_for_key(key_hash)
        else:
            raise GatewayError(400, "Unknown key action")
        await self._redirect(request, "/keys")

    async def edit_key_page(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        row = self.gateway.services.keys.get(request.query().get("hash", ""))
        if row is None or not access.changes_key(row):
            await self._redirect(request, "/keys")
            return
        await self._page(request, "key_edit.html", access, row=row, error=None)

    def _models_for(self, access: Access) -> dict[str, list[Any]]:
        """The served models (id → deployments) the session's workspace may use: those of connections that are
        everyone's or its own (config `workspace:`). Every model for a super-admin looking at all workspaces."""
        models = self.gateway.services.registry.models
        if access.workspace is None or not self.gateway.services.scoped_resources:
            return models
        name = access.workspace.name
        scoped = {}
        for model_id, deployments in models.items():
            mine = [d for d in deployments if d.connection.config.workspace in (None, name)]
            if mine:
                scoped[model_id] = mine
        return scoped

    async def models_page(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        query = request.query()
        search = query.get("q", "").strip().lower()
        vendor = query.get("vendor", "")
        modality = query.get("modality", "")
        sort = query.get("sort", "name")
        health = self.gateway.services.health
        models, vendors, modalities = [], set(), set()
        for model_id, deployments in self._models_for(access).items():
            spec = deployments[0].model
            vendors.add(model_id.split("/", 1)[0])
            modalities.update(spec.input_modalities)
            if (search and search not in model_id.lower() and search not in spec.name.lower()) \
                    or (vendor and model_id.split("/", 1)[0] != vendor) \
                    or (modality and modality not in spec.input_modalities):
                continue
            endpoints = []
            for d in deployments:
                stats = health.endpoint_stats(d.connection.name, d.model.upstream)
                endpoints.append({"connection": d.connection.name, "upstream": d.model.upstream,
                                  "state": STATES.get(stats["status"], "unknown"),
                                  "uptime": stats["uptime_last_30m"],
                                  "latency": (stats["latency_last_30m"] or {}).get("p50"),
                                  "throughput": (stats["throughput_last_30m"] or {}).get("p50")})
            models.append({"id": model_id, "name": spec.name, "context": spec.context_length,
                           "prompt": spec.pricing.prompt * 1e6, "completion": spec.pricing.completion * 1e6,
                           "priced": spec.priced, "modalities": spec.input_modalities, "endpoints": endpoints})
        sorts = {"price": lambda m: (m["prompt"], m["id"]), "context": lambda m: (-(m["context"] or 0), m["id"]),
                 "name": lambda m: m["id"]}
        models.sort(key=sorts.get(sort, sorts["name"]))
        await self._page(request, "models.html", access, models=models, query=search, vendor=vendor,
                         modality=modality, sort=sort, vendors=sorted(vendors), modalities=sorted(modalities))

    async def connections_page(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        health = self.gateway.services.health
        config = self.gateway.config
        owners = (None, access.workspace.name) if access.workspace is not None else None  # None: every one
        providers = [c for c in config.providers if owners is None or c.workspace in owners]
        config_routes = [r for r in config.routes if owners is None or r.workspace in owners]
        scopes = [f"conn:{c.name}" for c in providers] + [f"route:{r.name}" for r in config_routes]
        try:
            used: dict[tuple[str, str], int] | None = await self.gateway.services.limiter.usage(scopes)
        except Exception:  # Redis down: the page still shows health and configuration
            used = None
        connections = []
        for c in providers:
            deployments = [d for deps in self.gateway.services.registry.models.values() for d in deps
                           if d.connection.name == c.name]
            ejected = sum(1 for d in deployments if health.status(c.name, d.model.upstream) == STATUS_EJECTED)
            connections.append({"name": c.name, "type": c.type, "models": len(deployments), "ejected": ejected,
                                "state": health.connection_state(c.name),
                                "capacity": _capacity(used, f"conn:{c.name}", c.rpm, c.tpm)})
        routes = [{"route": r, "capacity": _capacity(used, f"route:{r.name}", r.rpm, r.tpm),
                   "conditions": [_condition_text(condition) for condition in r.conditions]}
                  for r in config_routes]
        await self._page(request, "connections.html", access, connections=connections, routes=routes,
                         usage_known=used is not None)

    def _activity_filters(self, request: Request) -> dict[str, str]:
        query = request.query()
        filters = {name: query[name] for name in ("key", "model", "status", "app", "from", "to") if query.get(name)}
        for name in ("from", "to"):  # a date that does not parse filters nothing rather than failing the page
            if name in filters:
                try:
                    date.fromisoformat(filters[name])
                except ValueError:
                    del filters[name]
        return filters

    async def _activity_rows(self, access: Access, filters: dict[str, str], limit: int, offset: int) -> list[Any]:
        status = filters.get("status")
        since = datetime.combine(date.fromisoformat(filters["from"]), dt_time(), UTC) if "from" in filters else None
        until = (datetime.combine(date.fromisoformat(filters["to"]), dt_time(), UTC) + timedelta(days=1)
                 if "to" in filters else None)  # the whole "to" day
        return await self.gateway.services.store.list_generations(
            key_hash=filters.get("key"), model=filters.get("model"), app=filters.get("app"), since=since,
            until=until, failed=None if status not in ("ok", "failed") else status == "failed", limit=limit,
            offset=offset, workspace_id=access.workspace_id, user_id=access.own_only)

    async def activity_page(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        try:
            page = max(int(request.query().get("page", "1")), 1)
        except ValueError:
            page = 1
        filters = self._activity_filters(request)
        rows = await self._activity_rows(access, filters, PAGE_SIZE + 1, (page - 1) * PAGE_SIZE)
        # The key filter offers the keys the session sees: others' names are not for it to read.
        names = {row.hash: row.name for row in await self.gateway.services.store.list_keys() if access.sees_key(row)}
        await self._page(request, "activity.html", access, rows=rows[:PAGE_SIZE], names=names, page=page,
                         more=len(rows) > PAGE_SIZE, filters=filters, filter_query=urlencode(filters))

    async def activity_csv(self, request: Request) -> None:
        """The filtered rows (up to CSV_LIMIT, newest first) as CSV."""
        if (access := await self._signed_in(request)) is None:
            return
        rows = await self._activity_rows(access, self._activity_filters(request), CSV_LIMIT, 0)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([_csv_safe(getattr(row, column)) for column in CSV_COLUMNS])
        await respond(request, 200, out.getvalue().encode(),
                      [*SECURITY_HEADERS, (b"content-disposition", b'attachment; filename="activity.csv"')],
                      [(b"content-type", b"text/csv; charset=utf-8")])

    async def generation_page(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        row = await self.gateway.services.store.get_generation(request.query().get("id", ""))
        if row is None or not access.sees_record(row.workspace_id, row.user_id):
            await self._page(request, "generation.html", access, status=404, row=None, key_name=None)
            return
        key = self.gateway.services.keys.get(row.key_hash) if row.key_hash else None
        await self._page(request, "generation.html", access, row=row,
                         key_name=key.name if key is not None else ("master key" if row.key_hash is None else None))

    # -- OAuth PKCE ------------------------------------------------------------------------------------------------
    def _authorisation(self, params: dict[str, str]) -> tuple[str, str | None, str | None]:
        callback = params.get("callback_url", "")
        challenge = params.get("code_challenge") or None
        method = params.get("code_challenge_method") or None
        problem = callback_problem(callback, self.gateway.config.server.oauth.allowed_callbacks) if callback \
            else "callback_url is required"
        problem = problem or challenge_problem(challenge, method)
        if problem is not None:
            raise GatewayError(400, f"Invalid authorisation request: {problem}")
        return callback, challenge, method

    async def consent_page(self, request: Request) -> None:
        params = request.query()
        callback, challenge, method = self._authorisation(params)  # a bad request is refused before sign-in
        if (access := await self._signed_in(request)) is None:
            return
        await self._page(request, "consent.html", access, callback=callback, host=urlsplit(callback).hostname,
                         challenge=challenge or "", method=method or "", error=None, form_target=_origin(callback))

    async def consent(self, request: Request) -> None:
        if (access := await self._signed_in(request)) is None:
            return
        fields = self._form(request, access.session)
        callback, challenge, method = self._authorisation(fields)
        host = urlsplit(callback).hostname or "app"
        if fields.get("decision") != "approve":
            await self._redirect(request, _with_query(callback, {"error": "access_denied"}))
            return
        limit: float | None = None
        try:
            if fields.get("limit", "").strip():
                limit = float(fields["limit"])
                if not math.isfinite(limit) or limit < 0:
                    raise ValueError
        except ValueError:
            await self._page(request, "consent.html", access, status=400, callback=callback, host=host,
                             form_target=_origin(callback),
                             challenge=challenge or "", method=method or "",
                             error="The credit limit must be a non-negative number of USD")
            return
        await self.gateway.services.check_limit_allowed({"limit": limit})
        # The key belongs where a key made on the Keys page would: this workspace, this person (if a member).
        place = place_key(self.gateway, access.principal, {"workspace": access.workspace_id or DEFAULT,
                                                           "limit": limit})
        session = access.session
        if session.user_id is not None:
            user_id = f"user-{session.user_id}"
        elif session.key_hash is not None:
            user_id = f"key-{session.key_hash[:16]}"
        else:
            user_id = "master"
        code = await self.grants.issue(name=host, limit=limit, user_id=user_id, challenge=challenge, method=method,
                                       place=place)
        await self._redirect(request, _with_query(callback, {"code": code}))


def _key_body(fields: dict[str, str], *, editing: bool = False) -> dict[str, Any]:
    """The key form as the JSON body the API takes (one validation for both). Editing, an empty field clears its
    setting (no limit, no expiry, every model); creating, it leaves the default."""
    body: dict[str, Any] = {"name": fields.get("name", "")}
    try:
        for name, kind in (("limit", float), ("rpm", int), ("tpm", int)):
            value = fields.get(name, "").strip()
            if value:
                body[name] = kind(value)
            elif editing:
                body[name] = None
    except ValueError:
        raise GatewayError(400, "Limits must be numbers") from None
    if fields.get("limit_reset") or editing:
        body["limit_reset"] = fields.get("limit_reset") or None
    if fields.get("expires_at", "").strip() or editing:
        body["expires_at"] = fields.get("expires_at", "").strip() or None
    models = [m.strip() for m in fields.get("allowed_models", "").replace("\n", ",").split(",") if m.strip()]
    if models or editing:
        body["allowed_models"] = models or None
    if fields.get("priority"):
        body["priority"] = fields["priority"]
    if fields.get("management") == "on" and not editing:
        body["is_management_key"] = True
    return body


def _origin(url: str) -> str:
    """scheme://host[:port] of a checked callback URL, as a CSP source."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = parts.query + ("&" if parts.query else "") + urlencode(params)
    return urlunsplit(parts._replace(query=query))


def _capacity(used: dict[tuple[str, str], int] | None, scope: str, rpm: int | None, tpm: int | None
              ) -> list[dict[str, Any]]:
    """This minute's use of each configured limit of a scope: [{kind, used (None when unknown), limit, share}]."""
    out = []
    for kind, limit in (("rpm", rpm), ("tpm", tpm)):
        if limit:
            count = None if used is None else used.get((scope, kind), 0)
            out.append({"kind": kind, "used": count, "limit": limit,
                        "share": None if count is None else min(100, round(100 * count / limit))})
    return out


def _condition_text(condition: RouteConditionConfig) -> str:
    """A route condition as one line: "prompt_tokens gt 1000 and header.x-tier eq 'gold' → big" (or "→ block")."""
    tests = []
    for check in condition.checks:
        subject = check.subject if check.field is None else f"{check.subject}.{check.field}"
        tests += [f"{subject} {test.op}" + ("" if test.op == "exists" else f" {test.operand!r}")
                  for test in check.tests]
    outcome = "block" + (f" ({condition.message})" if condition.message else "") if condition.block \
        else str(condition.target)
    return f"{' and '.join(tests) or 'always'} → {outcome}"


def _percentile(ordered: list[int], share: float) -> int | None:
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else None


def _csv_safe(value: Any) -> Any:
    """A cell a spreadsheet will not run as a formula (a model or app name may start with = + - @)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _usd(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "$0.00"
    if abs(value) < 0.000001:
        return "<$0.000001"  # not "$0.000000", which reads as free
    text = f"{value:,.6f}" if abs(value) < 0.01 else f"{value:,.4f}" if abs(value) < 100 else f"{value:,.2f}"
    whole, _, fraction = text.partition(".")  # a single request often costs a fraction of a cent: keep its digits,
    return f"${whole}.{fraction.rstrip('0').ljust(2, '0')}"  # but not trailing zeros ($5.00, not $5.0000)


def _plain_number(value: float | None) -> str:
    """A number for a form field: never in exponent form ("0.00001", not "1e-05"), no trailing zeros."""
    if value is None:
        return ""
    return f"{value:.10f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "—"
