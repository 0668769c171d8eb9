"""POST /api/v1/embeddings (issue 14) through a real gateway, with the official SDKs as clients, against fake OpenAI
and Gemini servers speaking their embeddings wire formats: shapes, both encodings, dimensions, routing and
fallback, credit limits, records and activity, and bad input."""

from __future__ import annotations

import base64
import struct
import time

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, GatewayServer
from tests.fakes.base import Fault, fake_vector

EMBED_PRICE = {"prompt": 0.02, "completion": 0}  # USD per 1M tokens
GEMINI_PRICE = {"prompt": 0.15, "completion": 0}
SMALL = "openai/text-embedding-3-small"
GEMINI = "google/gemini-embedding-001"


@pytest.fixture(scope="module")
def gw(fake_openai, fake_anthropic, fake_gemini, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("embeddings")
    openai_upstream = {"type": "openai", "base_url": fake_openai.base_url + "/v1", "api_key": fake_openai.api_key}
    config = {
        "server": {"host": "127.0.0.1", "master_key": MASTER_KEY, "data_dir": str(workdir / "data")},
        "routing": {"retries": 0, "breaker": {"failure_threshold": 1000000}},
        "accounting": {"flush_interval": 0.2},
        "providers": [
            {"name": "oai", **openai_upstream, "models": [
                {"id": SMALL, "upstream": "text-embedding-3-small", "context_length": 8191, "pricing": EMBED_PRICE,
                 "output_modalities": ["embeddings"]},
                {"id": "openai/gpt-4o-mini", "upstream": "gpt-4o-mini", "pricing": {"prompt": 1, "completion": 2}}]},
            # The same model on a second connection: a fallback when the first fails.
            {"name": "oai-backup", **openai_upstream, "models": [
                {"id": SMALL, "upstream": "text-embedding-3-small", "context_length": 8191, "pricing": EMBED_PRICE}]},
            {"name": "gem", "type": "gemini", "base_url": fake_gemini.base_url + "/v1beta",
             "api_key": fake_gemini.api_key,
             "models": [{"id": GEMINI, "upstream": "gemini-embedding-001", "context_length": 2048,
                         "pricing": GEMINI_PRICE}]},
            {"name": "ant", "type": "anthropic", "base_url": fake_anthropic.base_url + "/v1",
             "api_key": fake_anthropic.api_key,
             "models": [{"id": "anthropic/claude-sonnet-4", "upstream": "claude-sonnet-4-20250514",
                         "pricing": {"prompt": 3, "completion": 15}}]},
        ],
    }
    proc = GatewayServer(config, workdir).start()
    yield proc
    proc.stop()


def client(gw: GatewayServer, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gw.url + "/api/v1", max_retries=0)


def embed(gw: GatewayServer, key: str = MASTER_KEY, **body) -> httpx.Response:
    return httpx.post(gw.url + "/api/v1/embeddings", headers={"Authorization": f"Bearer {key}"}, json=body,
                      timeout=20)


def test_the_openai_sdk_gets_vectors_in_both_encodings(gw, fake_openai) -> None:
    texts = ["the quick brown fox", "jumps"]
    sdk = client(gw)
    floats = sdk.embeddings.create(model=SMALL, input=texts, encoding_format="float")
    assert [d.embedding for d in floats.data] == [fake_vector(t) for t in texts]
    assert [d.index for d in floats.data] == [0, 1] and floats.object == "list"
    assert floats.usage.prompt_tokens == 5 and floats.usage.total_tokens == 5
    extra = floats.model_dump()
    assert floats.model == SMALL and extra["provider"] in ("oai", "oai-backup") and extra["id"].startswith("gen-")
    assert extra["usage"]["cost"] == pytest.approx(5 * 0.02 / 1e6)
    sent = fake_openai.requests[-1]
    assert sent.path == "/v1/embeddings" and sent.json == {"model": "text-embedding-3-small", "input": texts,
                                                          "encoding_format": "float"}
    # The SDK's default asks for base64 and decodes it: the same vectors (as float32).
    default = sdk.embeddings.create(model=SMALL, input="the quick brown fox")
    assert fake_openai.requests[-1].json["encoding_format"] == "base64"
    assert default.data[0].embedding == pytest.approx(fake_vector("the quick brown fox"), abs=1e-6)
    raw = embed(gw, model=SMALL, input="jumps", encoding_format="base64").json()
    decoded = struct.unpack("<8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(fake_vector("jumps"), abs=1e-6)
    # Token ids go up as they are; `dimensions` too.
    ids = sdk.embeddings.create(model=SMALL, input=[[1, 2, 3], [4]], dimensions=4, encoding_format="float")
    assert len(ids.data) == 2 and len(ids.data[0].embedding) == 4 and ids.usage.prompt_tokens == 4
    assert fake_openai.requests[-1].json["input"] == [[1, 2, 3], [4]]


def test_gemini_embeds_through_batch_embed_contents(gw, fake_gemini) -> None:
    texts = ["first document", "second"]
    result = client(gw).embeddings.create(model=GEMINI, input=texts, dimensions=4, encoding_format="float",
                                          extra_body={"input_type": "search_document"})
    assert [d.embedding for d in result.data] == [fake_vector(t, 4) for t in texts]
    sent = fake_gemini.requests[-1]
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.json == {"requests": [
        {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": t}]}, "outputDimensionality": 4,
         "taskType": "RETRIEVAL_DOCUMENT"} for t in texts]}
    assert sent.headers.get("x-goog-api-key") == fake_gemini.api_key
    # Gemini reports no token count: about four characters a token, rounded up per input.
    assert result.usage.prompt_tokens == 4 + 2 and result.model_dump()["provider"] == "gem"
    as_base64 = client(gw).embeddings.create(model=GEMINI, input="x")
    assert as_base64.data[0].embedding == pytest.approx(fake_vector("x"), abs=1e-6)


def test_a_failing_connection_falls_back_to_the_next(gw, fake_openai) -> None:
    fake_openai.faults.append(Fault(status=500, message="embedding backend down"))
    answer = embed(gw, model=SMALL, input="hello", provider={"order": ["oai", "oai-backup"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["provider"] == "oai-backup"
    record = httpx.get(gw.url + f"/api/v1/generation?id={answer.json()['id']}",
                       headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    deadline = time.monotonic() + 5
    while record.status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        record = httpx.get(gw.url + f"/api/v1/generation?id={answer.json()['id']}",
                           headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    attempts = record.json()["data"]["provider_responses"]
    assert [a["status"] for a in attempts] == [500, 200]


def test_a_key_with_a_credit_limit_pays_for_its_embeddings(gw) -> None:
    created = httpx.post(gw.url + "/api/v1/keys", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                         json={"name": "rag", "limit": 1}, timeout=10).json()
    key, key_hash = created["key"], created["data"]["hash"]
    result = client(gw, key).embeddings.create(model=SMALL, input=["one two three four"], encoding_format="float")
    generation = result.model_dump()["id"]
    record = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        found = httpx.get(gw.url + f"/api/v1/generation?id={generation}", headers={"Authorization": f"Bearer {key}"},
                          timeout=10)
        if found.status_code == 200:
            record = found.json()["data"]
            break
        time.sleep(0.1)
    assert record is not None
    assert record["api_type"] == "embeddings" and record["tokens_prompt"] == 4 and record["tokens_completion"] == 0
    assert record["total_cost"] == pytest.approx(4 * 0.02 / 1e6)
    usage = httpx.get(gw.url + "/api/v1/key", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["data"]
    assert usage["usage"] == pytest.approx(4 * 0.02 / 1e6) and usage["limit_remaining"] < 1
    deadline = time.monotonic() + 5
    while True:  # the record reaches the database within the flush interval
        activity = httpx.get(gw.url + f"/api/v1/activity?api_key_hash={key_hash}",
                             headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10).json()["data"]
        if activity or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [(row["model"], row["requests"]) for row in activity] == [(SMALL, 1)]
    # A limit too small for the worst case is refused before anything goes upstream.
    tiny = httpx.post(gw.url + "/api/v1/keys", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                      json={"name": "tiny", "limit": 0.0000001}, timeout=10).json()["key"]
    refused = embed(gw, tiny, model=SMALL, input="a rather long text " * 20)
    assert refused.status_code == 402 and refused.json()["error"]["metadata"]["level"] == "key"


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": SMALL}, 400, "'input' is required"),
    ({"model": SMALL, "input": ""}, 400, "'input[0]' is empty"),
    ({"model": SMALL, "input": []}, 400, "'input' must be"),
    ({"model": SMALL, "input": ["a", [1, 2]]}, 400, "mixes"),
    ({"model": SMALL, "input": ["x"] * 2049}, 400, "at most 2048"),
    ({"model": SMALL, "input": [{"content": [{"type": "text", "text": "x"}]}]}, 400, "multimodal"),
    ({"model": SMALL, "input": "x", "dimensions": 0}, 400, "'dimensions'"),
    ({"model": SMALL, "input": "x", "encoding_format": "int8"}, 400, "'encoding_format'"),
    ({"model": SMALL, "input": "x", "stream": True}, 400, "'stream'"),
    ({"input": "x"}, 400, "'model' is required"),
    ({"model": "nobody/nothing", "input": "x"}, 404, "not found"),
    ({"model": "anthropic/claude-sonnet-4", "input": "x"}, 400, "no embeddings API"),
    ({"model": "openai/gpt-4o-mini", "input": "x"}, 400, "does not support embeddings"),
    ({"model": GEMINI, "input": ["x"] * 101}, 400, "at most 100"),
    ({"model": GEMINI, "input": [[1, 2]]}, 400, "token-id inputs"),
])
def test_bad_requests_get_clear_errors(gw, body, status, words) -> None:
    answer = embed(gw, **body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error["message"] and error["code"] == status


def test_the_openrouter_sdk_embeds(gw) -> None:
    from openrouter import OpenRouter

    with OpenRouter(api_key=MASTER_KEY, server_url=gw.url + "/api/v1") as sdk:
        result = sdk.embeddings.generate(model=SMALL, input=["hello world"], encoding_format="float")
    assert result.model == SMALL and result.data[0].embedding == fake_vector("hello world")
    assert result.usage.prompt_tokens == 2 and result.usage.cost == pytest.approx(2 * 0.02 / 1e6)


def test_the_credit_bound_holds_every_input_up_to_the_context() -> None:
    """The worst case of an embeddings request is its inputs' bytes, each capped at the model's context (each input
    is embedded on its own), and no completion."""
    from crossroads.accounting.exchange import estimate_prompt_tokens, worst_case_cost
    from crossroads.catalog import ModelSpec, Pricing

    model = ModelSpec(id="m", upstream="m", context_length=10, pricing=Pricing(prompt=1e-6, completion=5e-6))
    body = {"model": "m", "input": ["é" * 4, "x" * 50, [1, 2, 3]]}  # 8 bytes, 50 bytes (capped at 10), 3 ids
    worst = worst_case_cost(body, [(model, None)])
    assert worst.total == pytest.approx((8 + 10 + 3) * 1e-6) and worst.completion_price == 0
    assert estimate_prompt_tokens(body) == (4 // 4 + 1) + (50 // 4 + 1) + 3


def test_rate_limits_count_embedding_requests(gw) -> None:
    key = httpx.post(gw.url + "/api/v1/keys", headers={"Authorization": f"Bearer {MASTER_KEY}"},
                     json={"name": "rpm-1", "rpm": 1}, timeout=10).json()["key"]
    assert embed(gw, key, model=SMALL, input="one").status_code == 200
    limited = embed(gw, key, model=SMALL, input="two")
    assert limited.status_code == 429 and "retry-after" in limited.headers
