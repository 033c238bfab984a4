"""The backend registry: a backend registered at runtime is a ``--backend`` choice with its own
flags; its saved flags land in run_config.json; a resumed ``run`` refuses a changed result flag
and accepts changed operational or unsaved flags, writing every document exactly once."""
import asyncio
import json

import pytest

from annotate.backends import REGISTRY, AllServersDown, Completion, register
from annotate.backends.http import HttpBackend
from annotate.cli import main
from megatron_ixt.cli import EXIT_UNAVAILABLE
from megatron_ixt.data.record import SCORE_AXES
from tests.helpers.annotate import read_jsonl, write_jsonl


class EchoBackend:
    """A judge giving every document the same verdict, quality and scores ``--echo-quality``."""

    name = "echo"
    description = "test judge: one fixed verdict for every document"
    result_flags = ("echo_quality",)
    operational_flags = ("echo_delay",)

    @staticmethod
    def add_args(group):
        group.add_argument("--echo-quality", type=int, default=3, help="the quality and scores of every verdict")
        group.add_argument("--echo-delay", type=float, default=0.0, help="seconds before each answer")
        group.add_argument("--echo-stop-after", type=int, default=0,
                           help="answers after which the judge is 'down' (AllServersDown); 0: never")

    @classmethod
    def from_args(cls, args, judge):
        return cls(args.echo_quality, args.echo_delay, args.echo_stop_after, judge.count)

    def __init__(self, quality, delay, stop_after, count):
        self.quality, self.delay, self.stop_after, self.count = quality, delay, stop_after, count
        self.answers = 0
        self.errors = {}

    def info(self):
        return {"backend": self.name, "model": "echo-v1"}

    async def start(self):
        pass

    async def close(self):
        pass

    async def complete(self, request):
        if self.stop_after and self.answers >= self.stop_after:
            raise AllServersDown("echo judge stopped")
        self.answers += 1
        await asyncio.sleep(self.delay)
        text = json.dumps({"critique": "Same as always.", **{axis: self.quality for axis in SCORE_AXES},
                           "quality": self.quality})
        return Completion(text=text, reasoning=None, finish_reason="stop", prompt_tokens=self.count(request.prompt))


@pytest.fixture
def echo():
    register(EchoBackend)
    yield EchoBackend
    del REGISTRY[EchoBackend.name]


def test_registered_backend_is_selectable_with_its_own_flags(echo, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = capsys.readouterr().out
    assert "--backend echo:" in help_text and "--echo-quality" in help_text and "one fixed verdict" in help_text
    inp = write_jsonl(tmp_path / "d.jsonl", [{"id": f"d{i}", "text": f"document {i}"} for i in range(12)])
    out = tmp_path / "out"
    assert main(["run", "--input", inp, "--output", str(out), "--backend", "echo", "--echo-quality", "4",
                 "--log-interval", "60"]) == 0
    recs = read_jsonl(out / "d.jsonl")
    assert len(recs) == 12 and all(r["ixt"]["quality"] == 4 and r["ixt"]["annotator"]["backend"] == "echo"
                                   for r in recs)
    judge = json.load(open(out / "run_config.json"))["judge"]
    assert judge["backend"] == "echo" and judge["echo_quality"] == 4 and judge["echo_delay"] == 0.0
    assert "echo_stop_after" not in judge and "url" not in judge  # unsaved, and another backend's flag


def test_resume_refuses_a_changed_result_flag_only(echo, tmp_path, caplog):
    docs = [{"id": f"d{i}", "text": f"document {i}"} for i in range(40)]
    inp = write_jsonl(tmp_path / "d.jsonl", docs)
    out = tmp_path / "out"

    def run(*flags, quality="4", backend="echo"):
        return main(["run", "--input", inp, "--output", str(out), "--backend", backend, "--echo-quality", quality,
                     "--log-interval", "60", *flags])

    assert run("--concurrency", "2", "--echo-stop-after", "10") == EXIT_UNAVAILABLE  # the judge went down mid-shard
    partial = (out / "d.jsonl.partial").read_bytes()
    assert 0 < len(read_jsonl(out / "d.jsonl.partial")) < 40
    saved = (out / "run_config.json").read_bytes()

    assert run(quality="5") == 1
    assert "--echo-quality 4 -> 5" in caplog.text and "new --output directory" in caplog.text
    assert run(backend="verifier") == 1
    assert "--backend 'echo' -> 'verifier'" in caplog.text
    assert run("--temperature", "0.1") == 1  # a shared result flag
    assert "--temperature 0.6 -> 0.1" in caplog.text
    assert (out / "d.jsonl.partial").read_bytes() == partial and (out / "run_config.json").read_bytes() == saved

    # operational flags (--echo-delay, --concurrency) and an unsaved one (--echo-stop-after) may change
    assert run("--concurrency", "3", "--echo-delay", "0.001") == 0
    recs = read_jsonl(out / "d.jsonl")
    assert sorted(r["id"] for r in recs) == sorted(d["id"] for d in docs)  # each exactly once
    assert all(r["ixt"]["quality"] == 4 for r in recs)
    judge = json.load(open(out / "run_config.json"))["judge"]
    assert judge["echo_delay"] == 0.001 and judge["concurrency"] == 3


def test_a_name_is_registered_once():
    class Impostor(HttpBackend):
        pass

    with pytest.raises(ValueError, match="'http' is already registered"):
        register(Impostor)
    assert REGISTRY["http"] is HttpBackend
