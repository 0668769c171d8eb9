"""A fast fake OpenAI-compatible upstream for the benchmark.

`python bench/upstream.py --port P` serves, on 127.0.0.1:

- `POST /v1/chat/completions`: a static chat completion, or, when the request body has `"stream": true`, a static SSE
  stream of 40 content chunks, a finish chunk, a usage chunk and `data: [DONE]` (OpenAI's chunk shape);
- `POST /v1/embeddings`: one 1536-dimension embedding (the size of OpenAI's text-embedding-3-small), whatever the
  input: a base64 string of little-endian float32s when the request asks `"encoding_format": "base64"` (what the
  openai Python and Node SDKs send by default), else a list of floats (OpenAI's default for a bare HTTP request);
  `dimensions` is ignored;
- `GET /v1/models` and `GET /health`: small static JSON;
- `GET /stats`: how many connections it accepted and requests it answered (so a benchmark can see whether a proxy
  reuses its upstream connections), and how many `bench-slow` streams were cut by the peer.

Two upstream model names misbehave on purpose (for bench/soak.py): `bench-fail-NNN` (any three-digit status, e.g.
`bench-fail-500`, `bench-fail-429`) answers chat completions with that status and an OpenAI-shaped error body, and
`bench-slow` streams its 40 chunks `SLOW_CHUNK_DELAY` seconds apart (so that a client can cancel mid-stream); a
`bench-slow` stream must be the last request on its connection until it ends (no pipelining behind it, which no
HTTP client does).

Everything it answers is precomputed bytes, and the HTTP/1.1 handling is a bare asyncio protocol on uvloop (keep-alive,
Content-Length bodies, no chunked request bodies), so it costs a few microseconds per request and is never what limits
a benchmark. It is a benchmark fixture, not an HTTP server to expose anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
import re
import signal
import struct

import orjson

MODEL = "bench-model"
CREATED = 1_700_000_000
STREAM_CHUNKS = 40

COMPLETION = orjson.dumps({
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": CREATED,
    "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Hello! This is a static benchmark answer from the fake upstream."},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52,
              "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}},
})


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> bytes:
    body: dict = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
                  "system_fingerprint": "fp_bench",
                  "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _stream_body() -> bytes:
    parts = [_chunk({"role": "assistant", "content": "tok0 "})]
    parts += [_chunk({"content": f"tok{i} "}) for i in range(1, STREAM_CHUNKS)]
    parts.append(_chunk({}, finish="stop"))
    parts.append(_chunk({}, usage={"prompt_tokens": 12, "completion_tokens": STREAM_CHUNKS,
                                   "total_tokens": 12 + STREAM_CHUNKS}, choices=False))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


STREAM = _stream_body()
SLOW_CHUNK_DELAY = 0.02  # seconds between two events of a `bench-slow` stream

EMBEDDING_DIMENSIONS = 1536
EMBEDDING_PROMPT_TOKENS = 8


def _vector() -> list[float]:
    """A fixed unit vector of float32 values (an embedding model computes in float32, and answers so)."""
    rng = random.Random(14)
    raw = [rng.gauss(0.0, 1.0) for _ in range(EMBEDDING_DIMENSIONS)]
    norm = sum(v * v for v in raw) ** 0.5
    return list(struct.unpack(f"<{EMBEDDING_DIMENSIONS}f", struct.pack(f"<{EMBEDDING_DIMENSIONS}f",
                                                                        *(v / norm for v in raw))))


def _embeddings_body(embedding: list[float] | str) -> bytes:
    return orjson.dumps({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
        "model": MODEL,
        "usage": {"prompt_tokens": EMBEDDING_PROMPT_TOKENS, "total_tokens": EMBEDDING_PROMPT_TOKENS},
    })


VECTOR = _vector()
EMBEDDINGS_FLOAT = _embeddings_body(VECTOR)
EMBEDDINGS_BASE64 = _embeddings_body(
    base64.b64encode(struct.pack(f"<{EMBEDDING_DIMENSIONS}f", *VECTOR)).decode("ascii"))
MODELS = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED,
                                                    "owned_by": "bench"}]})
HEALTH = b'{"status":"ok"}'


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: " + content_type + b"\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: keep-alive\r\n\r\n" + body)


R_COMPLETION = _response(b"200 OK", b"application/json", COMPLETION)
R_STREAM = _response(b"200 OK", b"text/event-stream", STREAM)
R_EMBEDDINGS_FLOAT = _response(b"200 OK", b"application/json", EMBEDDINGS_FLOAT)
R_EMBEDDINGS_BASE64 = _response(b"200 OK", b"application/json", EMBEDDINGS_BASE64)
R_MODELS = _response(b"200 OK", b"application/json", MODELS)
R_HEALTH = _response(b"200 OK", b"application/json", HEALTH)
R_NOT_FOUND = _response(b"404 Not Found", b"application/json", b'{"error":{"message":"not found"}}')
R_BAD = _response(b"400 Bad Request", b"application/json", b'{"error":{"message":"bad request"}}')
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_FAIL_MODEL = re.compile(rb'"model"\s*:\s*"bench-fail-(\d{3})"')
_SLOW_MODEL = re.compile(rb'"model"\s*:\s*"bench-slow"')
_REASONS = {429: b"Too Many Requests", 500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable"}
_BASE64 = re.compile(rb'"encoding_format"\s*:\s*"base64"')
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


STATS = {"connections": 0, "requests": 0, "slow_streams_cut": 0}  # cut: the peer left a bench-slow stream


def _failure(status: bytes) -> bytes:
    code = int(status)
    kind = b"rate_limit_exceeded" if code == 429 else b"server_error"
    body = b'{"error":{"message":"bench upstream failure","type":"' + kind + b'","code":null}}'
    return _response(status + b" " + _REASONS.get(code, b"Error"), b"application/json", body)


SLOW_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: " + str(len(STREAM)).encode()
             + b"\r\nconnection: keep-alive\r\n\r\n")
SLOW_EVENTS = [event + b"\n\n" for event in STREAM.split(b"\n\n") if event]


class FakeUpstream(asyncio.Protocol):
    __slots__ = ("transport", "buffer")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        STATS["connections"] += 1

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        out = []
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            match = _CONTENT_LENGTH.search(head)
            length = int(match.group(1)) if match else 0
            total = end + 4 + length
            if len(buffer) < total:
                break
            body = buffer[end + 4:total]
            buffer = buffer[total:]
            line = head[:head.find(b"\r\n")] if b"\r\n" in head else head
            parts = line.split(b" ")
            if len(parts) != 3:
                out.append(R_BAD)
                continue
            method, target = parts[0], parts[1].split(b"?", 1)[0]
            STATS["requests"] += 1
            if method == b"POST" and target.endswith(b"/chat/completions"):
                failing = _FAIL_MODEL.search(body)
                if failing:
                    out.append(_failure(failing.group(1)))
                elif not _STREAM_TRUE.search(body):
                    out.append(R_COMPLETION)
                elif _SLOW_MODEL.search(body):
                    out.append(SLOW_HEAD + SLOW_EVENTS[0])
                    self._write_slowly(1)
                else:
                    out.append(R_STREAM)
            elif method == b"POST" and target.endswith(b"/embeddings"):
                out.append(R_EMBEDDINGS_BASE64 if _BASE64.search(body) else R_EMBEDDINGS_FLOAT)
            elif method == b"GET" and target.endswith(b"/models"):
                out.append(R_MODELS)
            elif method == b"GET" and target == b"/health":
                out.append(R_HEALTH)
            elif method == b"GET" and target == b"/stats":
                out.append(_response(b"200 OK", b"application/json", orjson.dumps(STATS)))
            else:
                out.append(R_NOT_FOUND)
        self.buffer = buffer
        if out and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _write_slowly(self, index: int) -> None:
        """The rest of a `bench-slow` stream, one event per SLOW_CHUNK_DELAY, until it ends or the peer goes."""
        def send() -> None:
            if self.transport is None or self.transport.is_closing():
                STATS["slow_streams_cut"] += 1  # the client (the proxy) gave up on the stream
                return
            self.transport.write(SLOW_EVENTS[index])
            if index + 1 < len(SLOW_EVENTS):
                self._write_slowly(index + 1)

        asyncio.get_running_loop().call_later(SLOW_CHUNK_DELAY, send)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeUpstream, host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="fast fake OpenAI-compatible upstream (benchmark fixture)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
