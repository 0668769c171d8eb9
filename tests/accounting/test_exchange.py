"""The generation record an Exchange leaves: every column in its place, timestamps and JSON as the store keeps them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from crossroads.accounting.exchange import Exchange
from crossroads.canonical import Usage
from crossroads.catalog import ModelSpec, Pricing
from crossroads.config import ConnectionConfig
from crossroads.gate.auth import Principal
from crossroads.providers.http import UpstreamClient
from crossroads.providers.registry import make_adapter
from crossroads.routing.registry import Connection
from crossroads.store.rows import GENERATION_COLUMNS, GenerationRow, KeyRow, from_record, to_record, utc_text


def exchange(**headers: bytes) -> Exchange:
    key = KeyRow(hash="k" * 64, name="test", label="sk-or-v1-kkk...kkk")
    model = ModelSpec(id="vendor/model", upstream="model-upstream",
                      pricing=Pricing(prompt=1e-6, completion=2e-6))
    config = ConnectionConfig(name="conn-a", type="anthropic", base_url="http://127.0.0.1:9")
    connection = Connection(config, make_adapter(config), UpstreamClient(5.0))
    return Exchange("gen-1-abc", Principal(kind="key", key=key), model, connection,
                    stream=True, headers={k.replace("_", "-").encode(): v for k, v in headers.items()},
                    user="end-user", prompt_estimate=50)


def test_every_column_lands_in_its_field() -> None:
    before = datetime.now(UTC)
    ex = exchange(user_agent=b"sdk/1.0", http_referer=b"https://app.example", x_title=b"My App")
    ex.api_type = "messages"
    ex.model_id = "route-model"
    ex.dropped = ["logit_bias"]
    ex.events.append({"type": "transform", "name": "middle-out"})
    # exact binary fractions, so the milliseconds are exact
    ex.upstream_started = ex.started + 0.25
    ex.first_token = ex.started + 0.5
    ex.upstream_ended = ex.started + 1.0
    ex.usage = Usage(prompt_tokens=100, completion_tokens=40, reasoning_tokens=7, cached_tokens=20,
                     cache_write_tokens=5, seen=True)
    ex.upstream_model = "model-upstream-2025"
    ex.upstream_id = "msg_1"
    ex.cancelled = True
    ex.status = 499
    ex.error = "client went away"
    ex.finish_reason, ex.native_finish_reason = "stop", "end_turn"
    ex.attempt(500, "boom")
    record = ex.to_record()
    assert len(record) == len(GENERATION_COLUMNS)
    row = from_record(record)
    assert before - timedelta(seconds=1) <= row.created_at <= datetime.now(UTC) + timedelta(seconds=1)
    assert (row.id, row.key_hash, row.model, row.provider_name, row.provider_type) == (
        "gen-1-abc", "k" * 64, "route-model", "conn-a", "anthropic")
    assert (row.upstream_model, row.upstream_id, row.api_type, row.streamed, row.cancelled) == (
        "model-upstream-2025", "msg_1", "messages", True, True)
    assert (row.status, row.error, row.finish_reason, row.native_finish_reason) == (
        499, "client went away", "stop", "end_turn")
    assert (row.tokens_prompt, row.tokens_completion, row.tokens_reasoning, row.tokens_cached,
            row.tokens_cache_write) == (100, 40, 7, 20, 5)
    assert row.cost == pytest.approx(100 * 1e-6 + 40 * 2e-6)
    assert row.generation_time_ms == 750 and row.ttft_ms == 250 and row.latency_ms >= 0
    assert (row.http_referer, row.app_title, row.user, row.user_agent) == (
        "https://app.example", "My App", "end-user", "sdk/1.0")
    assert [a["status"] for a in row.provider_responses] == [500]
    assert row.provider_responses[0]["error"] == "boom"
    assert row.events == [{"type": "dropped_field", "field": "logit_bias"},
                          {"type": "transform", "name": "middle-out"}]


def test_a_quiet_request_leaves_empty_json_and_no_timings() -> None:
    row = from_record(exchange().to_record())
    assert row.provider_responses == [] and row.events == []
    assert row.generation_time_ms is None and row.ttft_ms is None
    assert (row.http_referer, row.app_title, row.user_agent) == (None, None, None)
    assert row.model == "vendor/model" and row.upstream_model == "model-upstream"


def test_record_round_trip_keeps_the_instant() -> None:
    created = datetime(2025, 3, 12, 20, 0, 0, 1, tzinfo=UTC)
    row = GenerationRow(id="g", created_at=created, key_hash=None, model="m", provider_name=None,
                        provider_type=None, upstream_model=None, upstream_id=None,
                        provider_responses=[{"status": 200}])
    record = to_record(row)
    assert record[GENERATION_COLUMNS.index("created_at")] == "2025-03-12 20:00:00.000001"
    assert from_record(record) == row


def test_utc_text_formats_like_the_store() -> None:
    now = time.time()
    text = utc_text(now)
    assert len(text) == 26 and text[19] == "."
    stamped = datetime.fromisoformat(text).replace(tzinfo=UTC)
    assert abs(stamped - datetime.fromtimestamp(now, UTC)) <= timedelta(microseconds=1)  # truncated, not rounded
    # the cached date part is renewed when the second changes
    assert utc_text(now + 86400.5)[:19] == datetime.fromtimestamp(now + 86400.5, UTC).strftime("%Y-%m-%d %H:%M:%S")
