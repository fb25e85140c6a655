"""Command lines from a schema: typed options, checked values, flags and JSON config files.

An `Option` is one setting (key, type, default, help, group, ...). `build_parser` turns a list of
them into an argparse parser whose namespace holds only the flags given explicitly (kebab case:
`--micro-batch-size` sets `micro_batch_size`); `load_config` reads a JSON config and checks every
key and value against the same list. Tools without a config file (converters, data tools) use
`parse_tool_args`: positional and required options, and a namespace with every key filled in.
Errors are one-line `UserError`s with exit code 64.
"""

import argparse
import dataclasses
import difflib
import json
import sys

from common.errors import UserError
from common.fileio import read_json

EX_USAGE = 64  # os.EX_USAGE, which Windows lacks


@dataclasses.dataclass(frozen=True)
class Option:
    """One option; `type` is a key of `KINDS`, `scopes` lists the `SCOPES` accepting it."""

    key: str
    type: str
    default: object
    help: str
    group: str = ""
    scopes: tuple = ("common",)
    ipu_only: bool = False
    unused: bool = False
    choices: tuple | None = None
    aliases: tuple = ()  # (alias, canonical value) pairs
    extra_flags: tuple = ()  # other spellings, e.g. the reference's --enable_recomputation
    concern: str = ""  # which part of a run the option configures (options.CONCERNS)
    positional: bool = False  # a positional argument named `key` (tools only)
    nargs: object = None  # argparse nargs for lists, e.g. "+" (each item is checked)
    required: bool = False  # the flag must be given (tools only)
    metavar: str | None = None  # shown in --help instead of the type, e.g. "FILE"

    @property
    def flags(self):
        return (*self.extra_flags, "--" + self.key.replace("_", "-"))


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_step_dict(v):
    if not isinstance(v, dict) or not v or not all(map(_is_num, v.values())):
        return False
    return all(_is_int(k) or (isinstance(k, str) and k.strip().lstrip("-").isdigit()) for k in v)


KINDS = {  # type name -> (test, description)
    "int": (_is_int, "an integer"),
    "float": (_is_num, "a number"),
    "number": (_is_num, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "floats": (
        lambda v: _is_num(v) or (isinstance(v, list) and v and all(map(_is_num, v))),
        "a number or a list of numbers",
    ),
    "ints": (lambda v: isinstance(v, list) and v and all(map(_is_int, v)), "a list of integers"),
    "steps": (_is_step_dict, 'a JSON object {"step": number}'),
}


def check_value(opt, value):
    """Return `value` normalised for `opt` (alias resolved, int → float, "" → None).

    Raises:
      ValueError: with a message fragment such as "must be an integer, got str 'x'".
    """
    if value is None:
        if opt.default is None:
            return None
        raise ValueError(f"must be {KINDS[opt.type][1]}, got null")
    if opt.type == "str" and _is_int(value) and opt.choices and str(value) in opt.choices:
        value = str(value)  # "precision": 16 means "16"
    test, description = KINDS[opt.type]
    if not test(value):
        raise ValueError(f"must be {description}, got {type(value).__name__} {value!r}")
    if opt.type == "float":
        value = float(value)
    if opt.type == "str":
        value = dict(opt.aliases).get(value, value)
        if value == "" and opt.default is None:
            return None
    if opt.choices and value not in opt.choices:
        raise ValueError(f"must be one of {', '.join(opt.choices)}, got {value!r}")
    return value


def bool_from_text(text):
    """true/t/1/yes/y/on or false/f/0/no/n/off (any case) -> bool; ValueError otherwise."""
    lowered = text.strip().lower()
    if lowered in ("true", "t", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "f", "0", "no", "n", "off"):
        return False
    raise ValueError(text)


def _cli_converter(opt):
    """An argparse `type` turning the flag's text into a checked value."""

    def convert(text):
        try:
            if opt.type == "str":
                value = text
            elif opt.type == "bool":
                value = bool_from_text(text)
            elif opt.type == "int":
                value = int(text)
            elif opt.type == "float":
                value = float(text)
            elif opt.type == "number":
                value = int(text) if text.strip().lstrip("-").isdigit() else float(text)
            else:
                value = json.loads(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {KINDS[opt.type][1]}, got {text!r}"
            ) from None
        try:
            return check_value(opt, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = opt.type
    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)", exit_code=EX_USAGE)


def _describe_default(opt):
    text = json.dumps(opt.default)
    return text if opt.type != "bool" else text.replace("null", "auto")


def build_parser(options, script_name, description="", require_config=True):
    """An argparse parser for `options` whose namespace holds only the flags given explicitly.

    `require_config` True shows --config as required in the usage line, False as optional, and
    None leaves --config out altogether.
    """
    config = {True: " --config FILE.json", False: " [--config FILE.json]", None: ""}
    precedence = "flag > default" if require_config is None else "flag > config > default"
    parser = _Parser(
        prog=script_name,
        description=description,
        usage=f"{script_name} [--help]{config[require_config]} [--option VALUE ...]",
        epilog="Booleans: --flag, --flag true|false, --no-flag. Lists and dicts: JSON text. "
        f"Precedence: {precedence}.",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS,
    )
    if require_config is not None:
        parser.add_argument(
            "--config", metavar="FILE", help="JSON config file (keys = option names)"
        )
    groups = {}
    for opt in options:
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        note = " [IPU only]" if opt.ipu_only else ""
        text = f"{opt.help}{note} (default: {_describe_default(opt)})"
        _add_option(groups[opt.group], opt, opt.flags, text, argparse.SUPPRESS)
    return parser


def _add_option(group, opt, flags, text, default):
    """Add `opt` to an argparse group; booleans take --flag, --flag true|false and --no-flag."""
    metavar = opt.metavar or ("{" + ",".join(opt.choices) + "}" if opt.choices else None)
    kwargs = dict(type=_cli_converter(opt), help=text.replace("%", "%%"), default=default)
    if opt.nargs is not None:
        kwargs["nargs"] = opt.nargs
    if opt.positional:
        group.add_argument(opt.key, metavar=metavar or opt.key, **kwargs)
        return
    kwargs.update(dest=opt.key, metavar=metavar or opt.type.upper())
    if opt.required:
        kwargs["required"] = True
    if opt.type == "bool":
        kwargs.update(nargs="?", const=True, metavar="BOOL")
    group.add_argument(*flags, **kwargs)
    if opt.type == "bool":
        negations = [f"--no-{flag[2:]}" for flag in flags if flag.startswith("--")]
        group.add_argument(
            *negations,
            dest=opt.key,
            action="store_const",
            const=False,
            default=default,
            help=argparse.SUPPRESS,
        )


class _ToolParser(_Parser):
    """A `_Parser` that reads option values starting with "-" and keeps positionals after booleans.

    argparse takes `--layers -1,-2` for two flags and `--force CHECKPOINT` for a boolean given the
    value CHECKPOINT; the arguments are rewritten to `--layers=-1,-2` and `--force=true` first.
    """

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(self._attach_values(args), namespace)

    def _attach_values(self, args):
        actions = {flag: a for a in self._actions for flag in a.option_strings}
        out, i = [], 0
        while i < len(args):
            arg, following = args[i], args[i + 1] if i + 1 < len(args) else None
            action = actions.get(arg)
            if arg == "--":
                return out + args[i:]
            if action is None or following is None or action.nargs not in (None, "?"):
                out.append(arg)
            elif action.nargs == "?":  # a boolean: takes the next word only if it is one
                taken = _is_bool_text(following)
                out.append(f"{arg}={following if taken else 'true'}")
                i += taken
            elif following.startswith("-") and following.split("=")[0] not in actions:
                out.append(f"{arg}={following}")
                i += 1
            else:
                out.append(arg)
            i += 1
        return out


def _is_bool_text(text):
    try:
        bool_from_text(text)
    except ValueError:
        return False
    return True


def _describe_tool_default(opt):
    if opt.required:
        return " (required)"
    if opt.positional or opt.default is None:
        return ""
    return f" (default: {json.dumps(opt.default)})"


def build_tool_parser(options, prog, description="", epilog=None, underscore_flags=False):
    """An argparse parser for a tool without a config file; see `parse_tool_args`."""
    bools = "Booleans: --flag, --flag true|false, --no-flag."
    has_bool = any(o.type == "bool" and not o.positional for o in options)
    parser = _ToolParser(
        prog=prog,
        description=description,
        epilog=" ".join(filter(None, [epilog, bools if has_bool else None])) or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    groups = {}
    for opt in options:
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group) if opt.group else parser
        flags = opt.flags
        if underscore_flags and "_" in opt.key:
            flags = tuple(dict.fromkeys((*flags, "--" + opt.key)))
        text = f"{opt.help}{_describe_tool_default(opt)}"
        _add_option(groups[opt.group], opt, flags, text, opt.default)
    return parser


def parse_tool_args(
    options, argv=None, prog=None, description="", epilog=None, underscore_flags=False
):
    """Parse a tool's command line (no --config) into a namespace holding every option's key.

    Args:
      options: `Option`s; `positional`, `nargs` and `required` apply here. A key not given on
        the command line gets the option's default.
      argv: the arguments (default sys.argv[1:]).
      prog: the program name shown in usage and errors.
      description, epilog: --help text around the options.
      underscore_flags: also accept `--output_dir` for `--output-dir` (the reference's spelling).

    Returns:
      argparse.Namespace with one attribute per option key.

    Raises:
      UserError: one line, exit code 64, for an unknown flag, a missing or badly typed value.
        `--help` raises SystemExit(0) after printing help.
    """
    parser = build_tool_parser(options, prog, description, epilog, underscore_flags)
    return parser.parse_args(argv)


def load_config(path, options):
    """Read a JSON config, check every key and value against `options`; return {key: value}."""
    raw = read_json(path, "config")
    if not isinstance(raw, dict):
        raise UserError(f"config {path} must hold a JSON object {{key: value}}", EX_USAGE)
    by_key = {o.key: o for o in options}
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    unknown = [k for k in raw if k not in by_key]
    if unknown:
        hints = [m for k in unknown for m in difflib.get_close_matches(k, by_key, n=1)]
        hint = f"; did you mean {', '.join(hints)}?" if hints else ""
        raise UserError(f"unknown key(s) in config {path}: {', '.join(unknown)}{hint}", EX_USAGE)
    values = {}
    for key, value in raw.items():
        try:
            values[key] = check_value(by_key[key], value)
        except ValueError as err:
            raise UserError(f"config {path}: '{key}' {err}", EX_USAGE) from None
    return values


def warn_ipu_only(options, args, prog):
    """One stderr line naming the IPU-only options of a tool whose value in `args` (a
    `parse_tool_args` namespace) is not the default; they are accepted and change nothing."""
    changed = [o.flags[-1] for o in options if o.ipu_only and getattr(args, o.key) != o.default]
    if changed:
        print(
            f"warning: {prog}: IPU-only flags have no effect on CPU/GPU: {', '.join(changed)}",
            file=sys.stderr,
        )
