"""Helpers shared by the annotate tests (import as ``annotate_testlib``; fixtures live in conftest.py)."""
from __future__ import annotations

import asyncio
import json
import os

import aiohttp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")
    return str(path)


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _standin_call(server, method: str, path: str, body=None):
    async def call():
        async with aiohttp.ClientSession() as s:
            async with s.request(method, server.url + path, json=body) as r:
                return await r.json()
    return asyncio.run(call())


def server_stats(server) -> dict:
    """The stand-in's ``/_standin/stats``: request counts, faults served, peak in flight."""
    return _standin_call(server, "GET", "/_standin/stats")


def set_fault(server, kind: str, count: int) -> dict:
    """Make the stand-in fail its next ``count`` requests with ``kind`` (0: stop)."""
    return _standin_call(server, "POST", "/_standin/faults", {"kind": kind, "count": count})
