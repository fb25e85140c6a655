#!/usr/bin/env python3
"""Per-token BERT activations as JSON lines, like Google's extract_features.py.

    python3 extract_features.py --input-file sentences.txt --output-file features.jsonl \\
        --init-checkpoint <our checkpoint, Google checkpoint or Hugging Face folder> \\
        [--layers -1,-2] [--do-lower-case] [--max-seq-length 128]

Each input line is a sentence, or a pair `text a ||| text b`. Each output line is Google's layout,
`{"linex_index": i, "features": [{"token": "[CLS]", "layers": [{"index": -1, "values": [...]},
...]}, ...]}` over the real tokens, plus `"pooled_output": [...]` (the pooler's tanh output of
[CLS]). Layer indices count encoder layers (-1 = last). The model dimensions come from the
checkpoint folder's bert_config.json (config.json for Hugging Face), the vocab from the folder's
vocab.txt unless --vocab-file is given. Google's underscore spellings (--input_file) work too.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.cli import Option, build_tool_parser
from common.errors import UserError, cli_main

CLI_OPTIONS = [
    Option("input_file", "str", None, "sentences, or pairs `a ||| b`", required=True,
           metavar="FILE"),
    Option("output_file", "str", None, "JSON lines to write", required=True, metavar="FILE"),
    Option("init_checkpoint", "str", None, "our checkpoint (prefix or run dir), a Google TF1 "
           "checkpoint or a Hugging Face folder", required=True, metavar="PATH"),
    Option("layers", "str", "-1", "comma-separated encoder layer indices", metavar="I,J,..."),
    Option("bert_config_file", "str", None,
           "model config of a TF1 checkpoint (default: bert_config.json beside it)",
           metavar="FILE"),
    Option("vocab_file", "str", None, "default: vocab.txt beside the checkpoint", metavar="FILE"),
    Option("do_lower_case", "bool", False,
           "lower-case the text (uncased models); checked against the vocab"),
    Option("max_seq_length", "int", 128, "tokens per input, [CLS] and [SEP] included"),
    Option("batch_size", "int", 32, "inputs per model call"),
]  # fmt: skip


def build_parser():
    return build_tool_parser(
        CLI_OPTIONS,
        prog="extract_features.py",
        description=__doc__.split("\n\n")[0],
        underscore_flags=True,
    )


def read_examples(path):
    """[(line index, text_a, text_b or None)] for the non-empty lines of `path`."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise UserError(f"cannot read input file {path}: {err.strerror}") from None
    examples = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        a, sep, b = line.partition("|||")
        examples.append((index, a.strip(), b.strip() if sep else None))
    if not examples:
        raise UserError(f"input file {path} has no sentences")
    return examples


def _truncate_pair(a, b, max_length):
    """Google's rule: drop tokens from the end of the longer sequence until both fit."""
    while len(a) + len(b) > max_length:
        (a if len(a) > len(b) else b).pop()


def encode(tokenizer, examples, max_seq_length):
    """Google's [CLS] a [SEP] (b [SEP]) layout, truncated to max_seq_length.

    Returns:
      (tokens: list of token-string lists, input_ids, input_mask, segment_ids: int32
      np.ndarray [N, max_seq_length]).
    """
    import numpy as np

    texts = [t for _, a, b in examples for t in ((a,) if b is None else (a, b))]
    pieces = iter(tokenizer.encode_batch(texts))
    n = len(examples)
    ids = np.zeros([n, max_seq_length], np.int32)
    mask, segments, tokens = np.zeros_like(ids), np.zeros_like(ids), []
    cls_id, sep_id = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
    for row, (_, _, b) in enumerate(examples):
        a_ids = list(next(pieces))
        b_ids = list(next(pieces)) if b is not None else None
        if b_ids is None:
            a_ids = a_ids[: max_seq_length - 2]
            seq, seg = [cls_id, *a_ids, sep_id], [0] * (len(a_ids) + 2)
        else:
            _truncate_pair(a_ids, b_ids, max_seq_length - 3)
            seq = [cls_id, *a_ids, sep_id, *b_ids, sep_id]
            seg = [0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1)
        ids[row, : len(seq)], mask[row, : len(seq)], segments[row, : len(seq)] = seq, 1, seg
        tokens.append(tokenizer.convert_ids_to_tokens(seq))
    return tokens, ids, mask, segments


def all_layers(params, config, features):
    """Every encoder layer's output and the pooled output (inference, no dropout).

    modeling.bert_encoder returns only the last layer, so the layers are run here one by one with
    the same building blocks.

    Args:
      params: {name: tf.Variable} of a modeling.BertModel; config: modeling.BertConfig.
      features: input_ids, input_mask, segment_ids int32 [B,S].
    Returns:
      (list of num_hidden_layers float32 [B,S,H], pooled float32 [B,H]).
    """
    import tensorflow as tf

    import modeling

    x = modeling.embeddings(params, config, features["input_ids"], features["segment_ids"])
    mask = modeling.attention_mask(config, features)
    layers = []
    for i in range(config.num_hidden_layers):
        x = modeling.encoder_layer(params, config, i, x, mask)
        layers.append(x)
    kernel, bias = params["bert/pooler/dense/kernel"], params["bert/pooler/dense/bias"]
    pooled = tf.tanh(tf.matmul(x[:, 0], kernel) + bias)  # [B,H] from [CLS]
    return layers, pooled


def _layer_indices(text, num_layers):
    try:
        indices = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--layers must be comma-separated integers, got {text!r}") from None
    bad = [i for i in indices if not -num_layers <= i < num_layers]
    if bad or not indices:
        raise UserError(
            f"--layers {text!r}: indices must be in [-{num_layers}, {num_layers - 1}] "
            f"(the model has {num_layers} layers)"
        )
    return indices


def _find_vocab(args, source):
    if args.vocab_file:
        return args.vocab_file
    if source.vocab_file is None:  # the checkpoint resolver looked beside it and in arguments.json
        raise UserError(f"no vocab.txt beside {source.path}: pass --vocab-file")
    return source.vocab_file


def _rounded(values):
    return [round(float(v), 6) for v in values]


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)  # reads --layers -1,-2 as one value
    if args.max_seq_length < 3 or args.batch_size < 1:
        raise UserError("--max-seq-length must be >= 3 and --batch-size >= 1")
    examples = read_examples(args.input_file)

    import tensorflow as tf

    import interop
    import modeling
    from bert_data import tokenization

    config, source = interop.inference_config(args.init_checkpoint, args.bert_config_file)
    if args.max_seq_length > config.max_position_embeddings:
        raise UserError(
            f"--max-seq-length {args.max_seq_length} exceeds the model's "
            f"max_position_embeddings {config.max_position_embeddings}"
        )
    layer_indices = _layer_indices(args.layers, config.num_hidden_layers)
    vocab_file = _find_vocab(args, source)
    tokenizer = tokenization.FullTokenizer(vocab_file, args.do_lower_case)
    tokenization.check_special_tokens(tokenizer.vocab, vocab_file, tokenization.TASK_SPECIAL_TOKENS)
    tokenization.check_casing(tokenizer.vocab, args.do_lower_case, vocab_file)
    if tokenizer.vocab_size > config.vocab_size:
        raise UserError(
            f"vocab {vocab_file} has {tokenizer.vocab_size} tokens, the model {config.vocab_size}"
        )
    model = modeling.BertModel(config, heads=())
    report = interop.load_into(source, model.params)
    print(report.summary(), file=sys.stderr)

    spec = tf.TensorSpec([None, args.max_seq_length], tf.int32)

    @tf.function(input_signature=[spec, spec, spec])
    def run(input_ids, input_mask, segment_ids):
        features = {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids}
        layers, pooled = all_layers(model.params, config, features)
        return [layers[i] for i in layer_indices], pooled

    tokens, ids, mask, segments = encode(tokenizer, examples, args.max_seq_length)
    out_dir = os.path.dirname(os.path.abspath(args.output_file))
    os.makedirs(out_dir, exist_ok=True)
    temp = args.output_file + ".tmp"
    with open(temp, "w", encoding="utf-8") as f:
        for start in range(0, len(examples), args.batch_size):
            end = start + args.batch_size
            layers, pooled = run(ids[start:end], mask[start:end], segments[start:end])
            layers = [layer.numpy() for layer in layers]
            for row in range(layers[0].shape[0]):
                example = start + row
                features = [
                    {
                        "token": token,
                        "layers": [
                            {"index": index, "values": _rounded(layer[row, position])}
                            for index, layer in zip(layer_indices, layers)
                        ],
                    }
                    for position, token in enumerate(tokens[example])
                ]
                line = {
                    "linex_index": examples[example][0],
                    "features": features,
                    "pooled_output": _rounded(pooled[row].numpy()),
                }
                f.write(json.dumps(line) + "\n")
    os.replace(temp, args.output_file)
    print(f"wrote {len(examples)} lines to {args.output_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
