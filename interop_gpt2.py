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

import numpy as np

import interop
import modeling_gpt2
from common.errors import UserError
from model_config_gpt2 import FIELDS, GPT2Config

_HEAD = "lm_head.weight"
_WTE = "transformer.wte.weight"
# Stored dtypes widened to float32 on reading (exactly: both are subsets of float32).
_WIDENED = {"BF16": "bfloat16", "F16": "float16"}


def _stored_dtypes(folder):
    """{Hugging Face name: safetensors dtype string ("F32", "BF16", ...)} from the file headers."""
    dtypes = {}
    for path in interop.hf_weight_files(folder):
        with open(path, "rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        dtypes.update({k: v["dtype"] for k, v in header.items() if k != "__metadata__"})
    return dtypes


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
    tensors, config_dict = interop.read_hf_folder(folder)
    where = os.path.join(folder, "config.json")
    if config_dict.get("model_type") != "gpt2":
        raise UserError(
            f"{where}: model_type is {config_dict.get('model_type')!r}, not 'gpt2'; "
            "this reads GPT-2 folders only (BERT folders go through interop.read_checkpoint)"
        )
    config = GPT2Config.from_hf_dict(config_dict, where=f"GPT-2 config {where}")
    dtypes, notes = _stored_dtypes(folder), []
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
        if tuple(params[name].shape) != shape:
            raise UserError(
                f"{folder}: {hf} has shape {list(params[name].shape)}, config.json implies "
                f"{list(shape)}"
            )
        dtype = dtypes[hf]
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
