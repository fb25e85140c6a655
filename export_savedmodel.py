#!/usr/bin/env python3
"""Export one of our checkpoints as a TensorFlow SavedModel for serving.

    python3 export_savedmodel.py RUN_DIR --output_dir D [--task pretraining|encoder|classifier|squad]
    python3 export_savedmodel.py GPT2_RUN_OR_HF_FOLDER --output_dir D [--input-len 64 --output-len 128]

RUN_DIR is a run directory of run_pretraining.py, run_classifier.py or run_squad.py (its latest
checkpoint), a checkpoint prefix, or a Google/Hugging Face BERT checkpoint. The task defaults to
the run's (arguments.json), else to the heads the checkpoint has. Signatures `serving_default` and
the task's name take int32 `input_word_ids`, `input_mask`, `input_type_ids` [batch, seq]; the
outputs by task, the assets and the inference settings are in serving.py's docstring and the
README ("Serving"). GPT-2 models export task `generation`: `prefill`, `decode` (the key/value cache in
and out) and a greedy `generate` (serving_default) for prompts of --input-len and --output-len new
tokens (serving.build_gpt2). D is written under a temporary name and renamed into place; a non-empty D is
replaced only with --force.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import serving
from common.cli import Option, build_tool_parser
from common.errors import cli_main

CLI_OPTIONS = [
    Option("checkpoint", "str", None, "run directory, checkpoint prefix, or a Google/Hugging Face "
           "BERT checkpoint", positional=True),
    Option("output_dir", "str", None, "SavedModel directory to write", required=True,
           metavar="DIR"),
    Option("task", "str", None, "what to serve (default: the run's task, else the checkpoint's "
           "heads)", choices=serving.tasks()),
    Option("force", "bool", False, "replace a non-empty --output_dir"),
    Option("input_len", "int", None, "GPT-2: prompt width of the signatures (default 64)"),
    Option("output_len", "int", None, "GPT-2: tokens `generate` makes, cache slots beyond the "
           "prompt (default 128)"),
]  # fmt: skip


def build_parser():
    return build_tool_parser(
        CLI_OPTIONS,
        prog="export_savedmodel.py",
        description=__doc__.split("\n\n")[0],
        epilog="Reference spellings (--output_dir) and kebab case (--output-dir) both work.",
        underscore_flags=True,
    )


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    info, notes = serving.export(
        args.checkpoint,
        args.output_dir,
        args.task,
        args.force,
        input_len=args.input_len,
        output_len=args.output_len,
    )
    print(f"exported {info['task']} ({info['family']}) of {info['source']} -> {args.output_dir}")
    print(f"  signatures: {', '.join(info['signatures'])}; inputs: {', '.join(info['inputs'])}")
    shapes = ", ".join(f"{k} {v['dtype']} {v['shape']}" for k, v in info["outputs"].items())
    print(f"  outputs: {shapes}")
    assets = sorted(os.listdir(os.path.join(args.output_dir, "assets")))
    print(f"  assets: {', '.join(assets)}")
    for note in notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
