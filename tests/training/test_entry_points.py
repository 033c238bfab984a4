"""Entry points: every console script in setup.py documents every flag, and the installed package
has no generic top-level ``tools`` while each console script's target imports from the install."""
import argparse
import ast
import importlib
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# setup.py's package_dir: the installed megatron_ixt_tools is the checkout's tools/ folder
INSTALLED_AS = {"megatron_ixt_tools": "tools"}


def console_scripts() -> dict:
    """name -> "module:function" of setup.py's ``console_scripts``."""
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup")
    entry_points = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "entry_points"))
    return dict(line.replace(" ", "").split("=", 1) for line in entry_points["console_scripts"])


def source_module(target: str) -> str:
    """The checkout's module name for a console-script target ``module:function``."""
    module = target.split(":")[0]
    top, _, rest = module.partition(".")
    return ".".join(filter(None, [INSTALLED_AS.get(top, top), rest]))


def undocumented(parser: argparse.ArgumentParser, name: str) -> list:
    """``name --flag`` for every action of ``parser`` (and its sub-commands) without help text."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                missing += undocumented(sub, f"{name} {command}")
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_console_scripts_cover_every_entry_point():
    assert set(console_scripts()) >= {"ixt-preprocess", "ixt-merge", "ixt-inspect", "ixt-inspect-samples",
                                      "ixt-annotate", "ixt-pretrain", "ixt-generate",
                                      "ixt-pretrain-megatron-lm"}


@pytest.mark.parametrize("script", sorted(console_scripts()))
def test_every_flag_has_help(script):
    module = importlib.import_module(source_module(console_scripts()[script]))
    reason = getattr(module, "unavailable", lambda: None)()  # e.g. megatron_lm on a megatron-core without it
    if reason:
        pytest.skip(reason)
    parser = module.build_parser()
    # a parser extending another project's (Megatron-LM's) answers for the flags it adds
    foreign = set(undocumented(module.build_megatron_lm_parser(), script)) \
        if hasattr(module, "build_megatron_lm_parser") else set()
    assert [flag for flag in undocumented(parser, script) if flag not in foreign] == []
    assert parser.format_help()  # renders (e.g. no bad %-formatting in a help string)


def test_pretrain_help_lists_every_config_field(capsys):
    from megatron_ixt.pretrain import main
    from megatron_ixt.training.config import _SECTION_CLASSES, Config

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for cls in _SECTION_CLASSES.values():
        for field in cls.__dataclass_fields__:
            assert "--" + field.replace("_", "-") in out, field
    assert "--swiglu, --no-swiglu" in out and "(default: 1234)" in out  # --seed's default, from its field
    assert set(Config.__dataclass_fields__) == set(_SECTION_CLASSES) | {"tokenizer"}


@pytest.mark.slow
def test_install_has_no_top_level_tools_and_scripts_import(tmp_path):
    src, target = tmp_path / "src", tmp_path / "target"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(REPO, name), src / name)
    for folder in ("megatron_ixt", "annotate", "tools"):
        shutil.copytree(os.path.join(REPO, folder), src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, capture_output=True, cwd=tmp_path)
    assert not (target / "tools").exists()
    assert sorted(p.name for p in target.iterdir() if (p / "__init__.py").exists()) == \
        ["annotate", "megatron_ixt", "megatron_ixt_tools"]
    scripts = console_scripts()
    code = "\n".join([
        "import importlib, sys",
        f"for target in {sorted(scripts.values())!r}:",
        "    module, function = target.split(':')",
        "    m = importlib.import_module(module)",
        f"    assert m.__file__.startswith({str(target)!r}), m.__file__",
        "    assert callable(getattr(m, function)), target",
    ])
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in scripts:  # pip wrote each script's launcher
        assert (target / "bin" / name).is_file(), name
