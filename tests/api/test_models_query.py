"""GET /api/v1/models' paging, filters and sorts, and /models/count, as OpenRouter serves them (issue 18).

The openrouter SDK sends offset=0&limit=500 on every `models.list` and asks for the next page while a page is full:
a gateway that ignores `limit` makes its page iteration endless. Filters are checked against a configuration whose
models differ in every filtered figure.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from openrouter import OpenRouter

from tests.conftest import MASTER_KEY, GatewayServer
from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.openai_fake import FakeOpenAI

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
DAY = 86400
NOW = int(time.time())


def model(model_id: str, prompt: float, completion: float, context: int, age_days: int, **extra: object) -> dict:
    return {"id": model_id, "upstream": model_id.split("/", 1)[1], "name": model_id.split("/", 1)[1].title(),
            "pricing": {"prompt": prompt, "completion": completion}, "context_length": context,
            "created": NOW - age_days * DAY, **extra}


@pytest.fixture(scope="module")
def gw(fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, tmp_path_factory) -> Iterator[GatewayServer]:
    workdir = tmp_path_factory.mktemp("models-query")
    config = {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data")},
        "providers": [
            {"name": "private", "type": "openai", "base_url": fake_openai.base_url + "/v1",
             "api_key": fake_openai.api_key, "data_collection": "deny", "models": [
                 model("acme/tiny", 0.1, 0.2, 8000, 400, tokenizer="Llama"),
                 model("acme/huge", 5.0, 15.0, 200000, 3, input_modalities=["text", "image"],
                       supported_parameters=["tools", "temperature", "max_tokens", "verbosity"]),
                 model("other/middle", 1.0, 2.0, 32000, 40),
             ]},
            {"name": "claude", "type": "anthropic", "base_url": fake_anthropic.base_url + "/v1",
             "api_key": fake_anthropic.api_key, "models": [
                 model("anthropic/claude-sonnet-4", 3.0, 15.0, 200000, 100, tokenizer="Claude")]},
        ],
    }
    proc = GatewayServer(config, workdir).start()
    yield proc
    proc.stop()


def ids(gw: GatewayServer, **params: object) -> list[str]:
    resp = httpx.get(gw.url + "/api/v1/models", headers=AUTH, params=params)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["total_count"] >= len(body["data"])
    return [m["id"] for m in body["data"]]


ALL = ["acme/huge", "acme/tiny", "anthropic/claude-sonnet-4", "other/middle"]


def test_the_sdks_page_iteration_visits_every_model_once(gw) -> None:
    with OpenRouter(api_key=MASTER_KEY, server_url=gw.url + "/api/v1") as client:
        page = client.models.list(limit=2)
        seen, sizes = [], []
        while page is not None:
            assert len(sizes) < 3, "the page iteration does not end"
            assert page.result.total_count == 4
            seen += [m.id for m in page.result.data]
            sizes.append(len(page.result.data))
            page = page.next()
    assert seen == ALL
    assert sizes == [2, 2, 0]  # the second page is full, so the SDK asks once more and gets an empty page


def test_offset_limit_and_the_next_link(gw) -> None:
    body = httpx.get(gw.url + "/api/v1/models", headers=AUTH, params={"limit": 3, "q": ""}).json()
    assert [m["id"] for m in body["data"]] == ALL[:3] and body["total_count"] == 4
    nxt = body["links"]["next"]
    assert nxt.startswith("/api/v1/models?") and "offset=3" in nxt and "limit=3" in nxt
    rest = httpx.get(gw.url + nxt, headers=AUTH).json()
    assert [m["id"] for m in rest["data"]] == ALL[3:] and rest["links"]["next"] is None
    assert ids(gw, offset=1) == ALL[1:]  # an offset alone: everything after it
    assert ids(gw, offset=10, limit=5) == []
    plain = httpx.get(gw.url + "/api/v1/models", headers=AUTH).json()
    assert [m["id"] for m in plain["data"]] == ALL and plain["links"]["next"] is None


@pytest.mark.parametrize("params,expected", [
    ({"q": "MIDDLE"}, ["other/middle"]),
    ({"q": "acme"}, ["acme/huge", "acme/tiny"]),
    ({"context": 100000}, ["acme/huge", "anthropic/claude-sonnet-4"]),
    ({"min_price": 1, "max_price": 3}, ["anthropic/claude-sonnet-4", "other/middle"]),
    ({"max_price": "0.1"}, ["acme/tiny"]),
    ({"min_output_price": 15}, ["acme/huge", "anthropic/claude-sonnet-4"]),
    ({"max_output_price": 2}, ["acme/tiny", "other/middle"]),
    ({"model_authors": "acme,ANTHROPIC"}, ["acme/huge", "acme/tiny", "anthropic/claude-sonnet-4"]),
    ({"providers": "claude"}, ["anthropic/claude-sonnet-4"]),
    ({"providers": "openai"}, ["acme/huge", "acme/tiny", "other/middle"]),  # a provider type names its connections
    ({"zdr": "true"}, ["acme/huge", "acme/tiny", "other/middle"]),
    ({"input_modalities": "image,text"}, ["acme/huge", "anthropic/claude-sonnet-4"]),  # the catalog's Claude: images
    ({"supported_parameters": "tools,verbosity"}, ["acme/huge"]),
    ({"arch": "claude"}, ["anthropic/claude-sonnet-4"]),
    ({"min_age_days": 30, "max_age_days": 200}, ["anthropic/claude-sonnet-4", "other/middle"]),
    ({"category": "programming"}, []),  # no model here has a use-case category: none matches
    ({"min_intelligence_index": 10}, []),
    ({"q": "acme", "context": 100000}, ["acme/huge"]),  # filters combine
])
def test_filters(gw, params, expected) -> None:
    assert ids(gw, **params) == expected
    count = httpx.get(gw.url + "/api/v1/models/count", headers=AUTH, params=params)
    assert count.status_code == 200 and count.json() == {"data": {"count": len(expected)}}


@pytest.mark.parametrize("sort,expected", [
    ("newest", ["acme/huge", "other/middle", "anthropic/claude-sonnet-4", "acme/tiny"]),
    ("pricing-low-to-high", ["acme/tiny", "other/middle", "anthropic/claude-sonnet-4", "acme/huge"]),
    ("pricing-high-to-low", ["acme/huge", "anthropic/claude-sonnet-4", "other/middle", "acme/tiny"]),
    ("context-high-to-low", ["acme/huge", "anthropic/claude-sonnet-4", "other/middle", "acme/tiny"]),
    ("intelligence-high-to-low", ALL),  # no scores here: the default order
])
def test_sorts(gw, sort, expected) -> None:
    assert ids(gw, sort=sort) == expected
    assert ids(gw, sort=sort, limit=2, offset=1) == expected[1:3]


def test_the_sdk_sends_filters_and_counts(gw) -> None:
    with OpenRouter(api_key=MASTER_KEY, server_url=gw.url + "/api/v1") as client:
        listing = client.models.list(q="acme", sort="pricing-high-to-low", max_price=10.0)
        assert [m.id for m in listing.result.data] == ["acme/huge", "acme/tiny"]
        assert client.models.count().data.count == 4


@pytest.mark.parametrize("params,field", [
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "ten"}, "limit"), ({"offset": -1}, "offset"),
    ({"offset": "1e3"}, "offset"), ({"context": "big"}, "context"), ({"min_price": "nan"}, "min_price"),
    ({"max_price": "-1"}, "max_price"), ({"max_price": "inf"}, "max_price"), ({"sort": "random"}, "sort"),
    ({"zdr": "maybe"}, "zdr"), ({"min_age_days": "99999999999999999999999"}, None),
])
def test_invalid_query_parameters_are_400s_naming_them(gw, params, field) -> None:
    for path in ("/api/v1/models", "/api/v1/models/count"):
        resp = httpx.get(gw.url + path, headers=AUTH, params=params)
        if field is None:  # a huge but valid number: an answer, not an error
            assert resp.status_code == 200, resp.text
            continue
        assert resp.status_code == 400, (params, resp.text)
        error = resp.json()["error"]
        assert error["code"] == 400 and field in error["message"]
