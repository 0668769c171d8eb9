"""Base64 media reach each upstream in the form it accepts, whatever spelling the client used."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.conftest import MASTER_KEY

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
# The VMSRouter documentation's own sample image: a PNG, base64 without its padding.
DOCS_SAMPLE = ("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAIAQMAAAD+wSzIAAAABlBMVEX///+/v7+jQ3Y5AAAADklEQVQI12P4AIX8EAgALgAD/aNpbtEAAAA"
               "ASUVORK5CYII")
PNG = base64.b64decode(DOCS_SAMPLE + "=" * (-len(DOCS_SAMPLE) % 4))
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def post(gateway, model: str, part: dict) -> httpx.Response:
    return httpx.post(gateway.url + "/api/v1/chat/completions", headers=AUTH, timeout=20, json={
        "model": model, "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}]})


def canonical(data: str) -> bytes:
    assert len(data) % 4 == 0, data
    return base64.b64decode(data, validate=True)


@pytest.mark.parametrize("spelling", [
    DOCS_SAMPLE,  # unpadded
    base64.b64encode(PNG).decode()[:40] + "\n" + base64.b64encode(PNG).decode()[40:],  # wrapped
    base64.b64encode(PNG).decode().replace("+", "%2B").replace("/", "%2F"),  # percent-encoded
])
def test_images_reach_anthropic_as_padded_base64(gateway, fake_anthropic, spelling: str) -> None:
    resp = post(gateway, "anthropic/claude-sonnet-4", {"type": "image_url",
                                                       "image_url": {"url": f"data:image/png;base64,{spelling}"}})
    assert resp.status_code == 200, resp.text
    block = fake_anthropic.last.json["messages"][0]["content"][1]
    assert block["source"]["type"] == "base64" and block["source"]["media_type"] == "image/png"
    assert canonical(block["source"]["data"]) == PNG


def test_raw_base64_pdf_reaches_openai_as_a_data_url(gateway, fake_openai) -> None:
    raw = base64.b64encode(PDF).decode()
    resp = post(gateway, "openai/gpt-4o-mini", {"type": "file", "file": {"filename": "a.pdf", "file_data": raw}})
    assert resp.status_code == 200, resp.text
    sent = fake_openai.last.json["messages"][0]["content"][1]["file"]
    assert sent == {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{raw}"}
    # A data URL is left as it is.
    resp = post(gateway, "openai/gpt-4o-mini", {"type": "file", "file": {"filename": "a.pdf",
                                                                         "file_data": f"data:application/pdf;base64,{raw}"}})
    assert fake_openai.last.json["messages"][0]["content"][1]["file"]["file_data"] == \
        f"data:application/pdf;base64,{raw}"


def test_raw_unpadded_pdf_reaches_anthropic_padded(gateway, fake_anthropic) -> None:
    raw = base64.b64encode(PDF).decode().rstrip("=")
    assert len(raw) % 4  # really unpadded
    resp = post(gateway, "anthropic/claude-sonnet-4", {"type": "file", "file": {"filename": "a.pdf",
                                                                                "file_data": raw}})
    assert resp.status_code == 200, resp.text
    [block] = [b for b in fake_anthropic.last.json["messages"][0]["content"] if b["type"] == "document"]
    assert block["source"]["media_type"] == "application/pdf"
    assert canonical(block["source"]["data"]) == PDF


def test_invalid_base64_is_a_400(gateway, fake_anthropic) -> None:
    resp = post(gateway, "anthropic/claude-sonnet-4", {"type": "image_url",
                                                       "image_url": {"url": "data:image/png;base64,***not base64"}})
    assert resp.status_code == 400 and "base64" in resp.json()["error"]["message"]
    assert not fake_anthropic.requests
