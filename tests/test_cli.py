"""megatron_ixt.cli: the exit-status table every command's main applies, and ``--import MODULE``."""
from __future__ import annotations

import sys
import textwrap

import pytest

from megatron_ixt.cli import (
    EXIT_BAD_INPUT,
    EXIT_CHECKPOINT,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    entry_point,
    failing_with,
    split_imports,
)

PLUGIN = "ixt_test_plugin"
KIND, BACKEND = "domain_test", "http_plugin_test"


def test_expected_failures_exit_with_their_status_and_a_message(capsys):
    from megatron_ixt.training.checkpoint import CheckpointError, read_latest_iteration
    from megatron_ixt.training.config import ConfigError

    def command(error):
        @entry_point
        def main(argv=None):
            raise error
        return main

    assert command(CheckpointError("ckpt/iter_0000001: cannot load"))([]) == EXIT_CHECKPOINT
    assert "error: ckpt/iter_0000001: cannot load" in capsys.readouterr().err
    assert command(ConfigError("--seq-length must be positive"))([]) == EXIT_USAGE
    assert command(CommandError("prompts.jsonl:3: bad line"))([]) == EXIT_BAD_INPUT
    assert "error: prompts.jsonl:3: bad line" in capsys.readouterr().err
    assert command(KeyboardInterrupt())([]) == EXIT_INTERRUPTED
    with pytest.raises(ZeroDivisionError):  # a crash keeps its traceback
        command(ZeroDivisionError("bug"))([])

    @entry_point
    def load(argv):
        with failing_with(EXIT_USAGE, FileNotFoundError):
            read_latest_iteration(argv[0])  # a real CheckpointError: missing directory
        return 7

    assert load(["/nonexistent/ckpt"]) == EXIT_CHECKPOINT
    assert "--load /nonexistent/ckpt: directory does not exist" in capsys.readouterr().err

    @entry_point
    def read(argv):
        with failing_with(EXIT_USAGE, FileNotFoundError):
            open(argv[0])
        return 7

    assert read(["/nonexistent/file"]) == EXIT_USAGE and "/nonexistent/file" in capsys.readouterr().err
    assert entry_point(lambda argv: None)([]) == 0 and entry_point(lambda argv: 7)([]) == 7


def test_split_imports():
    assert split_imports(["--import", "a", "run", "--import=b.c", "--x", "1", "--", "--import", "d"]) == \
        (["a", "b.c"], ["run", "--x", "1", "--", "--import", "d"])
    with pytest.raises(CommandError, match="--import needs a module name"):
        split_imports(["run", "--import"])


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module written here that registers a prefix kind and an annotation backend; unregistered after."""
    from annotate import backends
    from megatron_ixt.data import prefix_kinds

    (tmp_path / f"{PLUGIN}.py").write_text(textwrap.dedent(f"""
        from annotate.backends import register
        from megatron_ixt.data import prefix_kinds

        prefix_kinds.register(prefix_kinds.PrefixKind("{KIND}", "quality_v1", "a test kind"))


        @register
        class PluginBackend:
            name, description = "{BACKEND}", "a test backend"
            result_flags, operational_flags = (), ()

            @staticmethod
            def add_args(group):
                pass
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield PLUGIN
    prefix_kinds.KINDS.pop(KIND, None)
    backends.REGISTRY.pop(BACKEND, None)
    sys.modules.pop(PLUGIN, None)


def help_text(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_import_registers_before_the_parser_is_built(plugin, capsys):
    from annotate.cli import main as annotate
    from megatron_ixt.evaluation.cli import main as evaluate
    from megatron_ixt.generate import main as generate
    from megatron_ixt.pretrain import main as pretrain
    from tools.preprocess_ixt import main as preprocess

    assert f"--{KIND.replace('_', '-')}-template" not in help_text(preprocess, [], capsys)
    assert f"--{KIND.replace('_', '-')}-template" in help_text(preprocess, ["--import", plugin], capsys)
    assert KIND in help_text(pretrain, ["--import", plugin], capsys).split("--ixt-prefix-kind")[1].split("--")[0]
    assert KIND in help_text(generate, ["--import", plugin], capsys)
    assert "--import MODULE" in help_text(evaluate, ["--import", plugin], capsys)
    assert BACKEND in help_text(annotate, ["--import", plugin, "run"], capsys)


def test_import_of_a_missing_module_is_a_usage_error(capsys):
    from megatron_ixt.generate import main as generate

    assert generate(["--import", "no_such_module_here", "--load", "x", "--prompt", "y"]) == EXIT_USAGE
    assert "--import no_such_module_here" in capsys.readouterr().err
