#!/usr/bin/env python3
"""Decode pretraining TFRecords back to text and print dataset statistics.

    python3 -m bert_data.inspect_records FILE [FILE ...] --vocab-file vocab.txt [-n 3]

Works on every layout (Google's standard features, the remask/static-mask layout and the packed
layout of `--packing`; detected per record). A packed row is shown sequence by sequence, and the
statistics add the packing efficiency: rows, sequences per row, real-token fraction unpacked and
packed.
Masked positions are shown as `[MASK](original)`, random replacements as `~token(original)` and kept ones
as `=token`; segment B follows the first [SEP]. Every record is read and CRC-checked for the statistics;
the first `-n` are printed.
"""

import os
import sys

if __package__ in (None, ""):  # run as a file: import from the repository root, not bert_data/
    sys.path[0] = os.path.dirname(os.path.abspath(sys.path[0]))

from bert_data.records import is_packed, parse_example, read_records, to_standard, unpack
from bert_data.tokenization import load_vocab
from common.cli import Option, parse_tool_args
from common.errors import UserError, cli_main


def render(std, inv_vocab, mask_id):
    """One instance as readable text."""
    length = int(std["input_mask"].sum())
    tokens = [inv_vocab.get(int(i), f"<{i}>") for i in std["input_ids"][:length]]
    weights = std["masked_lm_weights"]
    for p, label, w in zip(std["masked_lm_positions"], std["masked_lm_ids"], weights):
        if w <= 0:
            continue
        original = inv_vocab.get(int(label), f"<{label}>")
        shown = std["input_ids"][p]
        if shown == mask_id:
            tokens[p] = f"[MASK]({original})"
        elif shown == label:
            tokens[p] = f"={original}"
        else:
            tokens[p] = f"~{tokens[p]}({original})"
    nsp = "random next (label 1)" if std["next_sentence_labels"][0] else "actual next (label 0)"
    return " ".join(tokens), nsp


def inspect_files(files, vocab_file, n):
    """Prints the first `n` decoded records and statistics over all; returns the statistics dict."""
    vocab = load_vocab(vocab_file)
    inv_vocab = {i: t for t, i in vocab.items()}
    if "[MASK]" not in vocab:
        raise UserError(f"vocab {vocab_file} has no [MASK] token: wrong --vocab-file?")
    mask_id, unk_id = vocab["[MASK]"], vocab.get("[UNK]", -1)
    s = dict(records=0, sequences=0, most_per_row=0, real=0, seq=0, masked=0, as_mask=0, kept=0)
    s.update(random_next=0, unk=0)
    layouts = set()
    shown = 0
    for path in files:
        if not os.path.isfile(path):
            raise UserError(f"file not found: {path}")
        try:
            for index, record in enumerate(read_records(path)):
                ex = parse_example(record)
                packed = is_packed(ex)
                layouts.add("packed" if packed else "standard" if "input_mask" in ex else "remask")
                instances = unpack(ex) if packed else [to_standard(ex)]
                top = max(ex["input_ids"])
                if top >= max(inv_vocab) + 1:
                    raise UserError(
                        f"{path} record {index} has token id {top} >= vocab size "
                        f"{max(inv_vocab) + 1}: wrong --vocab-file?"
                    )
                s["records"] += 1
                s["seq"] += len(ex["input_ids"])
                s["sequences"] += len(instances)
                s["most_per_row"] = max(s["most_per_row"], len(instances))
                for number, std in enumerate(instances, 1):
                    _count(s, std, mask_id, unk_id)
                    if shown < n:
                        text, nsp = render(std, inv_vocab, mask_id)
                        part = f" sequence {number}/{len(instances)}" if packed else ""
                        print(f"--- {path} record {index}{part} [{nsp}]\n{text}\n")
                        shown += 1
        except (ValueError, IndexError, UnicodeDecodeError) as err:
            raise UserError(f"cannot read {path}: {err}") from None
    if not s["records"]:
        raise UserError(f"no records in {', '.join(files)}")
    r, m, q = s["records"], max(s["masked"], 1), s["sequences"]
    seq = s["seq"] // r
    print(f"files: {len(files)}  layout: {'/'.join(sorted(layouts))}  records: {r}")
    print(f"sequence length: {seq}  mean real tokens: {s['real'] / r:.2f}  "
          f"real-token fraction: {s['real'] / s['seq']:.4f}  [UNK] rate: {s['unk'] / max(s['real'], 1):.4f}")  # fmt: skip
    print(f"mean masked positions: {s['masked'] / q:.3f}  as [MASK]/kept/random: "
          f"{s['as_mask'] / m:.3f}/{s['kept'] / m:.3f}/{(m - s['as_mask'] - s['kept']) / m:.3f}")  # fmt: skip
    print(f"NSP random-next fraction: {s['random_next'] / q:.3f}")
    if "packed" in layouts:
        print(f"packing: {q} sequences in {r} rows, mean {q / r:.2f} per row (most {s['most_per_row']}); "
              f"real-token fraction unpacked -> packed: {s['real'] / (q * seq):.4f} -> {s['real'] / s['seq']:.4f}")  # fmt: skip
    return s


def _count(s, std, mask_id, unk_id):
    """Adds one instance (standard layout) to the statistics `s`."""
    w = std["masked_lm_weights"] > 0
    at = std["input_ids"][std["masked_lm_positions"]]
    s["real"] += int(std["input_mask"].sum())
    s["masked"] += int(w.sum())
    s["as_mask"] += int(((at == mask_id) & w).sum())
    s["kept"] += int(((at == std["masked_lm_ids"]) & w).sum())
    s["random_next"] += int(std["next_sentence_labels"][0])
    s["unk"] += int((std["input_ids"] == unk_id).sum())


CLI_OPTIONS = [
    Option("files", "str", None, "TFRecord files", positional=True, nargs="+", metavar="FILE"),
    Option(
        "vocab_file", "str", None, "the vocab the data was made with", required=True, metavar="FILE"
    ),
    Option("num_records", "int", 3, "records to print", extra_flags=("-n",)),
]


@cli_main
def main(argv=None):
    args = parse_tool_args(
        CLI_OPTIONS, argv, prog="python3 -m bert_data.inspect_records", description=__doc__
    )
    inspect_files(args.files, args.vocab_file, args.num_records)


if __name__ == "__main__":
    main()
