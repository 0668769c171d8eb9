"""The dashboard for a company (issue 16) over HTTP: people sign in with email and password, see the workspaces they
belong to through the switcher, and each role sees and does what it may: a member only their own keys and activity,
a viewer reads, an owner invites by a one-time link, changes roles and budgets. Nobody sees another workspace's keys,
records or models. tests/browser/test_members_browser.py drives the same pages in Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from html import unescape

import httpx
import pytest

from tests.conftest import MASTER_KEY, GatewayProcess
from tests.team import PASSWORD, api, ok, start_company


@pytest.fixture(scope="module")
def company(fake_openai, tmp_path_factory):
    proc, world = start_company(fake_openai, tmp_path_factory.mktemp("company"))
    yield proc, world
    proc.stop()


@contextmanager
def person(gw: GatewayProcess, email: str, password: str = PASSWORD) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=15) as client:
        resp = client.post("/signin", data={"email": email, "password": password})
        assert resp.status_code == 303, resp.text[:500]
        yield client


@contextmanager
def master(gw: GatewayProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.url, timeout=15) as client:
        assert client.post("/signin", data={"key": MASTER_KEY}).status_code == 303
        yield client


def csrf(client: httpx.Client, path: str = "/") -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert match
    return match.group(1)


def post(client: httpx.Client, path: str, **fields: str) -> httpx.Response:
    return client.post(path, data={"csrf": csrf(client), **fields})


def switcher(html: str) -> list[str]:
    form = html[html.index('id="workspace-switch"'):]
    return re.findall(r"<option value=\"[^\"]*\"[^>]*>([^<]+)</option>", form[:form.index("</select>")])


def test_password_sign_in(company) -> None:
    gw, _ = company
    with httpx.Client(base_url=gw.url, timeout=15) as client:
        for email, password in (("mo@alpha.test", "wrong password"), ("nobody@alpha.test", PASSWORD)):
            refused = client.post("/signin", data={"email": email, "password": password})
            assert refused.status_code == 401 and "Wrong email or password." in refused.text
            assert "set-cookie" not in refused.headers
        page = client.get("/signin")
        assert 'name="email"' in page.text and 'name="key"' in page.text
    with person(gw, "Mo@Alpha.test") as client:  # the email's case does not matter
        home = client.get("/")
        assert home.status_code == 200 and "mo@alpha.test · member" in unescape(home.text)
        assert switcher(home.text) == ["alpha"]
        signed_out = client.post("/signout", data={"csrf": csrf(client)})
        assert signed_out.status_code == 303 and client.get("/").status_code == 303


def test_a_member_sees_only_their_own_keys_and_records_and_their_workspace_models(company) -> None:
    gw, world = company
    keys, generations = world["keys"], world["generations"]
    with person(gw, "mo@alpha.test") as client:
        page = client.get("/keys").text
        assert "mo-key" in page and "alpha-ops" not in page and "bo-key" not in page
        assert "alpha / dev" in page and "mo@alpha.test" in page
        activity = client.get("/activity").text
        assert generations["mo-key"] in activity and "bo-key" not in activity and "alpha-ops" not in activity
        assert generations["alpha-ops"] not in activity and generations["bo-key"] not in activity
        csv_rows = client.get("/activity.csv").text
        assert keys["mo-key"]["hash"] in csv_rows and keys["bo-key"]["hash"] not in csv_rows
        assert client.get(f"/activity/view?id={generations['mo-key']}").status_code == 200
        for other in ("alpha-ops", "bo-key"):
            assert client.get(f"/activity/view?id={generations[other]}").status_code == 404
        models = client.get("/models").text
        assert "alpha/secret-model" in models and "openai/gpt-4o-mini" in models
        assert "beta/secret-model" not in models
        connections = client.get("/connections").text
        assert "alpha-only" in connections and "beta-only" not in connections
        overview = client.get("/")
        assert overview.status_code == 200 and "alpha-ops" not in overview.text
        # Another workspace, another person's key, the gateway's credits: not theirs.
        beta_id = ok(api(gw, "GET", "/workspaces/beta"))["data"]["id"]
        assert post(client, "/workspace", workspace=beta_id, next="/keys").status_code == 404
        assert "bo-key" not in client.get("/keys").text
        for action in ("disable", "delete"):
            assert post(client, "/keys/update", hash=keys["alpha-ops"]["hash"], action=action).status_code == 404
        assert client.get(f"/keys/edit?hash={keys['alpha-ops']['hash']}").headers.get("location") == "/keys"
        assert client.get("/credits").status_code == 403
        assert ">Credits</a>" not in client.get("/").text
        # Members and budgets: readable, nothing to change.
        members = client.get("/members").text
        assert "ann@alpha.test" in members and "bo@beta.test" not in members and "Invite someone" not in members
        assert post(client, "/members/invite", email="x@alpha.test", role="member").status_code == 403
        budgets = client.get("/budgets").text
        assert "mo@alpha.test" in budgets and "vi@alpha.test" not in budgets and 'action="/budgets"' not in budgets
    assert ok(api(gw, "GET", f"/keys/{keys['alpha-ops']['hash']}"))["data"]["disabled"] is False


def test_a_member_makes_their_own_keys_within_their_budget(company) -> None:
    gw, _ = company
    ok(api(gw, "PATCH", "/workspaces/alpha/members/mo@alpha.test", json={"budget": {"limit": 2}}))
    with person(gw, "mo@alpha.test") as client:
        made = post(client, "/keys", name="mo-second", environment="prod")
        assert made.status_code == 303
        shown = client.get("/keys").text
        new_key = re.search(r'aria-label="New API key" readonly value="([^"]+)"', shown).group(1)
        assert "mo-second" in shown and "alpha / prod" in shown
        over = post(client, "/keys", name="too-big", limit="5")
        assert over.status_code == 400 and "member" in over.text and "budget" in over.text
        management = post(client, "/keys", name="sneaky", management="on")
        assert management.status_code == 403 and "management keys" in management.text
    data = ok(api(gw, "GET", "/key", new_key))["data"]
    listed = {k["name"]: k for k in ok(api(gw, "GET", "/keys?workspace=alpha"))["data"]}
    assert listed["mo-second"]["creator_user_id"] is not None and data["label"]
    assert "sneaky" not in listed and "too-big" not in listed


def test_a_viewer_reads_the_workspace_and_changes_nothing(company) -> None:
    gw, world = company
    with person(gw, "vi@alpha.test") as client:
        page = client.get("/keys").text
        assert "alpha-ops" in page and "mo-key" in page and "bo-key" not in page
        assert "Create a key" not in page and "read only" in page
        assert post(client, "/keys", name="nope").status_code == 403
        assert post(client, "/keys/update", hash=world["keys"]["mo-key"]["hash"], action="disable").status_code == 404
        activity = client.get("/activity").text
        assert world["generations"]["alpha-ops"] in activity and world["generations"]["bo-key"] not in activity
        assert post(client, "/budgets", level="member", target="x", limit="1").status_code == 403


def test_an_owner_invites_by_a_one_time_link(company) -> None:
    gw, _ = company
    with person(gw, "ann@alpha.test") as owner:
        assert "Invite someone" in owner.get("/members").text
        assert post(owner, "/members/invite", email="new@alpha.test", role="admin", limit="3",
                    limit_reset="monthly").status_code == 303
        shown = owner.get("/members").text
        link = unescape(re.search(r'aria-label="Invitation link" readonly value="([^"]+)"', shown).group(1))
        assert "new@alpha.test" in shown  # waiting
        assert "Invitation link" not in owner.get("/members").text  # shown once
    path = link[len(gw.url):]
    token = path.split("token=", 1)[1]
    with httpx.Client(base_url=gw.url, timeout=15) as newcomer:
        page = newcomer.get(path)
        assert page.status_code == 200 and "Join alpha" in page.text and "Choose a password" in page.text
        mismatch = newcomer.post("/invite", data={"token": token, "password": "a long password", "confirm": "other"})
        assert mismatch.status_code == 400
        joined = newcomer.post("/invite", data={"token": token, "password": "a long password",
                                                "confirm": "a long password"})
        assert joined.status_code == 303 and "crossroads_session=" in joined.headers["set-cookie"]
        home = newcomer.get("/")
        assert "new@alpha.test · admin" in unescape(home.text)
        assert newcomer.get(path).status_code == 404  # the link works once
    members = {m["email"]: m for m in ok(api(gw, "GET", "/workspaces/alpha/members"))["data"]}
    assert members["new@alpha.test"]["role"] == "admin" and members["new@alpha.test"]["budget"]["limit"] == 3
    with person(gw, "new@alpha.test", "a long password") as admin:
        # An admin cannot make owners, nor unmake them; an owner cannot leave the workspace without an owner.
        user_of = {m["email"]: m["user_id"] for m in members.values()}
        assert post(admin, "/members/update", user=user_of["vi@alpha.test"], role="owner",
                    action="role").status_code == 403
        assert post(admin, "/members/update", user=user_of["ann@alpha.test"], role="member",
                    action="role").status_code == 403
        assert post(admin, "/members/update", user=user_of["vi@alpha.test"], role="member",
                    action="role").status_code == 303
    with person(gw, "ann@alpha.test") as owner:
        last = post(owner, "/members/update", user=user_of["ann@alpha.test"], role="admin", action="role")
        assert last.status_code == 409 and "at least one owner" in last.text
        owns = post(owner, "/members/update", user=user_of["mo@alpha.test"], action="remove")
        assert owns.status_code == 409 and "API key" in owns.text
        assert post(owner, "/members/update", user=user_of["vi@alpha.test"], role="viewer",
                    action="role").status_code == 303
    roles = {m["email"]: m["role"] for m in ok(api(gw, "GET", "/workspaces/alpha/members"))["data"]}
    assert roles["vi@alpha.test"] == "viewer" and roles["ann@alpha.test"] == "owner"


def test_an_invitation_to_an_existing_person_needs_their_password(company) -> None:
    gw, _ = company
    with person(gw, "ann@alpha.test") as owner:
        assert post(owner, "/members/invite", email="bo@beta.test", role="viewer").status_code == 303
        link = unescape(re.search(r'aria-label="Invitation link" readonly value="([^"]+)"',
                                  owner.get("/members").text).group(1))
    token = link.split("token=", 1)[1]
    with httpx.Client(base_url=gw.url, timeout=15) as bo:
        assert "Your password" in bo.get(link[len(gw.url):]).text
        assert bo.post("/invite", data={"token": token, "password": "not it"}).status_code == 401
        assert bo.post("/invite", data={"token": token, "password": PASSWORD}).status_code == 303
        assert switcher(bo.get("/").text) == ["alpha", "beta"]
        # Each workspace shows its own keys, with bo's role there.
        alpha_id = ok(api(gw, "GET", "/workspaces/alpha"))["data"]["id"]
        beta_id = ok(api(gw, "GET", "/workspaces/beta"))["data"]["id"]
        assert post(bo, "/workspace", workspace=beta_id, next="/keys").headers["location"] == "/keys"
        assert "bo-key" in bo.get("/keys").text
        assert post(bo, "/workspace", workspace=alpha_id, next="/keys").status_code == 303
        alpha_keys = bo.get("/keys").text
        assert "alpha-ops" in alpha_keys and "bo-key" not in alpha_keys and "bo@beta.test · viewer" in unescape(
            bo.get("/").text)


def test_owners_set_budgets_within_the_workspace_budget(company) -> None:
    gw, _ = company
    ok(api(gw, "PATCH", "/workspaces/alpha", json={"budget": {"limit": 10, "limit_reset": "monthly"}}))
    environments = {e["name"]: e["id"] for e in ok(api(gw, "GET", "/workspaces/alpha"))["data"]["environments"]}
    with person(gw, "ann@alpha.test") as owner:
        page = owner.get("/budgets").text
        assert "workspace" in page and "$10.00" in page
        assert post(owner, "/budgets", level="environment", target=environments["dev"], limit="4",
                    limit_reset="daily").status_code == 303
        above = post(owner, "/budgets", level="environment", target=environments["prod"], limit="50")
        assert above.status_code == 400 and "workspace" in above.text
        alpha_id = ok(api(gw, "GET", "/workspaces/alpha"))["data"]["id"]
        assert post(owner, "/budgets", level="workspace", target=alpha_id, limit="99").status_code == 403
        beta_env = ok(api(gw, "GET", "/workspaces/beta"))["data"]["environments"][0]["id"]
        assert post(owner, "/budgets", level="environment", target=beta_env, limit="1").status_code == 404
    dev = next(e for e in ok(api(gw, "GET", "/workspaces/alpha"))["data"]["environments"] if e["name"] == "dev")
    assert dev["budget"]["limit"] == 4 and dev["budget"]["limit_reset"] == "daily"


def test_the_master_key_switches_between_all_workspaces(company) -> None:
    gw, world = company
    with master(gw) as client:
        home = client.get("/").text
        assert switcher(home)[0] == "All workspaces" and {"alpha", "beta", "default"} <= set(switcher(home))
        every = client.get("/keys").text
        assert "alpha-ops" in every and "bo-key" in every
        beta_id = ok(api(gw, "GET", "/workspaces/beta"))["data"]["id"]
        assert post(client, "/workspace", workspace=beta_id, next="/activity").headers["location"] == "/activity"
        beta_only = client.get("/keys").text
        assert "bo-key" in beta_only and "alpha-ops" not in beta_only
        assert world["generations"]["alpha-ops"] not in client.get("/activity").text
        assert "beta/secret-model" in client.get("/models").text and "alpha/secret" not in client.get("/models").text
        assert post(client, "/workspace", workspace="", next="/keys").status_code == 303
        assert "alpha-ops" in client.get("/keys").text
        assert client.get("/credits").status_code == 200


def test_a_members_management_key_follows_the_members_role(company) -> None:
    """A management key made for a member manages what the member's role allows, as it is now: an owner's the
    workspace; a member's its member's own keys (and reads the workspace); a viewer's reads only."""
    gw, world = company
    ok(api(gw, "POST", "/workspaces/beta/members", json={"email": "owner@beta.test", "role": "owner"}), 201)
    ok(api(gw, "POST", "/workspaces/beta/members", json={"email": "viewer@beta.test", "role": "viewer"}), 201)

    def management_key(email: str) -> str:
        return ok(api(gw, "POST", "/keys", json={"name": f"{email}-admin", "workspace": "beta", "member": email,
                                                 "is_management_key": True}), 201)["key"]

    owner_key, member_key, viewer_key = (management_key(e) for e in ("owner@beta.test", "bo@beta.test",
                                                                     "viewer@beta.test"))
    bo_hash = world["keys"]["bo-key"]["hash"]
    assert len(ok(api(gw, "GET", "/keys", owner_key))["data"]) >= 4
    # bo (a member): his own keys only, made as his, never a management key; other people's keys are not found.
    own = {k["name"] for k in ok(api(gw, "GET", "/keys", member_key))["data"]}
    assert "bo-key" in own and "owner@beta.test-admin" not in own and "viewer@beta.test-admin" not in own
    made = ok(api(gw, "POST", "/keys", member_key, json={"name": "bo-script", "workspace": "beta"}), 201)["data"]
    assert made["creator_user_id"] == ok(api(gw, "GET", f"/keys/{bo_hash}"))["data"]["creator_user_id"]
    assert api(gw, "POST", "/keys", member_key, json={"name": "x", "is_management_key": True}).status_code == 403
    owner_admin = next(k["hash"] for k in ok(api(gw, "GET", "/keys?workspace=beta"))["data"]
                       if k["name"] == "owner@beta.test-admin")
    assert api(gw, "GET", f"/keys/{owner_admin}", member_key).status_code == 404
    assert api(gw, "PATCH", f"/keys/{owner_admin}", member_key, json={"disabled": True}).status_code == 404
    assert api(gw, "PATCH", f"/keys/{made['hash']}", member_key, json={"disabled": True}).status_code == 200
    assert ok(api(gw, "GET", "/workspaces/beta", member_key))["data"]["name"] == "beta"  # reads the workspace
    refused = api(gw, "POST", "/workspaces/beta/members", member_key, json={"email": "z@beta.test", "role": "member"})
    assert refused.status_code == 403 and "a member" in refused.json()["error"]["message"]
    assert {r["key_hash"] for r in ok(api(gw, "GET", "/activity", member_key))["data"]} <= {bo_hash}
    # The viewer's key reads the whole workspace and changes nothing.
    every = {k["name"] for k in ok(api(gw, "GET", "/keys", viewer_key))["data"]}
    assert {"bo-key", "owner@beta.test-admin"} <= every
    assert api(gw, "POST", "/keys", viewer_key, json={"name": "x"}).status_code == 403
    assert api(gw, "DELETE", f"/keys/{bo_hash}", viewer_key).status_code == 403
    assert ok(api(gw, "GET", f"/generation?id={world['generations']['bo-key']}", viewer_key))["data"]
    # Roles are read as they are now.
    ok(api(gw, "PATCH", "/workspaces/beta/members/bo@beta.test", json={"role": "admin"}))
    assert "owner@beta.test-admin" in {k["name"] for k in ok(api(gw, "GET", "/keys", member_key))["data"]}
    ok(api(gw, "PATCH", "/workspaces/beta/members/bo@beta.test", json={"role": "member"}))
    # Another workspace stays out of reach whatever the role.
    alpha_gen = world["generations"]["alpha-ops"]
    for key in (owner_key, member_key, viewer_key):
        assert api(gw, "GET", f"/generation?id={alpha_gen}", key).status_code == 404
        assert api(gw, "GET", "/workspaces/alpha", key).status_code == 404


def test_a_key_an_app_gets_through_oauth_belongs_to_the_person_who_approved_it(company) -> None:
    gw, _ = company
    callback = "http://localhost:3000/callback"
    with person(gw, "mo@alpha.test") as client:
        page = client.get("/auth", params={"callback_url": callback})
        assert page.status_code == 200
        approved = client.post("/auth", data={"csrf": csrf(client, "/"), "callback_url": callback,
                                              "decision": "approve", "limit": "1"})
        assert approved.status_code == 303, approved.text[:300]
        code = approved.headers["location"].split("code=", 1)[1]
    exchanged = httpx.post(gw.url + "/api/v1/auth/keys", json={"code": code}, timeout=15).json()
    assert exchanged["user_id"].startswith("user-")
    data = ok(api(gw, "GET", "/key", exchanged["key"]))["data"]
    mo = next(m for m in ok(api(gw, "GET", "/workspaces/alpha/members"))["data"] if m["email"] == "mo@alpha.test")
    alpha = ok(api(gw, "GET", "/workspaces/alpha"))["data"]["id"]
    assert data["workspace_id"] == alpha and data["creator_user_id"] == mo["user_id"] and data["limit"] == 1
    with person(gw, "vi@alpha.test") as viewer:
        viewer.get("/auth", params={"callback_url": callback})
        refused = viewer.post("/auth", data={"csrf": csrf(viewer, "/"), "callback_url": callback,
                                             "decision": "approve"})
        assert refused.status_code == 403 and "viewer" in refused.text


def test_workspaces_and_environments_are_made_in_the_dashboard(company) -> None:
    gw, _ = company
    with master(gw) as client:
        assert "Create a workspace" in client.get("/budgets").text
        assert post(client, "/workspaces/new", name="gamma", limit="12", limit_reset="monthly").status_code == 303
        page = client.get("/budgets").text
        assert "gamma · " not in page and 'selected>gamma</option>' in page  # now looking at it
        assert "$12.00" in page and ">default<" in page
        again = post(client, "/workspaces/new", name="gamma")
        assert again.status_code == 409 and "exists already" in again.text
    gamma = ok(api(gw, "GET", "/workspaces/gamma"))["data"]
    assert gamma["budget"]["limit"] == 12 and [e["name"] for e in gamma["environments"]] == ["default"]
    with person(gw, "ann@alpha.test") as owner:
        assert "Create a workspace" not in owner.get("/budgets").text
        assert post(owner, "/workspaces/new", name="mine").status_code == 403
        assert post(owner, "/budgets/environment", name="staging", limit="1", limit_reset="daily").status_code == 303
        assert "staging" in owner.get("/budgets").text
        duplicate = post(owner, "/budgets/environment", name="staging")
        assert duplicate.status_code == 409
    with person(gw, "mo@alpha.test") as member:
        assert "Add an environment" not in member.get("/budgets").text
        assert post(member, "/budgets/environment", name="mine").status_code == 403
    staging = next(e for e in ok(api(gw, "GET", "/workspaces/alpha"))["data"]["environments"] if e["name"] == "staging")
    assert staging["budget"] == {"limit": 1.0, "limit_reset": "daily", "usage": 0.0, "limit_remaining": 1.0}
