"""Prometheus metrics (being written: see issue 12)."""

from __future__ import annotations

from typing import Any


class Metrics:
    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def request_done(self, info: Any) -> None:
        return None
