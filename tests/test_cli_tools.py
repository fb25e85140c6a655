"""Every command-line tool answers --help, and the schema machinery of common/cli.py for tools.

The tools are discovered (a `__main__` block in a root script, a bert_data or gpt2_data module or a
benchmarks/ script), so a new tool is covered without editing this file. --help must not import TensorFlow: it is checked with
Python's import-time log (PYTHONPROFILEIMPORTTIME), which costs nothing extra to collect.
"""

import concurrent.futures
import glob
import os
import re
import subprocess
import sys

import pytest

from common.cli import Option, build_parser, build_tool_parser, parse_tool_args
from common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN_BLOCK = re.compile(r'^if __name__ == "__main__":', re.MULTILINE)


def _has_main(path):
    with open(path, encoding="utf-8") as f:
        return bool(MAIN_BLOCK.search(f.read()))


def root_scripts():
    return sorted(
        os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "*.py")) if _has_main(p)
    )


def data_tools(package="bert_data"):
    paths = glob.glob(os.path.join(ROOT, package, "*.py"))
    return sorted(os.path.basename(p)[:-3] for p in paths if _has_main(p))


def _help_commands():
    python = sys.executable
    commands = [[python, script, "--help"] for script in root_scripts()]
    for package in ("bert_data", "gpt2_data", "tasks"):
        for name in data_tools(package):
            commands.append([python, os.path.join(package, f"{name}.py"), "--help"])
            commands.append([python, "-m", f"{package}.{name}", "--help"])
    benchmarks = glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))
    commands += [[python, p, "--help"] for p in sorted(benchmarks) if _has_main(p)]
    commands.append(["./run_squad.py", "--help"])  # shebang and exec bit
    return commands


def _run(command):
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONPATH": ""}
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _imports_tensorflow(stderr):
    return bool(re.search(r"^import time:.*\|\s+tensorflow$", stderr, re.MULTILINE))


def test_discovery_finds_the_known_tools():
    assert {"run_pretraining.py", "run_squad.py", "run_classifier.py", "convert_ckpt.py",
            "extract_features.py"} <= set(root_scripts())  # fmt: skip
    assert {"create_vocab", "create_bpe_tokenizer", "create_mlm_data", "inspect_records",
            "wiki_preprocess", "squad_metrics", "create_pretraining_data"} <= set(data_tools())  # fmt: skip
    assert {"preprocess_data", "wikipedia_preprocess"} <= set(data_tools("gpt2_data"))


def test_root_scripts_are_executable():
    for script in root_scripts():
        path = os.path.join(ROOT, script)
        assert os.access(path, os.X_OK), f"{script}: chmod +x"
        with open(path, encoding="utf-8") as f:
            assert f.readline().startswith("#!/usr/bin/env python3"), f"{script}: no shebang"


def test_every_tool_answers_help_without_tensorflow():
    commands = _help_commands()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(_run, commands))
    failures, with_tf = [], []
    for command, result in zip(commands, results):
        shown = " ".join(os.path.relpath(c, ROOT) if c == sys.executable else c for c in command)
        if result.returncode != 0 or not result.stdout.startswith("usage:"):
            failures.append(f"{shown}: exit {result.returncode}\n{result.stderr[-1500:]}")
        elif _imports_tensorflow(result.stderr):
            with_tf.append(shown)
    assert not failures, "\n".join(failures)
    assert not with_tf, f"--help imports TensorFlow: {with_tf}"


# ----------------------------------------------------------------------------- common/cli.py

TOOL = [
    Option("command", "str", None, "what to do", positional=True, choices=("copy", "move")),
    Option("files", "str", None, "inputs", positional=True, nargs="+", metavar="FILE"),
    Option("vocab_file", "str", None, "the vocab", required=True, metavar="FILE"),
    Option("output_dir", "str", "out", "where to write"),
    Option("layers", "str", "-1", "layer indices"),
    Option("max_len", "int", 7, "lines per file"),
    Option("scale", "float", 0.5, "a factor"),
    Option("force", "bool", False, "overwrite"),
    Option("bias", "bool", None, "true, false or as the source"),
    Option("num_records", "int", 3, "records to print", extra_flags=("-n",)),
]


def parse(*argv, **kwargs):
    return vars(parse_tool_args(TOOL, list(argv), prog="tool", **kwargs))


def usage_error(*argv):
    with pytest.raises(UserError) as info:
        parse(*argv)
    assert info.value.exit_code == 64
    return str(info.value)


def test_tool_namespace_holds_every_key_with_its_default():
    got = parse("copy", "a.txt", "--vocab-file", "v.txt")
    assert got == {"command": "copy", "files": ["a.txt"], "vocab_file": "v.txt",
                   "output_dir": "out", "layers": "-1", "max_len": 7, "scale": 0.5,
                   "force": False, "bias": None, "num_records": 3}  # fmt: skip


def test_positional_and_nargs():
    got = parse("move", "a", "b", "c", "--vocab-file", "v", "-n", "5", "--max-len", "9")
    assert got["command"] == "move" and got["files"] == ["a", "b", "c"]
    assert got["num_records"] == 5 and got["max_len"] == 9
    assert "copy, move" in usage_error("delete", "a", "--vocab-file", "v")
    assert "required" in usage_error("copy", "--vocab-file", "v")  # files missing


def test_required_option():
    message = usage_error("copy", "a")
    assert "--vocab-file" in message and "required" in message and "tool --help" in message


def test_bool_forms_and_positionals_after_a_bool():
    base = ["--vocab-file", "v"]
    assert parse("copy", "a", *base, "--force")["force"] is True
    for text, value in (("true", True), ("false", False), ("yes", True), ("0", False)):
        assert parse("copy", "a", *base, "--force", text)["force"] is value
        assert parse("copy", "a", *base, f"--force={text}")["force"] is value
    assert parse("copy", "a", *base, "--no-force")["force"] is False
    assert parse("copy", "a", *base, "--bias")["bias"] is True
    assert parse("copy", "a", *base, "--no-bias")["bias"] is False
    # A bool flag takes the next word only when it is a boolean: here it is a positional.
    got = parse("--force", "copy", "--bias", "a", "b", *base)
    assert got["force"] is True and got["bias"] is True and got["files"] == ["a", "b"]
    assert "true or false" in usage_error("copy", "a", *base, "--force=maybe")


def test_values_starting_with_a_dash():
    got = parse("copy", "a", "--vocab-file", "v", "--layers", "-1,-2", "--scale", "-2.5")
    assert got["layers"] == "-1,-2" and got["scale"] == -2.5
    # A known flag is not taken as a value: the missing value is reported.
    assert "expected one argument" in usage_error("copy", "a", "--vocab-file", "--force")


def test_type_errors_and_unknown_flags_are_one_line():
    message = usage_error("copy", "a", "--vocab-file", "v", "--max-len", "x")
    assert "expected an integer, got 'x'" in message and "\n" not in message
    assert "unrecognized" in usage_error("copy", "a", "--vocab-file", "v", "--max-lenn", "3")
    # No abbreviations: --vocab would silently pick --vocab-file.
    assert "required" in usage_error("copy", "a", "--vocab", "v")


def test_underscore_flags():
    got = parse("copy", "a", "--vocab_file", "v", "--max_len", "2", underscore_flags=True)
    assert got["vocab_file"] == "v" and got["max_len"] == 2
    assert "unrecognized" in usage_error("copy", "a", "--vocab-file", "v", "--max_len", "2")


def test_tool_help_lists_defaults_required_and_bool_forms(capsys):
    parser = build_tool_parser(TOOL, "tool", "Does things.", "See the README.", True)
    assert "--config" not in parser.format_help()
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: tool ") and "Does things." in out
    assert "--vocab-file FILE, --vocab_file FILE" in out and "(required)" in out
    assert '(default: "out")' in out and "(default: 7)" in out
    assert "See the README. Booleans: --flag, --flag true|false, --no-flag." in out


def test_build_parser_without_config_keeps_only_explicit_flags():
    options = [Option("max_len", "int", 7, "lines"), Option("force", "bool", False, "overwrite")]
    parser = build_parser(options, "train.py", "", require_config=None)
    assert "--config" not in parser.format_help()
    assert vars(parser.parse_args(["--force"])) == {"force": True}
    assert vars(parser.parse_args([])) == {}
    with pytest.raises(UserError):
        parser.parse_args(["--config", "x.json"])
    for require_config, usage in (
        (True, " --config FILE.json "),
        (False, " [--config FILE.json] "),
    ):
        parser = build_parser(options, "train.py", "", require_config)
        assert usage in parser.format_usage()
        assert vars(parser.parse_args(["--config", "c.json"])) == {"config": "c.json"}
