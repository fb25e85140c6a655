#!/usr/bin/env python3
"""Convert BERT (and GPT-2) checkpoints between Google's TF1 format, Hugging Face folders and ours; export.

    python3 convert_ckpt.py google2graphcore <google checkpoint prefix or folder> [options]
    python3 convert_ckpt.py graphcore2google <our checkpoint prefix or run dir> [options]
    python3 convert_ckpt.py hf2graphcore <Hugging Face folder> [options]
    python3 convert_ckpt.py graphcore2hf <our checkpoint prefix or run dir> [options]
    python3 convert_ckpt.py export <our checkpoint prefix or run dir> [options]
    python3 convert_ckpt.py research2apps <GroupBERT research checkpoint prefix> [options]
    python3 convert_ckpt.py apps2research <our GroupBERT checkpoint prefix or run dir> [options]

"graphcore" is this project's native checkpoint (what --init-checkpoint and the fine-tuning scripts
load). Conversions are lossless by default: renames, transposes and Q/K/V concatenation only, every
model tensor and head kept, and the written files are read back and compared bitwise. They are
strict: an incomplete or unknown checkpoint is refused with the names. Optimizer slots and
counters are dropped unless --keep-optimizer-slots. Next to the output go bert_config.json (or
config.json) with the switches the weights need, the vocab, and conversion_report.json.

`export` writes a weights-only copy of a run's checkpoint with bert_config.json, the vocab, the
run's arguments.json and provenance.json (vocab sha256, code version), without optimizer state.

`research2apps` / `apps2research` rename GroupBERT checkpoints between Graphcore's internal
"research" names (all/..., GroupNorm, boomN, fused qkv and GLU weights) and the app's (ours), as
the reference's commands of those names; model tensors only, bitwise lossless.

RoBERTa (model_type roberta runs, position_offset 2) converts to and from Hugging Face's
RobertaForMaskedLM (or RobertaModel without heads), with the tokenizer.json copied alongside.
RobertaForMaskedLM has no pooler: graphcore2hf leaves ours out, hf2graphcore writes a zero one
(BertModel has a pooler; the MLM head never reads it).

GPT-2 (a Hugging Face folder or a run directory whose config.json has model_type gpt2) converts
with hf2graphcore / graphcore2hf to and from GPT2LMHeadModel folders: renames only, bitwise, the
tied LM head not stored, tokenizer files copied (interop_gpt2.convert); of the options only
--output_dir, --force and --vocab_size apply.
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import interop
from common.cli import Option, build_tool_parser
from common.errors import UserError, cli_main
from common.fileio import atomic_write_json, read_json

RESEARCH_COMMANDS = ("research2apps", "apps2research")
COMMANDS = (
    "google2graphcore", "graphcore2google", "hf2graphcore", "graphcore2hf", "export",
    *RESEARCH_COMMANDS,
)  # fmt: skip
SOURCE_FORMAT = {"google2graphcore": "google", "hf2graphcore": "hf"}
TARGET_FORMAT = {
    "google2graphcore": "native",
    "hf2graphcore": "native",
    "graphcore2google": "google",
    "graphcore2hf": "hf",
    "export": "native",
}
SWITCH_FLAGS = (
    ("use_qkv_bias", ("--use_qkv_bias", "--use-qkv-bias")),
    ("use_attention_projection_bias", ("--use_attention_bias", "--use-attention-bias")),
    ("use_prediction_bias", ("--use_prediction_bias", "--use-prediction-bias")),
    ("use_cls_layer", ("--use_cls_layer", "--use-cls-layer")),
)
REPORT_FILE = "conversion_report.json"


_SWITCH_HELP = (
    "true: write {} tensors (zeros if the source has none); false: drop them; "
    "default: as the source (Google/HF outputs always get the biases)"
)
CLI_OPTIONS = [
    Option("command", "str", None, "the conversion", positional=True, choices=COMMANDS),
    Option("checkpoint", "str", None, "checkpoint prefix, its directory, or an HF folder",
           positional=True),
    Option("output_dir", "str", "converted_ckpt", "where to write the converted checkpoint",
           metavar="DIR"),
    Option("vocab_size", "int", None, "truncate (rows >= N dropped) or zero-pad the word "
           "embeddings and MLM output bias to N rows; default keeps the checkpoint's size (the "
           "reference truncated to 30400)", metavar="N"),
    *(Option(key, "bool", None, _SWITCH_HELP.format(key), extra_flags=flags)
      for key, flags in SWITCH_FLAGS),
    Option("fuse_qkv", "bool", False, "graphcore output: one [H,3H] attention/self/kernel/"
           "qkv_weight per layer (use_qkv_split false) instead of query/key/value kernels "
           "(use_qkv_split true); export keeps the source layout"),
    Option("drop_heads", "str", "",
           f"comma-separated heads to leave out: {', '.join(interop.HEAD_PREFIXES)}"),
    Option("keep_optimizer_slots", "bool", False,
           "TF1 outputs: also carry optimizer slots and counters (global_step, ...)"),
    Option("bert_config_file", "str", None,
           "model config of a TF1 source (default: bert_config.json beside the checkpoint)",
           metavar="FILE"),
    Option("vocab_file", "str", None, "vocab to copy (default: vocab.txt beside the source, or "
           "the run's vocab_file)", metavar="FILE"),
    Option("num_embeddings_splits", "int", 1,
           "reference option; only 1 (one word-embedding table) is supported"),
    Option("force", "bool", False, "overwrite output files that already exist"),
]  # fmt: skip


def build_parser():
    return build_tool_parser(
        CLI_OPTIONS,
        prog="convert_ckpt.py",
        description=__doc__.split("\n\n")[0],
        epilog="Reference spellings (--output_dir) and kebab case (--output-dir) both work.",
        underscore_flags=True,
    )


# ----------------------------------------------------------------------------- editing


def _layers(fields):
    return [f"bert/encoder/layer_{i}" for i in range(fields["num_hidden_layers"])]


def _switch_tensors(key, fields):
    """{name: shape} of the tensors an optional switch adds."""
    h = fields["hidden_size"]
    if key == "use_qkv_bias":
        return {f"{x}/attention/self/{p}/bias": [h] for x in _layers(fields) for p in interop.QKV}
    if key == "use_attention_projection_bias":
        return {f"{x}/attention/projection/dense/bias": [h] for x in _layers(fields)}
    if key == "use_prediction_bias":
        return {"cls/predictions/output_bias": [fields["vocab_size"]]}
    return {
        "cls/predictions/transform/dense/kernel": [h, h],
        "cls/predictions/transform/dense/bias": [h],
        "cls/predictions/transform/LayerNorm/gamma": [h],
        "cls/predictions/transform/LayerNorm/beta": [h],
    }


def _resize_vocab(group, size):
    """Truncate or zero-pad the vocab axis of the word embeddings and MLM output bias."""
    out = dict(group)
    for name in ("bert/embeddings/word_embeddings", "cls/predictions/output_bias"):
        if name in out:
            value = out[name]
            if size <= value.shape[0]:
                out[name] = np.ascontiguousarray(value[:size])
            else:
                pad = np.zeros((size - value.shape[0], *value.shape[1:]), value.dtype)
                out[name] = np.concatenate([value, pad])
    return out


def edit(model, fields, args, target):
    """Apply --drop-heads, --vocab_size and the switch flags to canonical tensors.

    Returns:
      (model, notes): the edited {name: array} and what was changed, one line each.
    """
    model, notes = dict(model), []
    drop = [h.strip() for h in args.drop_heads.split(",") if h.strip()]
    for head in drop:
        if head not in interop.HEAD_PREFIXES:
            raise UserError(
                f"--drop-heads: unknown head {head!r}; use {list(interop.HEAD_PREFIXES)}"
            )
        gone = [n for n in model if n.startswith(interop.HEAD_PREFIXES[head])]
        for n in gone:
            del model[n]
        notes.append(
            f"dropped the {head} head ({len(gone)} tensors)" if gone else f"no {head} head"
        )
    vocab = model["bert/embeddings/word_embeddings"].shape[0]
    if args.vocab_size is not None and args.vocab_size != vocab:
        if args.vocab_size < 1:
            raise UserError(f"--vocab_size must be positive, got {args.vocab_size}")
        model = _resize_vocab(model, args.vocab_size)
        how = "truncated" if args.vocab_size < vocab else "zero-padded"
        notes.append(
            f"word embeddings and MLM output bias {how} from {vocab} to {args.vocab_size} rows"
        )
    fields = {**fields, **interop.shape_fields(model)}
    has_mlm = "mlm" in interop.heads_present(model)
    full = target in ("google", "hf")  # Google's and HF's code always create these tensors
    fmt_name = {"google": "Google's", "hf": "Hugging Face's"}.get(target)
    for key, _ in SWITCH_FLAGS:
        want = getattr(args, key)
        if key in ("use_prediction_bias", "use_cls_layer") and not has_mlm:
            continue
        tensors = _switch_tensors(key, fields)
        present = [n for n in tensors if n in model]
        if want is None:
            want = True if full else bool(present)
        if full and not want:
            raise UserError(f"{fmt_name} BERT always has the {key} tensors: do not set {key} false")
        if want and len(present) < len(tensors):
            if key == "use_cls_layer":
                raise UserError(
                    "the checkpoint has no MLM transform layer (use_cls_layer false) but "
                    + (
                        f"{fmt_name} BERT always applies one"
                        if full
                        else "--use_cls_layer asks for one"
                    )
                    + ": it cannot be made up; leave out the MLM head with --drop-heads mlm"
                )
            for n, shape in tensors.items():
                model.setdefault(n, np.zeros(shape, np.float32))
            notes.append(
                f"{key}: wrote {len(tensors) - len(present)} zero tensors the source lacks "
                "(a zero bias is the same model)"
            )
        elif not want and present:
            biggest = max(float(np.max(np.abs(model[n]))) for n in present)
            for n in present:
                del model[n]
            effect = (
                "outputs unchanged"
                if biggest == 0
                else f"max |value| {biggest:.3g}: outputs change"
            )
            notes.append(f"{key} false: dropped {len(present)} tensors ({effect})")
    if interop.is_roberta(fields):
        pooler = [n for n in interop.POOLER if n in model]
        if target == "hf" and has_mlm and pooler:
            for n in pooler:
                del model[n]
            notes.append(
                "RobertaForMaskedLM has no pooler: bert/pooler left out (MLM does not use it)"
            )
        elif target != "hf" and not pooler:
            h = fields["hidden_size"]
            model.update(
                zip(interop.POOLER, (np.zeros([h, h], np.float32), np.zeros([h], np.float32)))
            )
            notes.append("the source has no pooler (RobertaForMaskedLM): wrote a zero bert/pooler")
    return model, notes


# ----------------------------------------------------------------------------- outputs


def _check_writable(paths, force):
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not force:
        raise UserError(
            f"output exists: {', '.join(existing)}; choose another --output_dir or pass --force"
        )


def _find_vocab(args, source):
    if args.vocab_file:
        if not os.path.isfile(args.vocab_file):
            raise UserError(f"vocab file not found: {args.vocab_file}")
        return args.vocab_file
    return source.vocab_file  # found by the checkpoint resolver (interop.read_checkpoint)


def _copy_vocab(vocab_file, output_dir, size, notes):
    """Copies the vocab; truncates its lines when the embeddings were truncated."""
    if vocab_file is None:
        notes.append("no vocab found (pass --vocab_file to copy one)")
        return None
    with open(vocab_file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if size < len(lines):
        notes.append(f"vocab.txt truncated from {len(lines)} to {size} lines")
        lines = lines[:size]
    elif size > len(lines):
        notes.append(f"vocab.txt has {len(lines)} tokens for {size} embedding rows (rows unused)")
    out = os.path.join(output_dir, "vocab.txt")
    if os.path.abspath(vocab_file) != os.path.abspath(out):
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(out + ".tmp", out)
    return out


def _copy_tokenizer(source, output_dir, notes):
    """RoBERTa: copies tokenizer.json (+ vocab.json, merges.txt) from beside the source or from the
    run's tokenizer_file; returns the copied tokenizer.json path or None."""
    path = source.tokenizer_file  # found by the checkpoint resolver (interop.read_checkpoint)
    if path is None:
        notes.append("no tokenizer.json found beside the source or in its arguments.json")
        return None
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        src = path if name == "tokenizer.json" else os.path.join(os.path.dirname(path), name)
        dst = os.path.join(output_dir, name)
        if os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(dst):
            shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
    return os.path.join(output_dir, "tokenizer.json")


def _native_config(fields, fused):
    import modeling

    fields = {**fields, "use_qkv_split": not fused}
    return modeling.BertConfig.from_dict(fields).to_dict()


def _google_config(fields, notes):
    out = {k: fields[k] for k in interop.GOOGLE_CONFIG_KEYS if k in fields}
    # Google's code ignores this key; our loader reads it back, so a round trip keeps it.
    out["layer_norm_eps"] = fields.get("layer_norm_eps", interop.GOOGLE_LAYER_NORM_EPS)
    if out["layer_norm_eps"] != interop.GOOGLE_LAYER_NORM_EPS:
        notes.append(
            f"layer_norm_eps is {out['layer_norm_eps']}: Google's modeling.py hard-codes 1e-12, so "
            "run it with this epsilon to get the same outputs"
        )
    if out.get("hidden_act") not in interop.GOOGLE_ACTS:
        notes.append(f"hidden_act {out.get('hidden_act')!r} is not one Google's modeling.py knows")
    return out


def _roberta_architecture(heads):
    """(Hugging Face class, prefix of the encoder's names) for a RoBERTa with these heads."""
    if not heads:
        return "RobertaModel", ""
    if set(heads) == {"mlm"}:
        return "RobertaForMaskedLM", interop.ROBERTA_PREFIX
    raise UserError(
        f"a RoBERTa exports as RobertaForMaskedLM (mlm head only); it has {', '.join(heads)}: "
        "leave the others out with --drop-heads"
    )


def _hf_architecture(heads, notes):
    heads = set(heads)
    if not heads:
        return "BertModel", ""
    choices = (
        ({"mlm", "nsp"}, "BertForPreTraining"),
        ({"mlm"}, "BertForMaskedLM"),
        ({"nsp"}, "BertForNextSentencePrediction"),
        ({"squad"}, "BertForQuestionAnswering"),
        ({"classifier"}, "BertForSequenceClassification"),
    )
    for wanted, name in choices:
        if wanted <= heads:
            others = heads - wanted
            if others:
                notes.append(f"{name} has no {', '.join(sorted(others))} head: transformers will "
                             "report those tensors unexpected")  # fmt: skip
            if name in ("BertForMaskedLM", "BertForQuestionAnswering"):
                notes.append(
                    f"transformers' {name} has no pooler: it reports bert.pooler unexpected"
                )
            return name, "bert."
    raise AssertionError(heads)


def _write_tf(prefix, tensors, force):
    directory = os.path.dirname(prefix)
    _check_writable([prefix + ".index", os.path.join(directory, "bert_config.json")], force)
    interop.write_tf_checkpoint(prefix, tensors)


def _verify(written, path):
    """Reads the output back and compares it bitwise with what was meant to be written."""
    back = interop.read_checkpoint(path).model
    if set(back) != set(written):
        raise UserError(f"verification failed: {path} holds other tensors than were written")
    for name, value in written.items():
        if back[name].dtype != value.dtype or back[name].tobytes() != value.tobytes():
            raise UserError(f"verification failed: {name} in {path} differs from what was written")


def convert(args):
    """Runs one conversion command; returns the report dict (also written to the output dir)."""
    command, target = args.command, TARGET_FORMAT[args.command]
    if args.num_embeddings_splits != 1:
        raise UserError("--num_embeddings_splits: only 1 is supported (one word-embedding table)")
    source = interop.read_checkpoint(args.checkpoint, args.bert_config_file)
    wanted = SOURCE_FORMAT.get(command, "native")
    if source.format != wanted:
        hint = {"google": "google2graphcore", "hf": "hf2graphcore"}.get(
            source.format, "graphcore2*"
        )
        raise UserError(f"{source.path} is a {source.format} checkpoint, not {wanted}; use {hint}")
    if source.config is None:
        raise UserError(
            f"no model config beside {source.path} (bert_config.json): pass --bert_config_file"
        )
    if "num_attention_heads" not in source.config:
        raise UserError(f"the model config of {source.path} lacks num_attention_heads")
    interop.check_complete(source.model, source.config, source.path)
    notes = list(source.notes)
    if command == "export":
        args.drop_heads, args.vocab_size = "", None
    model, edit_notes = edit(source.model, source.config, args, target)
    notes += edit_notes
    fields = {**source.config, **interop.shape_fields(model)}
    out_dir = os.path.abspath(args.output_dir)
    os.makedirs(out_dir, exist_ok=True)
    keep_state = args.keep_optimizer_slots and command != "export"
    state, dropped = {}, sum(len(g) for g in source.slots.values()) + len(source.other)
    if keep_state:
        if target == "hf":
            raise UserError(
                "Hugging Face folders hold no optimizer state: drop --keep-optimizer-slots"
            )
        dropped = 0
        for suffix, group in source.slots.items():
            group = _resize_vocab(group, fields["vocab_size"])
            group = {n: v for n, v in group.items() if n in model}
            fused_group = interop.canonical_to_native(group, args.fuse_qkv)
            if target == "google":
                fused_group = interop.canonical_to_google(fused_group)
            state.update({f"{n}/{suffix}": v for n, v in fused_group.items()})
        state.update(source.other)
    base = os.path.basename(source.path) if source.format != "hf" else "ckpt-0"
    if target == "native":
        fused = source.fused if command == "export" else args.fuse_qkv
        tensors = interop.canonical_to_native(model, fused)
        config = _native_config(fields, fused)
        prefix = os.path.join(out_dir, base)
        _write_tf(prefix, {**tensors, **state}, args.force)
        atomic_write_json(os.path.join(out_dir, "bert_config.json"), config)
        output = prefix
    elif target == "google":
        tensors = interop.canonical_to_google(model)
        config = _google_config(fields, notes)
        prefix = os.path.join(out_dir, base)
        _write_tf(prefix, {**tensors, **state}, args.force)
        atomic_write_json(os.path.join(out_dir, "bert_config.json"), config)
        output = prefix
    else:
        heads = interop.heads_present(model)
        if interop.is_roberta(fields):
            architecture, hf_prefix = _roberta_architecture(heads)
        else:
            architecture, hf_prefix = _hf_architecture(heads, notes)
        labels = model["glue_loss/output_weights"].shape[0] if "classifier" in heads else None
        config = interop.hf_config(fields, architecture, labels)
        _check_writable([os.path.join(out_dir, interop.HF_WEIGHTS)], args.force)
        interop.write_hf_folder(out_dir, interop.canonical_to_hf(model, hf_prefix), config)
        output = out_dir
    _verify(model, output)
    if interop.is_roberta(fields):
        vocab = _copy_tokenizer(source, out_dir, notes)
    else:
        vocab = _copy_vocab(_find_vocab(args, source), out_dir, fields["vocab_size"], notes)
    report = {
        "command": command,
        "source": source.path,
        "source_format": source.format,
        "output": output,
        "output_format": target,
        "tensors": len(model),
        "heads": interop.heads_present(model),
        "optimizer_state": f"kept {len(state)}" if keep_state else f"dropped {dropped}",
        "model_config": config,
        "vocab_file": vocab,
        "verified": "output read back: every tensor bitwise equal to the converted values",
        "notes": notes,
    }
    if command == "export":
        report["provenance"] = _export_extras(source, out_dir, vocab)
    atomic_write_json(os.path.join(out_dir, REPORT_FILE), report)
    return report


# ----------------------------------------------------------------------------- export


def _code_version():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export_extras(source, out_dir, vocab):
    """Copies arguments.json and writes provenance.json; returns the provenance dict."""
    run_dir = os.path.dirname(source.path)
    arguments = os.path.join(run_dir, "arguments.json")
    do_lower_case = None
    if os.path.isfile(arguments):
        do_lower_case = read_json(arguments, "run arguments").get("do_lower_case")
        if os.path.abspath(arguments) != os.path.join(out_dir, "arguments.json"):
            shutil.copyfile(arguments, os.path.join(out_dir, "arguments.json"))
    provenance = {
        "source_checkpoint": source.path,
        "step": _step(source),
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "code_version": _code_version(),
        "arguments": "arguments.json" if os.path.isfile(arguments) else None,
        "vocab_sha256": _sha256(vocab) if vocab else None,
        "do_lower_case": do_lower_case,
        "contents": "model weights only: no optimizer slots, no step counter, no data position",
    }
    atomic_write_json(os.path.join(out_dir, "provenance.json"), provenance)
    return provenance


def _step(source):
    if "global_step" in source.other:
        return int(source.other["global_step"])
    import checkpoints

    return checkpoints.step_of(source.path)


# ----------------------------------------------------------------------------- GroupBERT research
#
# Graphcore's internal GroupBERT code ("research") named the same tensors differently from the app
# (ours): an `all/` prefix, GroupNorm for LayerNorm, `weight` for `dense/kernel`, conv/boomN for
# convolution/feed_forward_N, fused [H,3H] Q/K/V and [H,2H] GLU values|gates, the final norm
# under bert/encoder/post_layers. Renames and last-axis concatenations only: bitwise lossless.

RESEARCH_PREFIX = "all/"
_RESEARCH_FINAL_NORM = "all/bert/encoder/post_layers/GroupNorm/"
_APPS_FINAL_NORM = "LayerNorm/"  # modeling_groupbert.FINAL_NORM
_LAYER_NAME = re.compile(r"bert/encoder/layer_(\d+)/(.+)$")
_EMBEDDING_SLICE = re.compile(r"bert/embeddings/s(\d+)/word_embeddings$")
_KEY_BIAS = "attention/self/key/bias"
# research tensor = the app's tensors concatenated along the last axis, in this order.
_LAYER_CONCATS = {
    "attention/qkv/weight": tuple(f"attention/self/{p}/kernel" for p in interop.QKV),
    "conv/pre/weight": ("convolution/pre/glu/values/dense/kernel",
                        "convolution/pre/glu/gates/dense/kernel"),
    "conv/pre/bias": ("convolution/pre/glu/values/dense/bias",
                      "convolution/pre/glu/gates/dense/bias"),
}  # fmt: skip


def _layer_renames():
    """{app suffix: research suffix} of the 1:1 renames inside bert/encoder/layer_N/."""
    pairs = {
        "convolution/dwconv/weight": "conv/dwconv/weight",
        "convolution/post/dense/kernel": "conv/post/weight",
        "convolution/post/dense/bias": "conv/post/bias",
        "attention/self/query/bias": "attention/qkv/query/bias",
        "attention/self/value/bias": "attention/qkv/value/bias",
        "attention/projection/dense/kernel": "attention/output/weight",
        "attention/projection/dense/bias": "attention/output/bias",
    }
    norms = {"convolution/prenorm": "conv/prenorm", "convolution/dwconv": "conv/dwconv",
             "attention/prenorm": "attention/prenorm"}  # fmt: skip
    for n in (1, 2):
        apps, research = f"feed_forward_{n}", f"boom{n}"
        norms[f"{apps}/prenorm"] = f"{research}/prenorm"
        for a, r in (("intermediate", "up"), ("output", "down"), ("output/mixer", "mixer")):
            pairs[f"{apps}/{a}/dense/kernel"] = f"{research}/{r}/weight"
            pairs[f"{apps}/{a}/dense/bias"] = f"{research}/{r}/bias"
    for a, r in norms.items():
        pairs.update({f"{a}/LayerNorm/{p}": f"{r}/GroupNorm/{p}" for p in ("gamma", "beta")})
    return pairs


_TO_RESEARCH = _layer_renames()
_TO_APPS = {r: a for a, r in _TO_RESEARCH.items()}


def _unknown_error(source, unknown):
    return UserError(
        f"{source}: {len(unknown)} tensor(s) with no GroupBERT research/app name mapping: "
        f"{interop.shown_names(sorted(unknown))}"
    )


def apps_to_research(model, source="checkpoint"):
    """The app's GroupBERT tensors (canonical: split Q/K/V) -> research names.

    Returns:
      ({research name: array}, notes). The key bias is left out as the reference's converter did
      (it cancels in the softmax); a note says so if it was not zero.
    """
    out, notes, unknown, parts = {}, [], [], {}
    for name, value in model.items():
        match = _LAYER_NAME.match(name)
        if match is None:
            if name.startswith(_APPS_FINAL_NORM):
                out[_RESEARCH_FINAL_NORM + name[len(_APPS_FINAL_NORM) :]] = value
            else:
                out[RESEARCH_PREFIX + name.replace("LayerNorm", "GroupNorm")] = value
            continue
        layer, rest = match.groups()
        if rest in _TO_RESEARCH:
            out[f"{RESEARCH_PREFIX}bert/encoder/layer_{layer}/{_TO_RESEARCH[rest]}"] = value
        elif rest == _KEY_BIAS:
            if np.any(value):
                notes.append(f"layer {layer}: non-zero key bias left out (it cancels in softmax)")
        elif any(rest in group for group in _LAYER_CONCATS.values()):
            parts[name] = value
        else:
            unknown.append(name)
    if unknown:
        raise _unknown_error(source, unknown)
    layers = sorted({_LAYER_NAME.match(n).group(1) for n in parts}, key=int)
    for layer in layers:
        scope = f"bert/encoder/layer_{layer}/"
        for research, group in _LAYER_CONCATS.items():
            present = [scope + p for p in group if scope + p in parts]
            if present and len(present) < len(group):
                missing = [scope + p for p in group if scope + p not in parts]
                raise UserError(
                    f"{source}: {', '.join(missing)} missing (needed with {present[0]})"
                )
            if present:
                out[RESEARCH_PREFIX + scope + research] = np.concatenate(
                    [parts[p] for p in present], axis=-1
                )
    return out, notes


def research_to_apps(research, source="checkpoint"):
    """Research GroupBERT tensors -> the app's names (canonical: split Q/K/V).

    Word-embedding slices `s{i}/word_embeddings` are joined into one table; a zero key bias is
    added where the query bias exists (our model has the variable; zero is the same model).

    Returns:
      ({app name: array}, notes).
    """
    out, notes, unknown, slices = {}, [], [], {}
    for name, value in research.items():
        bare = name[len(RESEARCH_PREFIX) :] if name.startswith(RESEARCH_PREFIX) else name
        match = _LAYER_NAME.match(bare)
        if name.startswith(_RESEARCH_FINAL_NORM):
            out[_APPS_FINAL_NORM + name[len(_RESEARCH_FINAL_NORM) :]] = value
        elif _EMBEDDING_SLICE.match(bare):
            slices[int(_EMBEDDING_SLICE.match(bare).group(1))] = value
        elif match is None:
            out[bare.replace("GroupNorm", "LayerNorm")] = value
        elif match.group(2) in _TO_APPS:
            out[f"bert/encoder/layer_{match.group(1)}/{_TO_APPS[match.group(2)]}"] = value
        elif match.group(2) in _LAYER_CONCATS:
            group = _LAYER_CONCATS[match.group(2)]
            scope = f"bert/encoder/layer_{match.group(1)}/"
            for part, block in zip(group, np.split(value, len(group), axis=-1)):
                out[scope + part] = np.ascontiguousarray(block)
        else:
            unknown.append(name)
    if unknown:
        raise _unknown_error(source, unknown)
    if slices:
        out["bert/embeddings/word_embeddings"] = np.concatenate(
            [slices[i] for i in sorted(slices)], axis=0
        )
        notes.append(f"joined {len(slices)} word-embedding slices into one table")
    for name in [n for n in out if n.endswith("/attention/self/query/bias")]:
        key = name.replace("/query/", "/key/")
        if key not in out:
            out[key] = np.zeros_like(out[name])
    if any(n.endswith("/" + _KEY_BIAS) for n in out) and not any(
        n.endswith("/qkv/key/bias") for n in research
    ):
        notes.append("wrote zero key biases (the research layout has none; same outputs)")
    return out, notes


def _research_config(args, prefix, apps_tensors, notes):
    """Our bert_config.json fields for the converted model, or None if no config is at hand."""
    path = args.bert_config_file or os.path.join(os.path.dirname(prefix), "bert_config.json")
    if not os.path.isfile(path):
        notes.append(f"no model config ({path}): pass --bert_config_file to write bert_config.json")
        return None
    import modeling

    fields = {**read_json(path, "model config"), **interop.shape_fields(apps_tensors)}
    conv = apps_tensors.get("bert/encoder/layer_0/convolution/dwconv/weight")
    up = apps_tensors.get("bert/encoder/layer_0/feed_forward_1/intermediate/dense/kernel")
    down = apps_tensors.get("bert/encoder/layer_0/feed_forward_1/output/dense/kernel")
    fields["groupbert"] = True
    if conv is not None:
        fields["groupbert_conv_kernel_size"], fields["groupbert_conv_group_size"] = conv.shape[:2]
    if up is not None and down is not None:
        fields["intermediate_size"] = int(up.shape[1])
        fields["groupbert_ffn_output_groups"] = int(up.shape[1] // down.shape[0])
    fields["use_qkv_split"] = not args.fuse_qkv
    fields = {k: int(v) if isinstance(v, np.integer) else v for k, v in fields.items()}
    return modeling.BertConfig.from_dict(fields).to_dict()


def convert_research(args):
    """research2apps / apps2research; returns the report dict (also written to the output dir)."""
    _refuse_options(args, [key for key, _ in SWITCH_FLAGS] + ["drop_heads", "keep_optimizer_slots"])
    if args.num_embeddings_splits != 1:
        raise UserError("--num_embeddings_splits: only 1 is supported (one word-embedding table)")
    prefix = interop.resolve_tf_checkpoint(args.checkpoint)
    model, slots, other = interop.split_training_state(interop.read_tf_checkpoint(prefix))
    notes = []
    if args.command == "research2apps":
        research = {n: v for n, v in other.items() if n.startswith(RESEARCH_PREFIX)}
        if not research:
            raise UserError(f"{prefix} has no research GroupBERT tensors (names all/...)")
        apps, notes = research_to_apps(research, prefix)
        taken = len(research)
    else:
        apps = {**model, **{n: v for n, v in other.items() if n.startswith(_APPS_FINAL_NORM)}}
        if not any("/convolution/" in n for n in apps):
            raise UserError(f"{prefix} is not a GroupBERT checkpoint (no convolution modules)")
        taken = len(apps)
        apps = interop.native_to_canonical(apps)
    vocab = apps["bert/embeddings/word_embeddings"].shape[0]
    if args.vocab_size is not None and args.vocab_size != vocab:
        apps = _resize_vocab(apps, args.vocab_size)
        notes.append(
            f"word embeddings and MLM output bias resized from {vocab} to {args.vocab_size}"
        )
    config = _research_config(args, prefix, apps, notes)
    if args.command == "research2apps":
        tensors = interop.canonical_to_native(apps, args.fuse_qkv)
    else:
        tensors, more = apps_to_research(apps, prefix)
        notes += more
    out_dir = os.path.abspath(args.output_dir)
    os.makedirs(out_dir, exist_ok=True)
    output = os.path.join(out_dir, os.path.basename(prefix))
    _write_tf(output, tensors, args.force)
    back = interop.read_tf_checkpoint(output)
    if set(back) != set(tensors) or any(
        back[n].dtype != v.dtype or back[n].tobytes() != v.tobytes() for n, v in tensors.items()
    ):
        raise UserError(f"verification failed: {output} differs from what was written")
    if config is not None:
        atomic_write_json(os.path.join(out_dir, "bert_config.json"), config)
    dropped = sum(len(g) for g in slots.values()) + len(model) + len(other) - taken
    report = {
        "command": args.command,
        "source": prefix,
        "source_format": "research" if args.command == "research2apps" else "native",
        "output": output,
        "output_format": "native" if args.command == "research2apps" else "research",
        "tensors": len(tensors),
        "heads": interop.heads_present(apps),
        "optimizer_state": f"dropped {dropped}",
        "model_config": config or {},
        "vocab_file": None,
        "verified": "output read back: every tensor bitwise equal to the converted values",
        "notes": notes,
    }
    atomic_write_json(os.path.join(out_dir, REPORT_FILE), report)
    return report


# ----------------------------------------------------------------------------- GPT-2


def _refuse_options(args, keys):
    """One-line UserError naming the options among `keys` that were set: args.command ignores them."""
    given = [o.flags[0] for o in CLI_OPTIONS if o.key in keys and getattr(args, o.key) != o.default]
    if given:
        raise UserError(f"{args.command} does not take {', '.join(given)}")


def convert_gpt2(args):
    """hf2graphcore / graphcore2hf of a GPT-2 source (interop_gpt2.convert); returns the report."""
    import interop_gpt2  # imports TensorFlow: only when converting, so --help stays light

    _refuse_options(args, [o.key for o in CLI_OPTIONS if o.key not in _GPT2_KEYS])
    return interop_gpt2.convert(
        args.command, args.checkpoint, args.output_dir, args.force, REPORT_FILE, args.vocab_size
    )


_GPT2_KEYS = ("command", "checkpoint", "output_dir", "force", "vocab_size")
_CONVERTED_TYPES = (None, "bert", "roberta")


def _model_type(path):
    """The model_type of a config.json in a folder or beside a prefix (None if none)."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        return None
    d = read_json(config_path, "model config")
    model_type = d.get("model_type") if isinstance(d, dict) else None
    if model_type not in (*_CONVERTED_TYPES, "gpt2"):
        raise UserError(
            f"{config_path}: model_type {model_type!r} is not one this converts "
            "(bert, roberta, gpt2)"
        )
    return model_type


@cli_main
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command in RESEARCH_COMMANDS:
        report = convert_research(args)
    elif _model_type(args.checkpoint) == "gpt2":
        report = convert_gpt2(args)
    else:
        report = convert(args)
    print(f"{args.command}: {report['source']} ({report['source_format']}) -> {report['output']}")
    print(f"  {report['tensors']} model tensors, heads: {', '.join(report['heads']) or 'none'}; "
          f"optimizer state {report['optimizer_state']}")  # fmt: skip
    switches = ("use_qkv_split", "use_qkv_bias", "use_attention_projection_bias", "use_cls_layer",
                "use_prediction_bias", "layer_norm_eps", "hidden_act", "vocab_size")  # fmt: skip
    config = report["model_config"]
    shown = ", ".join(f"{k} {json.dumps(config[k])}" for k in switches if k in config)
    print(f"  model config (written beside it): {shown}")
    for note in report["notes"]:
        print(f"  note: {note}")
    print(f"  {report['verified']}; report: {os.path.join(args.output_dir, REPORT_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
