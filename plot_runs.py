#!/usr/bin/env python3
"""Training curves of one or more runs, read from their TensorBoard events, as one PNG.

    ./plot_runs.py checkpoints/pretraining_lamb_* -o curves.png
    ./plot_runs.py run_a run_b --labels lamb adam --tags 'loss/*' grad_norm -o cmp.png

One panel per tag pattern (default: losses, accuracies, learning rate, loss scaling and the two
throughputs); runs are overlaid, one colour each, against the step. Tags a run lacks are skipped.
"""

import fnmatch
import os

from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

from common.cli import Option, build_tool_parser, parse_tool_args
from common.errors import UserError, cli_main
from common.fileio import atomic_outputs, ensure_output_dir

PANELS = (  # (title, tag patterns); evaluation points join their training curves
    ("loss", ("loss/*", "eval/*loss")),
    ("accuracy", ("accuracy/*", "eval/*acc")),
    ("learning rate", ("learning_rate",)),
    ("loss scaling", ("loss_scaling",)),
    ("samples/s", ("samples_per_sec",)),
    ("tokens/s", ("tokens_per_sec",)),
)
STYLES = ("-", "--", ":", "-.")  # per tag within a panel; single points get MARKERS
MARKERS = ("o", "s", "^", "D")


CLI_OPTIONS = (
    Option("run_dirs", "str", None, "run directories", positional=True, nargs="+",
           metavar="RUN_DIR"),
    Option("output", "str", None, "the PNG to write", required=True, extra_flags=("-o",)),
    Option("tags", "str", None, "one panel per tag or shell pattern, e.g. 'loss/*' grad_norm "
           "(default: losses, accuracies, learning_rate, loss_scaling, samples_per_sec, "
           "tokens_per_sec)", nargs="+", metavar="PATTERN"),
    Option("labels", "str", None, "one legend label per run (default: its name)", nargs="+"),
    Option("dpi", "int", 80, "resolution"),
)  # fmt: skip


def build_parser():
    """The command line, from the schema machinery every script uses (common.cli)."""
    return build_tool_parser(
        CLI_OPTIONS,
        "plot_runs.py",
        description=__doc__.split("\n\n")[0],
        epilog="Give the run directories before --tags and --labels (those take several values).",
    )


def panel_series(runs, patterns):
    """[(label, tag, steps, values)] of every run's tags matching `patterns`, in pattern order."""
    series = []
    for label, scalars in runs:
        for pattern in patterns:
            for tag in sorted(fnmatch.filter(scalars, pattern)):
                series.append((label, tag, *scalars[tag]))
    return series


def plot(runs, panels, path, dpi):
    """Draws `panels` ([(title, patterns)]) for `runs` ([(label, {tag: (steps, values)})]) and
    writes the PNG atomically; panels no run has data for are left out."""
    filled = [(title, panel_series(runs, patterns)) for title, patterns in panels]
    filled = [(title, series) for title, series in filled if series]
    if not filled:
        wanted = ", ".join(p for _, patterns in panels for p in patterns)
        raise UserError(f"none of the runs has a tag matching {wanted}")
    columns = min(3, len(filled))
    rows = -(-len(filled) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="tight")
    axes = fig.subplots(rows, columns, squeeze=False)
    colours = {label: f"C{i}" for i, (label, _) in enumerate(runs)}
    for ax, (title, series) in zip(axes.flat, filled):
        tags = list(dict.fromkeys(tag for _, tag, _, _ in series))
        for label, tag, steps, values in series:
            name = tag if len(runs) == 1 else f"{label}: {tag}"
            style = STYLES[tags.index(tag) % len(STYLES)]
            marker = MARKERS[tags.index(tag) % len(MARKERS)] if len(steps) == 1 else None
            ax.plot(steps, values, style, color=colours[label], marker=marker, label=name, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize="small")
    for ax in axes.flat[len(filled) :]:
        ax.set_visible(False)
    with atomic_outputs([path]) as (out,):
        fig.savefig(out, format="png", dpi=dpi)


@cli_main
def main(argv=None):
    args = parse_tool_args(
        CLI_OPTIONS,
        argv,
        "plot_runs.py",
        description=__doc__.split("\n\n")[0],
        epilog="Give the run directories before --tags and --labels (those take several values).",
    )
    labels = args.labels or [os.path.basename(os.path.normpath(d)) for d in args.run_dirs]
    if len(labels) != len(args.run_dirs):
        raise UserError(f"--labels gives {len(labels)} labels for {len(args.run_dirs)} runs")
    ensure_output_dir(args.output)
    import runlog  # TensorFlow: after the cheap checks

    runs = [(label, runlog.read_scalars(d)) for label, d in zip(labels, args.run_dirs)]
    panels = [(pattern, (pattern,)) for pattern in args.tags] if args.tags else PANELS
    plot(runs, panels, args.output, args.dpi)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
