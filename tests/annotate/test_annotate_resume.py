"""Exactly-once output under kill -9: SIGKILL a real client process mid-run, repeatedly,
rerun the same command, and check every input id appears exactly once."""
import collections
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from annotate.store import ShardStats, ShardWriter
from tests.helpers.annotate import REPO, count_lines, read_jsonl, sigkill_when, subprocess_env, write_jsonl


def generate_requests(url: str) -> int:
    """How many /generate requests the stand-in server at ``url`` has answered."""
    with urllib.request.urlopen(f"{url}/_standin/stats") as answer:
        return json.loads(answer.read())["generate"]


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(standin, tmp_path):
    server = standin(latency=0.03)
    n, concurrency = 600, 8
    docs = [{"id": f"doc-{i:04d}", "text": f"document {i} " + "word " * (i % 50), "meta": {"i": i}} for i in range(n)]
    for k in range(2):
        write_jsonl(tmp_path / f"part{k}.jsonl", docs[k::2])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "annotate", "run", "--input", str(tmp_path / "part*.jsonl"), "--output", str(out),
           "--url", server.url, "--concurrency", str(concurrency), "--fsync-interval", "0.05", "--log-interval", "0.2"]
    kills = 0
    for threshold in (0, 40, 130, 200, 330):  # lines already in the partial outputs when we pull the plug
        sigkill_when(cmd, out, ("part0", "part1"), threshold)
        kills += 1
    final = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "docs/s" in final.stderr and "ETA" in final.stderr  # non-TTY progress lines
    ids = collections.Counter()
    for k in range(2):
        assert not (out / f"part{k}.jsonl.partial").exists()
        for r in read_jsonl(out / f"part{k}.jsonl"):
            ids[r["id"]] += 1
            assert r["ixt"]["status"] == "ok" and r["meta"]["i"] == int(r["id"][4:])
    assert set(ids) == {d["id"] for d in docs}
    assert max(ids.values()) == 1
    # Completed work is not redone: only documents in flight at each kill are repeated, i.e.
    # requests holding one of the `concurrency` slots plus answers received but not yet written.
    requests = json.loads(subprocess.run(
        [sys.executable, "-c",
         f"import urllib.request;print(urllib.request.urlopen('{server.url}/_standin/stats').read().decode())"],
        capture_output=True, text=True).stdout)["generate"]
    assert n <= requests <= n + kills * 2 * concurrency
    stats = [json.load(open(out / f"part{k}.stats.json")) for k in range(2)]
    assert sum(s["ok"] for s in stats) == n and all(s["state"] == "committed" for s in stats)


def test_torn_last_line_is_dropped_and_counted_once(tmp_path):
    path = tmp_path / "x.jsonl.partial"
    good = [{"id": f"a{i}", "text": "t", "ixt": {"status": "failed:http", "error": "e", "usage": {}}} for i in range(3)]
    with open(path, "wb") as f:
        for r in good:
            f.write((json.dumps(r) + "\n").encode())
        f.write(b'{"id": "a3", "text": "t", "ixt": {"sta')  # a kill in the middle of a write
    stats = ShardStats()
    w = ShardWriter(str(path))
    done = w.open(lambda i, ixt: stats.add(ixt))
    assert done == {"a0", "a1", "a2"} and stats.done == 3
    w.append({"id": "a3", "text": "t", "ixt": {"status": "ok"}})
    w.close()
    assert [r["id"] for r in read_jsonl(path)] == ["a0", "a1", "a2", "a3"]


def test_corruption_in_the_middle_is_refused(tmp_path):
    path = tmp_path / "y.jsonl.partial"
    path.write_bytes(b'{"id": "a", "ixt": {"status": "ok"}}\nGARBAGE\n{"id": "b", "ixt": {"status": "ok"}}\n')
    with pytest.raises(RuntimeError, match=r"y.jsonl.partial:2: corrupt record"):
        ShardWriter(str(path)).open()


def test_sigterm_saves_and_exits_143(standin, tmp_path):
    server = standin(latency=0.05)
    docs = [{"id": f"t{i}", "text": f"document {i}"} for i in range(300)]
    inp = write_jsonl(tmp_path / "d.jsonl", docs)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "annotate", "run", "--input", inp, "--output", str(out), "--url", server.url,
           "--concurrency", "4", "--log-interval", "60"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while count_lines(out / "d.jsonl.partial") < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=30)[1].decode()
    assert proc.returncode == 143, err[-2000:]
    assert "rerun the same command to resume" in err
    assert json.load(open(out / "d.stats.json"))["state"] == "interrupted"
    saved = count_lines(out / "d.jsonl.partial")
    assert 20 <= saved < 300
    final = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert final.returncode == 0, final.stderr[-2000:]
    ids = collections.Counter(r["id"] for r in read_jsonl(out / "d.jsonl"))
    assert set(ids) == {d["id"] for d in docs} and max(ids.values()) == 1


def test_a_shard_cannot_be_written_by_two_processes(tmp_path):
    path = str(tmp_path / "z.jsonl.partial")
    first = ShardWriter(path)
    first.open()
    code = ("from annotate.store import ShardWriter\n"
            f"try:\n    ShardWriter({path!r}).open()\nexcept RuntimeError as e:\n    print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=subprocess_env())
    assert "being written by another process" in out.stdout, out.stderr
    first.close()
    ShardWriter(path).open()  # free again once the first writer is gone


def test_killed_between_the_stats_and_the_commit_the_rerun_commits_with_whole_stats(standin, tmp_path):
    """finish() writes the committed stats, then renames .partial to the final name: a process killed
    between the two (here: the final file renamed back) leaves every record in .partial, and the rerun
    commits them with stats that count them all, sending no request."""
    server = standin()
    docs = [{"id": f"doc-{i}", "text": f"document {i} " + "word " * i} for i in range(40)]
    write_jsonl(tmp_path / "part0.jsonl", docs)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "annotate", "run", "--input", str(tmp_path / "part0.jsonl"), "--output", str(out),
           "--url", server.url]
    assert subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=120).returncode == 0
    (out / "part0.jsonl").rename(out / "part0.jsonl.partial")  # the moment between the two steps
    stats = json.loads((out / "part0.stats.json").read_text())
    assert stats["state"] == "committed" and stats["ok"] == 40
    requests_before = generate_requests(server.url)
    rerun = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert not (out / "part0.jsonl.partial").exists() and len(read_jsonl(out / "part0.jsonl")) == 40
    stats = json.loads((out / "part0.stats.json").read_text())
    assert stats["state"] == "committed" and stats["ok"] == 40 and stats["done"] == 40
    requests_after = generate_requests(server.url)
    assert requests_after == requests_before
