"""A company's dashboard in Chromium (issue 16): each person signs in with email and password and sees only their
workspace's keys, records and models; an owner invites someone by a one-time link; the master key switches between
workspaces. tests/dashboard/test_dashboard_members.py makes the same checks over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import check_documents, screenshot, watch_documents
from tests.conftest import MASTER_KEY, GatewayProcess
from tests.team import PASSWORD, start_company


@pytest.fixture(scope="module")
def company(fake_openai, tmp_path_factory):
    proc, world = start_company(fake_openai, tmp_path_factory.mktemp("company-browser"))
    yield proc, world
    proc.stop()


@contextmanager
def fresh_page(browser) -> Iterator[object]:
    """A page in a context of its own: no cookie of anyone signed in before."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    documents = watch_documents(context)
    try:
        yield page
        check_documents(documents)
    finally:
        context.close()


def sign_in(page, gw: GatewayProcess, email: str, password: str = PASSWORD) -> None:
    page.goto(gw.url + "/")
    assert page.url.endswith("/signin")
    page.get_by_label("Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_title("Signed in")).to_contain_text(email)


def switcher(page) -> object:
    return page.get_by_role("combobox", name="Workspace")


def workspaces_offered(page) -> list[str]:
    return [text.strip() for text in switcher(page).locator("option").all_inner_texts()]


def key_names(page, gw: GatewayProcess) -> list[str]:
    page.goto(gw.url + "/keys")
    page.get_by_role("heading", name="API Keys").wait_for()
    return [text.split(" management")[0].strip()
            for text in page.locator("table.keys > tbody > tr > td:first-child").all_inner_texts()]


def model_ids(page, gw: GatewayProcess) -> list[str]:
    page.goto(gw.url + "/models")
    page.get_by_role("heading", name="Models").wait_for()
    return [text.strip().split("\n")[0].strip()
            for text in page.locator("main table > tbody > tr > td:first-child").all_inner_texts()]


def generation_link(page, generation_id: str) -> object:
    return page.locator(f'main table a[href="/activity/view?id={generation_id}"]')


def open_generation(page, gw: GatewayProcess, generation_id: str) -> int:
    resp = page.goto(gw.url + f"/activity/view?id={generation_id}")
    return resp.status


def test_members_see_only_their_own_workspace(page, browser, company) -> None:
    gw, world = company
    generations = world["generations"]

    # mo, a member of alpha.
    sign_in(page, gw, "mo@alpha.test")
    expect(page.get_by_title("Signed in")).to_have_text("mo@alpha.test · member")
    assert workspaces_offered(page) == ["alpha"]
    keys = key_names(page, gw)
    assert "mo-key" in keys and "alpha-ops" not in keys and "bo-key" not in keys
    mo_row = page.locator("table.keys > tbody > tr", has_text="mo-key")
    expect(mo_row).to_contain_text("alpha / dev")
    expect(mo_row).to_contain_text("mo@alpha.test")
    screenshot(page, "member-keys")

    page.get_by_role("link", name="Activity", exact=True).click()
    page.get_by_role("heading", name="Activity").wait_for()
    expect(generation_link(page, generations["mo-key"])).to_have_count(1)
    expect(generation_link(page, generations["bo-key"])).to_have_count(0)
    expect(generation_link(page, generations["alpha-ops"])).to_have_count(0)
    key_cells = [t.strip() for t in page.locator("main table > tbody > tr > td:nth-child(2)").all_inner_texts()]
    assert key_cells and set(key_cells) == {"mo-key"}
    generation_link(page, generations["mo-key"]).click()
    expect(page.get_by_role("heading", name="Generation")).to_contain_text(generations["mo-key"])
    for other in ("bo-key", "alpha-ops"):
        assert open_generation(page, gw, generations[other]) == 404
        expect(page.get_by_role("heading", name="Generation not found")).to_be_visible()

    models = model_ids(page, gw)
    assert "alpha/secret-model" in models and "openai/gpt-4o-mini" in models and "beta/secret-model" not in models

    # bo, a member of beta, in a browser context of his own.
    with fresh_page(browser) as bo:
        sign_in(bo, gw, "bo@beta.test")
        expect(bo.get_by_title("Signed in")).to_have_text("bo@beta.test · member")
        assert workspaces_offered(bo) == ["beta"]
        keys = key_names(bo, gw)
        assert "bo-key" in keys and "mo-key" not in keys and "alpha-ops" not in keys
        bo.get_by_role("link", name="Activity", exact=True).click()
        bo.get_by_role("heading", name="Activity").wait_for()
        expect(generation_link(bo, generations["bo-key"])).to_have_count(1)
        expect(generation_link(bo, generations["mo-key"])).to_have_count(0)
        for other in ("mo-key", "alpha-ops"):
            assert open_generation(bo, gw, generations[other]) == 404
            expect(bo.get_by_role("heading", name="Generation not found")).to_be_visible()
        models = model_ids(bo, gw)
        assert "beta/secret-model" in models and "alpha/secret-model" not in models


def test_an_owner_invites_a_viewer_who_joins_by_the_link(page, browser, company) -> None:
    gw, _ = company
    sign_in(page, gw, "ann@alpha.test")
    expect(page.get_by_title("Signed in")).to_have_text("ann@alpha.test · owner")
    page.get_by_role("link", name="Members", exact=True).click()
    page.get_by_role("heading", name="Invite someone").wait_for()
    page.get_by_label("Email", exact=True).fill("carol@alpha.test")
    page.get_by_label("Role", exact=True).select_option("viewer")
    page.get_by_role("button", name="Create invitation link").click()
    link_field = page.get_by_role("textbox", name="Invitation link")
    link = link_field.input_value()
    assert link.startswith(gw.url + "/invite?token=")
    waiting = page.locator("table", has=page.get_by_role("columnheader", name="Expires")).locator("tbody > tr")
    expect(waiting.filter(has_text="carol@alpha.test")).to_contain_text("viewer")
    screenshot(page, "members")

    with fresh_page(browser) as carol:
        carol.goto(link)
        carol.get_by_role("heading", name="Join alpha").wait_for()
        carol.get_by_label("Choose a password").fill("carol's long password")
        carol.get_by_label("The same password again").fill("carol's long password")
        carol.get_by_role("button", name="Join alpha").click()
        expect(carol.get_by_title("Signed in")).to_have_text("carol@alpha.test · viewer")
        assert workspaces_offered(carol) == ["alpha"]
        keys = key_names(carol, gw)
        assert "alpha-ops" in keys and "mo-key" in keys and "bo-key" not in keys
        expect(carol.get_by_role("heading", name="Create a key")).to_have_count(0)
        expect(carol.get_by_role("button", name="Create key")).to_have_count(0)

    page.reload()  # the link is shown once; carol is now a member, no longer waiting
    expect(page.get_by_role("textbox", name="Invitation link")).to_have_count(0)
    carol_row = page.locator("table.members > tbody > tr", has_text="carol@alpha.test")
    expect(carol_row.locator("td").nth(1)).to_have_text("viewer")


def test_the_master_key_switches_workspaces(page, company) -> None:
    gw, _ = company
    page.goto(gw.url + "/")
    page.get_by_label("Management key").fill(MASTER_KEY)
    page.get_by_role("button", name="Sign in with key").click()
    expect(page.get_by_title("Signed in")).to_contain_text("super-admin")
    offered = workspaces_offered(page)
    assert offered[0] == "All workspaces" and {"alpha", "beta"} <= set(offered)
    keys = key_names(page, gw)
    assert {"alpha-ops", "mo-key", "bo-key"} <= set(keys)

    with page.expect_navigation():  # the switcher submits on change
        switcher(page).select_option(label="beta")
    assert page.url.endswith("/keys")
    expect(switcher(page).locator("option:checked")).to_have_text("beta")
    names = [text.split(" management")[0].strip()
             for text in page.locator("table.keys > tbody > tr > td:first-child").all_inner_texts()]
    assert "bo-key" in names and "alpha-ops" not in names and "mo-key" not in names
    models = model_ids(page, gw)  # the choice holds on the other pages
    assert "beta/secret-model" in models and "alpha/secret-model" not in models

    with page.expect_navigation():
        switcher(page).select_option(label="All workspaces")
    assert page.url.endswith("/models")
    assert {"alpha-ops", "mo-key", "bo-key"} <= set(key_names(page, gw))
