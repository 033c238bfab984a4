"""Helpers shared by the annotate tests (fixtures live in tests/annotate/conftest.py).

    from tests.helpers.annotate import read_jsonl, write_jsonl, subprocess_env, ...
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

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


def count_lines(path) -> int:
    """Lines of a file being written (0 while it does not exist)."""
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def sigkill_when(cmd: list, out, stems, threshold: int, timeout: float = 60) -> None:
    """Start ``cmd`` (an ``annotate run``) and SIGKILL it once the outputs of shards ``stems`` in
    directory ``out`` (partial and committed) hold ``threshold`` records; fails if it exits first."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if sum(count_lines(out / f"{s}.jsonl.partial") + count_lines(out / f"{s}.jsonl") for s in stems) >= threshold:
            break
        time.sleep(0.005)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


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
