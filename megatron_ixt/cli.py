"""What every megatron-ixt command shares: the exit-status table, the ``main`` wrapper and ``--import``.

Exit status of every command (docs/cli.md):

====  ====================  ==========================================================================
code  name                  meaning
====  ====================  ==========================================================================
0     ``EXIT_OK``           done
1     ``EXIT_BAD_INPUT``    unusable input data (a record, document, prompt-file line, shard set): the
                            message names the file; also any crash (Python's traceback)
2     ``EXIT_USAGE``        bad flags or configuration (a flag value, a flag combination, a spec or
                            config file, a path a flag names); argparse's own errors too
3     ``EXIT_CHECKPOINT``   unusable checkpoint: missing, unreadable, or not expressible (export)
4     ``EXIT_MISCONFIGURED``  annotate: the judge server refused request after request the same way
                            (wrong ``--api``, ``--model`` or key); nothing was recorded as failed
5     ``EXIT_TOO_MANY_FAILED``  annotate: more than ``--max-failed-fraction`` of the documents failed
                            (committed; ``status``, then ``retry-failed``)
65    ``EXIT_NONFINITE``    pretrain: the loss or gradient norm became NaN/Inf; no checkpoint after the
                            last finite iteration; not requeued as is (docs/training.md)
69    ``EXIT_UNAVAILABLE``  a service it needs is down (annotate: no judge server reachable for
                            ``--all-down-timeout``); the work done is saved, rerunning resumes
75    ``EXIT_RESUMABLE``    stopped early with its state saved (SIGTERM, time limit): rerun the same
                            command (Slurm requeues on it, docs/slurm.md)
128+N                       stopped by signal N (130 Ctrl-C, 143 SIGTERM)
====  ====================  ==========================================================================

:func:`entry_point` wraps a command's ``main(argv)``: an exception whose class declares an ``exit_code``
(:class:`CommandError`, ``CheckpointError``, ``ConfigError``, ``ExportError``, ``AllServersDown``, ...) is
an expected failure: ``error: <message>`` on stderr and that exit status, no traceback. Anything else
is a crash. :func:`failing_with` turns a library's generic exceptions (``ValueError``, ``OSError``)
into one of these where the command knows what they mean.

``--import MODULE`` (repeatable; annotate, preprocess, pretrain, generate, evaluate) imports a user's
module before the command builds its parser, so that the prefix kinds
(``megatron_ixt.data.prefix_kinds.register``) and annotation backends (``annotate.backends.register``)
it registers are among the choices. This module imports neither torch nor megatron.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import sys
from collections.abc import Callable, Iterator, Sequence

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_CHECKPOINT = 3
EXIT_MISCONFIGURED = 4
EXIT_TOO_MANY_FAILED = 5
EXIT_NONFINITE = 65  # sysexits.h EX_DATAERR
EXIT_UNAVAILABLE = 69  # sysexits.h EX_UNAVAILABLE
EXIT_RESUMABLE = 75  # sysexits.h EX_TEMPFAIL
EXIT_INTERRUPTED = 130  # 128 + SIGINT

IMPORT_FLAG = "--import"
IMPORT_HELP = ("import this Python module (a dotted name on the Python path) before anything else, so that "
               "the prefix kinds and annotation backends it registers are available (repeatable)")


class CommandError(Exception):
    """A failure the user can act on: :func:`entry_point` prints ``error: <message>`` and exits with
    ``exit_code`` (default :data:`EXIT_BAD_INPUT`)."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


@contextlib.contextmanager
def failing_with(exit_code: int, *exceptions: type) -> Iterator[None]:
    """Inside the block, ``exceptions`` become a :class:`CommandError` with ``exit_code`` and their message."""
    try:
        yield
    except exceptions as e:
        raise CommandError(str(e), exit_code) from e


def add_import_flag(parser: argparse.ArgumentParser) -> None:
    """Declare ``--import MODULE`` on ``parser`` (for ``--help``; :func:`entry_point` consumes it first)."""
    parser.add_argument(IMPORT_FLAG, action="append", default=[], metavar="MODULE", dest="imports", help=IMPORT_HELP)


def split_imports(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(modules named by --import, the other arguments)``; ``--import`` without a module is a CommandError."""
    modules, rest = [], []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest += [arg, *args]
            break
        if arg == IMPORT_FLAG:
            module = next(args, None)
            if module is None or module.startswith("-"):
                raise CommandError(f"{IMPORT_FLAG} needs a module name", EXIT_USAGE)
            modules.append(module)
        elif arg.startswith(IMPORT_FLAG + "="):
            modules.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return modules, rest


def import_plugins(modules: Sequence[str]) -> None:
    """Import each module; one that cannot be imported is a CommandError naming it."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise CommandError(f"{IMPORT_FLAG} {name}: {e}", EXIT_USAGE) from e


def exit_code_of(error: BaseException) -> int | None:
    """The exit status an exception's class declares (``exit_code``), or None for a crash."""
    code = getattr(type(error), "exit_code", None)
    if isinstance(error, CommandError):
        code = error.exit_code
    return code if isinstance(code, int) else None


def print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)  # noqa: T201 - every CLI's error line (docs/cli.md)


def entry_point(main: Callable | None = None, *, plugins: bool = False,
                report: Callable[[str], None] = print_error):
    """Decorate a command's ``main(argv=None) -> int | None`` with the exit-status table (module docstring).

    With ``plugins``, ``--import MODULE`` arguments are taken out of ``argv`` (default ``sys.argv[1:]``)
    and imported before ``main`` runs; ``main`` gets the other arguments. ``report`` shows an expected
    failure's message (default: ``error: <message>`` on stderr; a command that logs passes its logger's
    ``error``).
    """
    if main is None:
        return functools.partial(entry_point, plugins=plugins, report=report)

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        try:
            if plugins:
                modules, argv = split_imports(argv)
                import_plugins(modules)
            code = main(argv)
        except KeyboardInterrupt:
            report("interrupted")
            return EXIT_INTERRUPTED
        except Exception as e:
            code = exit_code_of(e)
            if code is None:
                raise
            report(str(e))
            return code
        return EXIT_OK if code is None else int(code)

    return wrapper
