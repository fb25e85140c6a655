"""Hugging Face interop for GPT-2: read, load and write GPT2LMHeadModel folders.

A folder is config.json (model_type "gpt2") and model.safetensors (or a sharded index). Our
variable names are Hugging Face's state-dict names with "/" for "." (`modeling_gpt2.hf_name`,
`ours_name`) and the layouts are the same (Conv1D weights [in, out]), so every conversion is a
rename: bitwise lossless for float32 weights. The LM head is tied: `lm_head.weight` is
`transformer.wte.weight`, which transformers does not store and ties again on loading; a stored
head must equal it.
"""

import json
import os
import shutil
import tempfile

import numpy as np

import checkpoints
import interop
import modeling_gpt2
from common.errors import UserError
from common.fileio import atomic_write_json, read_json
from model_config_gpt2 import FIELDS, GPT2Config

_HEAD = "lm_head.weight"
_WTE = "transformer.wte.weight"
# Stored dtypes widened to float32 on reading (exactly: both are subsets of float32).
_WIDENED = {"BF16": "bfloat16", "F16": "float16"}


def _stored_tensors(folder):
    """{Hugging Face name: (safetensors dtype string ("F32", "BF16", ...), file path)} from the file
    headers, after checking that each file is whole: a header that parses and tensor data that ends
    exactly where the file does (a truncated or corrupt file is a one-line UserError)."""
    stored = {}
    for path in interop.hf_weight_files(folder):
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                length = int.from_bytes(f.read(8), "little")
                if size < 8 or 8 + length > size:
                    raise ValueError(f"a {length}-byte header in a {size}-byte file")
                header = json.loads(f.read(length))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
            if end != size - 8 - length:
                raise ValueError(f"its tensors need {end} data bytes, it holds {size - 8 - length}")
            stored.update({k: (v["dtype"], path) for k, v in tensors.items()})
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror}") from None
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise UserError(
                f"{path} is truncated or corrupt ({err}); download or save it again"
            ) from None
    return stored


def read_hf_gpt2(folder):
    """Read a Hugging Face GPT-2 folder, strictly.

    Mask buffers (`attn.bias`, `attn.masked_bias` of old checkpoints) are dropped; a stored
    `lm_head.weight` must equal `transformer.wte.weight`; unknown, missing or misshapen tensors
    and dtypes other than float32/bfloat16/float16 are one-line UserErrors.

    Args:
      folder: directory with config.json and model.safetensors (or model.safetensors.index.json).
    Returns:
      (GPT2Config, {our name: float32 np.ndarray in `modeling_gpt2.create_params` order},
      notes: list of one-line strings, e.g. which tensors were widened to float32).
    """
    stored_as = _stored_tensors(folder)
    tensors, config_dict = interop.read_hf_folder(folder)
    where = os.path.join(folder, "config.json")
    if config_dict.get("model_type") != "gpt2":
        raise UserError(
            f"{where}: model_type is {config_dict.get('model_type')!r}, not 'gpt2'; "
            "this reads GPT-2 folders only (BERT folders go through interop.read_checkpoint)"
        )
    config = GPT2Config.from_hf_dict(config_dict, where=f"GPT-2 config {where}")
    notes = []
    # GPT2Model folders store the names without the "transformer." prefix.
    buffers, unknown, params, stored = [], [], {}, {}
    for hf in sorted(tensors):
        try:
            ours = modeling_gpt2.ours_name(hf)
        except ValueError:
            unknown.append(hf)
            continue
        if ours is None:
            buffers.append(hf)
        elif hf != _HEAD:
            params[ours], stored[ours] = tensors[hf], hf
    if unknown:
        raise UserError(
            f"{folder}: {len(unknown)} tensor(s) that are not GPT2LMHeadModel's: "
            f"{interop.shown_names(unknown)}"
        )
    if buffers:
        notes.append(f"dropped {len(buffers)} attention mask buffer(s) (attn.bias/masked_bias)")
    shapes = modeling_gpt2.variable_shapes(config)
    missing = [modeling_gpt2.hf_name(n) for n in shapes if n not in params]
    if missing:
        raise UserError(
            f"{folder} is incomplete for its config.json: {len(missing)} missing: "
            f"{interop.shown_names(missing)}"
        )
    extra = [stored[n] for n in params if n not in shapes]
    if extra:
        raise UserError(
            f"{folder}: {len(extra)} tensor(s) beyond config.json's n_layer {config.n_layer}: "
            f"{interop.shown_names(extra)}"
        )
    if _HEAD in tensors:
        if not np.array_equal(tensors[_HEAD], params["transformer/wte/weight"]):
            raise UserError(
                f"{folder}: {_HEAD} differs from {_WTE} (an untied LM head); GPT2Model ties them, "
                "so only tied GPT-2 checkpoints can be read"
            )
        notes.append(f"{_HEAD} equals {_WTE} (tied): not loaded separately")
    widened = {}
    for name, shape in shapes.items():
        hf = stored[name]
        dtype, path = stored_as[hf]
        if tuple(params[name].shape) != shape:
            raise UserError(
                f"{path}: {hf} has shape {list(params[name].shape)}, but {where} implies "
                f"{list(shape)}"
            )
        if dtype in _WIDENED:
            widened[dtype] = widened.get(dtype, 0) + 1
        elif dtype != "F32":
            raise UserError(f"{folder}: {hf} has dtype {dtype}; expected F32, BF16 or F16")
        params[name] = np.asarray(params[name], np.float32)
    for dtype, count in widened.items():
        notes.append(f"widened {count} {_WIDENED[dtype]} tensor(s) to float32")
    return config, {name: params[name] for name in shapes}, notes


def load_hf_gpt2(folder, model):
    """Assign a Hugging Face GPT-2 folder's weights to a `modeling_gpt2.GPT2Model`'s variables.

    The folder's architecture fields must equal `model.config`'s and every variable's shape its
    tensor's (one-line UserErrors naming the field or variable and both values).

    Returns:
      the notes of `read_hf_gpt2`.
    """
    config, params, notes = read_hf_gpt2(folder)
    differ = [
        f"{name} {getattr(config, name)!r} (model: {getattr(model.config, name)!r})"
        for name, field in FIELDS.items()
        if field.metadata["kind"] == "architecture"
        and getattr(config, name) != getattr(model.config, name)
    ]
    if differ:
        raise UserError(f"{folder}: config.json differs from the model's: {'; '.join(differ)}")
    missing = [n for n in model.params if n not in params]
    if missing:
        raise UserError(f"{folder} lacks model variable(s): {interop.shown_names(missing)}")
    for name, var in model.params.items():
        if tuple(var.shape) != params[name].shape:
            raise UserError(
                f"{folder}: variable {name} has shape {var.shape.as_list()}, "
                f"the folder's {modeling_gpt2.hf_name(name)} has {list(params[name].shape)}"
            )
    for name, var in model.params.items():
        var.assign(params[name])
    return notes


def write_hf_gpt2(folder, config, params):
    """Write a Hugging Face GPT2LMHeadModel folder that `from_pretrained` loads with no missing or
    unexpected keys: config.json (`config.to_hf_dict()`) and model.safetensors (float32, Hugging
    Face names and layouts, no `lm_head.weight`: transformers ties it to `transformer.wte.weight`).
    Each file is written to a temporary name and renamed.

    Args:
      folder: output directory (created if needed).
      config: GPT2Config.
      params: {our name: tf.Variable or np.ndarray}, exactly `modeling_gpt2.variable_shapes(config)`'s
        names and shapes (e.g. `GPT2Model.params`, or `read_hf_gpt2`'s dict).
    """
    shapes = modeling_gpt2.variable_shapes(config)
    unknown = [n for n in params if n not in shapes]
    missing = [n for n in shapes if n not in params]
    if unknown or missing:
        raise UserError(
            f"GPT-2 parameters do not match the config: missing {interop.shown_names(missing)}; "
            f"unknown {interop.shown_names(unknown)}"
        )
    tensors = {}
    for name, shape in shapes.items():
        value = np.asarray(params[name], np.float32)
        if value.shape != shape:
            raise UserError(
                f"GPT-2 parameter {name} has shape {list(value.shape)}, the config implies "
                f"{list(shape)}"
            )
        tensors[modeling_gpt2.hf_name(name)] = value
    os.makedirs(folder, exist_ok=True)
    interop.write_hf_folder(folder, tensors, config.to_hf_dict())


# ----------------------------------------------------------------------------- our checkpoints

# Tokenizer files of a GPT-2 folder, copied along by `convert` when the source has them.
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json")  # fmt: skip
_TORCH_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
OURS_PREFIX = "ckpt-0"  # the checkpoint hf2graphcore writes


def _is_model_name(name):
    """True for a name of GPT2Model's variables at any size (not a slot, counter or other state)."""
    try:
        return modeling_gpt2.ours_name(modeling_gpt2.hf_name(name)) == name
    except ValueError:
        return False


def _require_gpt2(config_path):
    """The config.json dict at `config_path`; one-line UserError unless its model_type is gpt2."""
    d = read_json(config_path, "model config")
    model_type = d.get("model_type") if isinstance(d, dict) else None
    if model_type != "gpt2":
        raise UserError(
            f"{config_path}: model_type is {model_type!r}, not 'gpt2': not a GPT-2 checkpoint"
        )
    return d


def source_kind(path):
    """What a GPT-2 source path is: "hf" (a Hugging Face GPT-2 folder: config.json with model_type
    gpt2 and model.safetensors or a sharded index) or "ours" (one of our run directories, or a
    checkpoint prefix, whose directory holds config.json with model_type gpt2). Anything else is a
    one-line UserError naming the file: a missing path, another model_type, PyTorch-only weights."""
    if os.path.isdir(path):
        config_path = os.path.join(path, "config.json")
        if not os.path.isfile(config_path):
            bert = os.path.isfile(os.path.join(path, "bert_config.json"))
            raise UserError(
                f"{config_path} not found"
                + (" (the folder has bert_config.json: a BERT checkpoint)" if bert else "")
                + ": a GPT-2 source is a Hugging Face folder or a GPT-2 run directory, each with "
                "config.json (model_type gpt2)"
            )
        _require_gpt2(config_path)
        if any(
            os.path.isfile(os.path.join(path, n)) for n in (interop.HF_WEIGHTS, interop.HF_INDEX)
        ):
            return "hf"
        torch_files = [n for n in _TORCH_WEIGHTS if os.path.isfile(os.path.join(path, n))]
        if torch_files:
            raise UserError(
                f"{os.path.join(path, torch_files[0])}: PyTorch pickle weights are not read; "
                "convert the folder once with transformers: GPT2LMHeadModel.from_pretrained(folder)"
                ".save_pretrained(folder, safe_serialization=True)"
            )
        if checkpoints.listed(path):
            return "ours"
        raise UserError(
            f"{path} has config.json but no weights: no {interop.HF_WEIGHTS} and no checkpoint "
            f"listed in a '{checkpoints.STATE_FILE}' file"
        )
    prefix = path[: -len(".index")] if path.endswith(".index") else path
    if os.path.isfile(prefix + ".index"):
        _require_gpt2(os.path.join(os.path.dirname(os.path.abspath(prefix)), "config.json"))
        return "ours"
    raise UserError(
        f"{path}: no such folder or checkpoint prefix (no {prefix}.index); give a Hugging Face "
        "GPT-2 folder, a GPT-2 run directory or a checkpoint prefix"
    )


def read_gpt2_checkpoint(path):
    """Read the GPT-2 weights of one of our checkpoints, strictly; slots and counters are ignored.

    Args:
      path: a run directory (its latest checkpoint) or a checkpoint prefix; config.json
        (`GPT2Config.to_hf_dict()`) must be in the checkpoint's directory.
    Returns:
      (GPT2Config, {our name: float32 np.ndarray in `modeling_gpt2.create_params` order}, notes).
    """
    import tensorflow as tf

    prefix = checkpoints.resolve(path)
    index = prefix + ".index"
    config_path = os.path.join(os.path.dirname(os.path.abspath(prefix)), "config.json")
    _require_gpt2(config_path)
    config = GPT2Config.from_json_file(config_path)
    stored = checkpoints.read_shapes(prefix)
    shapes = modeling_gpt2.variable_shapes(config)
    missing = [n for n in shapes if n not in stored]
    if missing:
        raise UserError(
            f"{index} lacks {len(missing)} variable(s) that {config_path} implies: "
            f"{interop.shown_names(missing)}"
        )
    extra = sorted(n for n in stored if _is_model_name(n) and n not in shapes)
    if extra:
        raise UserError(
            f"{index}: {len(extra)} variable(s) beyond {config_path}'s n_layer {config.n_layer}: "
            f"{interop.shown_names(extra)}"
        )
    for name, shape in shapes.items():
        if tuple(stored[name]) != shape:
            raise UserError(
                f"{index}: {name} has shape {list(stored[name])}, but {config_path} implies "
                f"{list(shape)}"
            )
    try:
        reader = tf.train.load_checkpoint(prefix)
        params = {name: reader.get_tensor(name) for name in shapes}
    except (tf.errors.OpError, ValueError) as err:
        raise UserError(
            f"cannot read checkpoint {prefix}: {getattr(err, 'message', err)}"
        ) from None
    notes = [f"GPT-2 checkpoint {prefix}"]
    for name, value in params.items():
        if value.dtype != np.float32:
            raise UserError(f"{index}: {name} has dtype {value.dtype}; expected float32")
    ignored = len(stored) - len(shapes)
    if ignored:
        notes.append(f"ignored {ignored} optimizer slot(s) and counter(s) (weights only)")
    return config, params, notes


def resolve_gpt2_source(path):
    """The GPT-2 weights behind a path, whatever it is (what --checkpoint-input-dir accepts).

    Args:
      path: a Hugging Face GPT2LMHeadModel/GPT2Model folder (config.json with model_type gpt2 and
        model.safetensors or a sharded index), one of our GPT-2 run directories (its latest
        checkpoint) or a checkpoint prefix (config.json beside it).
    Returns:
      (GPT2Config, {our name: float32 np.ndarray, exactly `modeling_gpt2.variable_shapes(config)`
      in that order}, notes: one-line strings, the first naming the source). Weights only: no
      optimizer slots, step or data position.
    Raises:
      UserError (one line naming the file and value): a missing path, another model_type,
      PyTorch-only weights, a truncated or corrupt safetensors file, tensors missing, unknown or
      contradicting the config.json sizes.
    """
    if source_kind(path) == "ours":
        return read_gpt2_checkpoint(path)
    config, params, notes = read_hf_gpt2(path)
    return config, params, [f"Hugging Face GPT-2 folder {path}", *notes]


def load_model(path):
    """A GPT-2 model holding the weights behind `path`, for inference (generation, evaluation,
    export).

    Args:
      path: anything `resolve_gpt2_source` accepts (a Hugging Face folder, one of our GPT-2 run
        directories, a checkpoint prefix).
    Returns:
      (modeling_gpt2.GPT2Model with its float32 variables assigned, notes: one-line strings).
    """
    config, params, notes = resolve_gpt2_source(path)
    model = modeling_gpt2.GPT2Model(config)
    for name, var in model.params.items():
        var.assign(params[name])
    return model, notes


# ----------------------------------------------------------------------------- conversion


def _same_bits(a, b):
    return set(a) == set(b) and all(
        a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and a[n].tobytes() == b[n].tobytes()
        for n in a
    )


def _commit(stage, out):
    """Moves the staged files into `out`: the whole directory if `out` does not exist, else file
    by file with the checkpoint index and state file last (they make a checkpoint visible)."""
    if not os.path.exists(out):
        os.rename(stage, out)
        return
    names = sorted(
        os.listdir(stage), key=lambda n: (n == checkpoints.STATE_FILE, n.endswith(".index"))
    )
    for name in names:
        os.replace(os.path.join(stage, name), os.path.join(out, name))


def resize_vocab(config, params, size):
    """(config, params, note) with `transformer/wte/weight` truncated or zero-padded to `size` rows
    (e.g. 50257 <-> 50272). The LM head is tied: a zero row is a zero logit for its id."""
    wte = params["transformer/wte/weight"]
    if size < 1:
        raise UserError(f"--vocab_size must be positive, got {size}")
    pad = np.zeros((max(size - wte.shape[0], 0), wte.shape[1]), wte.dtype)
    params = {**params, "transformer/wte/weight": np.concatenate([wte[:size], pad])}
    how = "truncated" if size < wte.shape[0] else "zero-padded (their logits are 0)"
    note = f"transformer/wte/weight {how} from {wte.shape[0]} to {size} rows"
    return config.replace(vocab_size=size), params, note


def convert(
    command, path, output_dir, force=False, report_file="conversion_report.json", vocab_size=None
):
    """hf2graphcore / graphcore2hf for GPT-2: rename only, bitwise lossless, verified.

    hf2graphcore writes `ckpt-0` (model weights under our names) with config.json
    (`GPT2Config.to_hf_dict()`), a run directory `resolve_gpt2_source` reads. graphcore2hf writes a
    GPT2LMHeadModel folder (`write_hf_gpt2`). Tokenizer files beside the source are copied.
    `vocab_size` (optional) resizes the token embedding (`resize_vocab`). The source is read and
    checked before anything is written; the output is staged in a temporary directory beside
    `output_dir`, read back and compared bitwise, then moved into place.

    Returns:
      the report dict (also written to `output_dir/report_file`).
    """
    wanted = {"hf2graphcore": "hf", "graphcore2hf": "ours"}
    if command not in wanted:
        raise UserError(
            f"{command} is for BERT; GPT-2 checkpoints convert with {' and '.join(wanted)}"
        )
    kind = source_kind(path)
    if kind != wanted[command]:
        other = next(c for c, k in wanted.items() if k == kind)
        what = "a Hugging Face GPT-2 folder" if kind == "hf" else "one of our GPT-2 checkpoints"
        raise UserError(f"{path} is {what}, not the input of {command}; use {other}")
    config, params, notes = resolve_gpt2_source(path)
    if vocab_size is not None and vocab_size != config.vocab_size:
        config, params, note = resize_vocab(config, params, vocab_size)
        notes.append(note)
    source_dir = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    tokenizer = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(source_dir, n))]
    if kind == "hf":
        written = [f"{OURS_PREFIX}.index", checkpoints.STATE_FILE, "config.json"]
    else:
        written = [interop.HF_WEIGHTS, "config.json"]
    out = os.path.abspath(output_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--output-dir {out} exists and is not a directory")
    clash = [n for n in [*written, *tokenizer, report_file] if os.path.exists(os.path.join(out, n))]
    if clash and not force:
        raise UserError(
            f"output exists: {', '.join(os.path.join(out, n) for n in clash)}; choose another "
            "--output_dir or pass --force"
        )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=os.path.dirname(out))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(stage, 0o777 & ~umask)
    try:
        if kind == "hf":
            interop.write_tf_checkpoint(os.path.join(stage, OURS_PREFIX), params)
            atomic_write_json(os.path.join(stage, "config.json"), config.to_hf_dict())
            back_config, back, _ = read_gpt2_checkpoint(stage)
            output = os.path.join(out, OURS_PREFIX)
        else:
            write_hf_gpt2(stage, config, params)
            back_config, back, _ = read_hf_gpt2(stage)
            output = out
        if back_config != config or not _same_bits(params, back):
            raise UserError(
                f"verification failed: what was written in {stage} reads back differently"
            )
        for name in tokenizer:
            shutil.copyfile(os.path.join(source_dir, name), os.path.join(stage, name))
        if not tokenizer:
            notes.append(f"no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}) beside the source")
        report = {
            "command": command,
            "source": path,
            "source_format": "hf" if kind == "hf" else "native",
            "output": output,
            "output_format": "native" if kind == "hf" else "hf",
            "tensors": len(params),
            "heads": ["lm (tied to transformer/wte/weight)"],
            "optimizer_state": "dropped (weights only)",
            "model_config": config.to_hf_dict(),
            "vocab_file": [os.path.join(out, n) for n in tokenizer],
            "verified": "output read back: every tensor bitwise equal to the source's",
            "notes": notes,
        }
        atomic_write_json(os.path.join(stage, report_file), report)
        _commit(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report
