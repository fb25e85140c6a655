"""SavedModel export for serving: a checkpoint's model as named signatures, one entry per family.

`export(path, output_dir, task)` finds the model family of a checkpoint (`model_family`), asks that
family's builder (`FAMILIES`) for the functions to serve and the files to ship with them
(`Exportable`), and writes one TensorFlow SavedModel: the signatures, the float32 weights, and
under `assets/` the tokenizer files, the model config and `export_info.json` (task, signatures,
inputs, outputs, casing, labels). The directory is written under a temporary name beside the
output and renamed into place, so nothing half-written remains; a non-empty output directory is
replaced only with `force`. A new family is one more entry in `FAMILIES`.

BERT family (BERT, GroupBERT, RoBERTa-style runs; native, Google or Hugging Face checkpoints):
inputs as TF Model Garden's BERT exports, int32 [batch, seq] each, any batch and any seq up to
max_position_embeddings - position_offset: `input_word_ids`, `input_mask` (1 = real token),
`input_type_ids`. Outputs by task (signatures `serving_default` and the task's name):
  encoder      pooled_output [B,H], sequence_output [B,S,H]
  pretraining  mlm_logits [B,S,V] (every slot), nsp_logits [B,2] (when the model has the NSP head)
  classifier   logits [B,C], probabilities [B,C]; regression (one output, STS-B): logits [B,1],
               score [B]
  squad        start_logits [B,S], end_logits [B,S]
Inference only: float32, no dropout. The graph holds plain TensorFlow ops: no function is marked
for XLA (`modeling_ops.plain_kernels`; TensorFlow Serving leaves XLA off by default) and
GroupBERT's grouped convolution and projection take their portable forms (shifted products and an
einsum; TensorFlow's grouped conv exists on CPU only in oneDNN builds).

GPT-2 family (Hugging Face GPT-2 folders, train_gpt2.py runs): task `generation`, signatures
`prefill`, `decode` and `generate` (= serving_default) over generation_gpt2's key/value cache; see
`build_gpt2`.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import NamedTuple

import interop
from common.errors import UserError
from common.fileio import read_json

DEFAULT_SIGNATURE = "serving_default"
INFO_FILE = "export_info.json"
INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
# Our feature names for the Model Garden input names.
_FEATURE_OF_INPUT = {
    "input_word_ids": "input_ids",
    "input_mask": "input_mask",
    "input_type_ids": "segment_ids",
}


@dataclasses.dataclass
class Exportable:
    """What a family's builder returns for `export` to save.

    Attributes:
      module: tf.Module tracking every variable the signatures read.
      signatures: {signature name: concrete function}; `serving_default` among them.
      assets: {file name under assets/: path of a file to copy there, or a dict to write as JSON}.
      info: JSON-serialisable description, written as assets/export_info.json.
      notes: one-line remarks for the user (what was loaded).
    """

    module: object
    signatures: dict
    assets: dict
    info: dict
    notes: list


class Family(NamedTuple):
    """A model family's exporter."""

    tasks: tuple  # the tasks it exports
    build: Callable  # (checkpoint path, task or None = inferred) -> Exportable


# ----------------------------------------------------------------------------- BERT family

BERT_TASKS = ("pretraining", "encoder", "classifier", "squad")
_TASK_OF_RUN = {"pretraining": "pretraining", "SQuAD": "squad", "GLUE": "classifier"}
_HEAD_OF_TASK = {"pretraining": "mlm", "squad": "squad", "classifier": "classifier"}


def _bert_task(source, args, task):
    """The task to export: `task`, else the run's (arguments.json), else the heads present."""
    heads = interop.heads_present(source.model)
    run_task = _TASK_OF_RUN.get(args.get("task"))
    if run_task == "pretraining":
        # The MLM projection is the word-embedding table: without use_cls_layer and
        # use_prediction_bias the head has no tensors of its own.
        heads.append("mlm")
    if task is None:
        task = run_task
    if task is None:
        found = [t for t in ("squad", "classifier") if t in heads]
        if len(found) > 1:
            raise UserError(
                f"{source.path} has both SQuAD and classifier heads: pass --task squad or "
                "--task classifier"
            )
        task = found[0] if found else "pretraining" if "mlm" in heads else "encoder"
    head = _HEAD_OF_TASK.get(task)
    if head is not None and head not in heads:
        raise UserError(
            f"{source.path} has no {head} head ({interop.HEAD_PREFIXES[head]}*): it cannot be "
            f"exported as --task {task}; use --task encoder or a checkpoint of that task"
        )
    return task


def _labels(args, num_outputs):
    """The GLUE task's label names in output order, when the run says which task (else None)."""
    from bert_data import glue

    name = args.get("task_name")
    if args.get("task") != "GLUE" or not name or num_outputs < 2:
        return None
    try:
        labels = glue.get_task(name).labels
    except UserError:  # e.g. "synthetic" (generated data)
        return None
    return list(labels) if labels is not None and len(labels) == num_outputs else None


def _bert_outputs(params, config, task, heads, features):
    """{output name: float32 tensor} of `task` for our features (inference, float32)."""
    import tensorflow as tf

    import modeling

    # xla=True selects GroupBERT's portable grouped ops (see the module docstring).
    if task == "classifier":
        pooled = modeling.bert_pooled_output(params, config, features, xla=True)
        weights, bias = (params[n] for n in interop.head_variables("classifier"))
        logits = modeling.classifier_logits(pooled, weights, bias)  # [B,C]
        if logits.shape[-1] == 1:
            return {"logits": logits, "score": logits[:, 0]}
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}
    sequence_output, pooled = modeling.bert_encoder(params, config, features, xla=True)
    if task == "encoder":
        return {"pooled_output": pooled, "sequence_output": sequence_output}
    if task == "squad":
        weights, bias = (params[n] for n in interop.head_variables("squad"))
        start, end = modeling.span_logits(sequence_output, weights, bias)
        return {"start_logits": start, "end_logits": end}
    # No masked_lm_positions: the MLM head scores every slot.
    return modeling.pretraining_heads(params, config, sequence_output, pooled, {}, heads)


def build_bert(path, task=None, **lengths):
    """`Exportable` of a BERT-family checkpoint (see the module docstring); task None = inferred.
    `lengths` (GPT-2's input_len/output_len) are refused: sequences are any length here."""
    if lengths:
        flags = ", ".join("--" + k.replace("_", "-") for k in lengths)
        raise UserError(f"{flags}: GPT-2 exports only (BERT signatures take any length)")
    import tensorflow as tf

    import modeling
    import modeling_ops

    config, source = interop.inference_config(path)
    directory = source.path if os.path.isdir(source.path) else os.path.dirname(source.path)
    args = interop.run_arguments(directory) if source.format == "native" else {}
    task = _bert_task(source, args, task)
    heads = ()
    if task == "pretraining":  # MLM (checked by _bert_task), NSP when the checkpoint has it
        heads = ("mlm", "nsp") if "nsp" in interop.heads_present(source.model) else ("mlm",)
    model = modeling.BertModel(config, heads=heads)
    if task in ("squad", "classifier"):
        for name in interop.head_variables(task):
            shape = list(source.model[name].shape)
            modeling_ops.add_variable(model.params, name, shape, "zeros")
    report = interop.load_into(source, model.params)
    params = model.params

    max_length = config.max_position_embeddings - config.position_offset
    spec = [tf.TensorSpec([None, None], tf.int32, name=name) for name in INPUTS]

    def serve(input_word_ids, input_mask, input_type_ids):
        length = tf.shape(input_word_ids)[1]
        checks = [
            tf.debugging.assert_less_equal(
                length, max_length, message=f"sequence length exceeds max_seq_length {max_length}"
            ),
            tf.debugging.assert_equal(tf.shape(input_mask), tf.shape(input_word_ids)),
            tf.debugging.assert_equal(tf.shape(input_type_ids), tf.shape(input_word_ids)),
        ]
        with tf.control_dependencies(checks):
            inputs = (tf.identity(input_word_ids), input_mask, input_type_ids)
        features = {_FEATURE_OF_INPUT[n]: x for n, x in zip(INPUTS, inputs)}
        return _bert_outputs(params, config, task, heads, features)

    with modeling_ops.plain_kernels():
        concrete = tf.function(serve, input_signature=spec).get_concrete_function()
    module = tf.Module()
    module.model = model

    assets = {"bert_config.json": config.to_dict()}
    tokenizer = None
    if source.vocab_file:
        tokenizer = assets["vocab.txt"] = source.vocab_file
    if source.tokenizer_file:  # RoBERTa-style runs: byte-level BPE
        tokenizer = assets["tokenizer.json"] = source.tokenizer_file
    outputs = {
        name: {"dtype": t.dtype.name, "shape": t.shape.as_list()}
        for name, t in concrete.structured_outputs.items()
    }
    info = {
        "family": "bert",
        "task": task,
        "source": os.path.abspath(source.path),
        "source_format": source.format,
        "signatures": [DEFAULT_SIGNATURE, task],
        "inputs": {n: {"dtype": "int32", "shape": [None, None]} for n in INPUTS},
        "outputs": outputs,
        "max_seq_length": max_length,
        "model_type": "roberta" if interop.is_roberta(config.to_dict()) else "bert",
        "groupbert": config.groupbert,
        "tokenizer": os.path.basename(tokenizer) if tokenizer else None,
        "do_lower_case": source.do_lower_case,
    }
    if task == "classifier":
        info["labels"] = _labels(args, outputs["logits"]["shape"][-1])
    notes = [report.summary()]
    if tokenizer is None:
        notes.append(f"no vocab.txt or tokenizer.json found for {source.path}: none exported")
    return Exportable(module, {DEFAULT_SIGNATURE: concrete, task: concrete}, assets, info, notes)


# ----------------------------------------------------------------------------- GPT-2

GPT2_TASKS = ("generation",)
GPT2_LENGTHS = {"input_len": 64, "output_len": 128}  # text_generate_gpt2.py's defaults


def build_gpt2(path, task=None, input_len=None, output_len=None):
    """`Exportable` of a GPT-2 model (a Hugging Face folder or one of our runs): task "generation",
    whose signatures share a key/value cache of T = input_len + output_len slots
    (generation_gpt2's layout; batch B free, prompt width P = input_len fixed):
      prefill(input_ids int32 [B,P] right-padded, lengths int32 [B]) -> logits [B,V] after each
        prompt's last token, cache float32 [L,2,B,N,T,d]
      decode(token int32 [B], lengths int32 [B], step int32 [] (0 for the first generated token),
        cache) -> logits [B,V] of the token after `token`, cache; `token` sits at slot P + step,
        position lengths + step
      generate / serving_default(input_ids, lengths) -> tokens int32 [B,output_len], greedy, no
        stop token
    """
    import tensorflow as tf

    import generation_gpt2
    import interop_gpt2
    import modeling_ops
    from gpt2_data import tokenizer

    input_len = input_len or GPT2_LENGTHS["input_len"]
    output_len = output_len or GPT2_LENGTHS["output_len"]
    model, notes = interop_gpt2.load_model(path)
    config, params = model.config, model.params
    if input_len + output_len > config.n_positions:
        raise UserError(
            f"--input-len {input_len} + --output-len {output_len} exceeds the model's "
            f"{config.n_positions} positions"
        )
    slots, f32 = input_len + output_len, tf.float32
    n_layer = config.n_layer
    ids_spec = tf.TensorSpec([None, input_len], tf.int32, name="input_ids")
    lengths_spec = tf.TensorSpec([None], tf.int32, name="lengths")
    cache_spec = tf.TensorSpec(
        [n_layer, 2, None, config.n_head, slots, config.head_size], f32, name="cache"
    )

    def weights():
        return generation_gpt2.inference_weights(params, f32)

    def prefill(input_ids, lengths):
        logits, cache, _ = generation_gpt2.prefill(
            params, weights(), config, input_ids, lengths, slots, f32
        )
        return {"logits": logits, "cache": generation_gpt2.stack_cache(cache)}

    def decode(token, lengths, step, cache):
        slot = input_len + step
        key_mask = (tf.range(slots)[tf.newaxis, :] < lengths[:, tf.newaxis]) | (
            (tf.range(slots) >= input_len) & (tf.range(slots) < slot)
        )[tf.newaxis, :]  # [B,T]: the prompt and the tokens fed before this one
        logits, cache, _ = generation_gpt2.decode_step(
            params,
            weights(),
            config,
            token,
            lengths + step,
            slot,
            generation_gpt2.unstack_cache(cache, n_layer),
            key_mask,
            f32,
        )
        return {"logits": logits, "cache": generation_gpt2.stack_cache(cache)}

    def generate(input_ids, lengths):
        tokens, _ = generation_gpt2.generate(
            params,
            config,
            input_ids,
            lengths,
            tf.constant(0, tf.int64),
            output_len=output_len,
            sampling=generation_gpt2.Sampling(greedy=True),
            dtype=f32,
        )
        return {"tokens": tokens}

    token_spec = tf.TensorSpec([None], tf.int32, name="token")
    step_spec = tf.TensorSpec([], tf.int32, name="step")
    with modeling_ops.plain_kernels():
        signatures = {
            "prefill": tf.function(prefill).get_concrete_function(ids_spec, lengths_spec),
            "decode": tf.function(decode).get_concrete_function(
                token_spec, lengths_spec, step_spec, cache_spec
            ),
            "generate": tf.function(generate).get_concrete_function(ids_spec, lengths_spec),
        }
    signatures[DEFAULT_SIGNATURE] = signatures["generate"]
    module = tf.Module()
    module.model = model
    assets = {"config.json": config.to_hf_dict()}
    files = tokenizer.files_beside(path)
    if files:
        assets["vocab.json"], assets["merges.txt"] = files
    else:
        notes.append(f"no vocab.json and merges.txt beside {path}: no tokenizer exported")
    info = {
        "family": "gpt2",
        "task": "generation",
        "source": os.path.abspath(path),
        "signatures": sorted(signatures),
        "inputs": {"input_ids": {"dtype": "int32", "shape": [None, input_len]},
                   "lengths": {"dtype": "int32", "shape": [None]}},
        "outputs": {f"{name}.{k}": {"dtype": t.dtype.name, "shape": t.shape.as_list()}
                    for name, fn in sorted(signatures.items()) if name != DEFAULT_SIGNATURE
                    for k, t in fn.structured_outputs.items()},
        "input_len": input_len,
        "output_len": output_len,
        "cache_slots": slots,
        "tokenizer": "vocab.json" if files else None,
    }  # fmt: skip
    return Exportable(module, signatures, assets, info, list(notes))


# ----------------------------------------------------------------------------- families

FAMILIES = {"bert": Family(BERT_TASKS, build_bert), "gpt2": Family(GPT2_TASKS, build_gpt2)}
# config.json model_type -> family (a Hugging Face folder or a run that writes config.json).
_FAMILY_OF_MODEL_TYPE = {"bert": "bert", "roberta": "bert", "gpt2": "gpt2"}


def tasks():
    """Every task some family exports (the command line's choices)."""
    return tuple(dict.fromkeys(t for f in FAMILIES.values() for t in f.tasks))


def model_family(path):
    """The family of the checkpoint at `path` (a run directory, checkpoint prefix or HF folder):
    the model_type of a config.json beside it, else "bert" (bert_config.json, arguments.json or a
    Google checkpoint). One-line UserError for a missing path or an unknown model_type."""
    prefix = path[: -len(".index")] if path.endswith(".index") else path
    if os.path.isdir(path):
        directory = path
    elif os.path.isfile(prefix + ".index"):
        directory = os.path.dirname(os.path.abspath(prefix))
    else:
        raise UserError(f"checkpoint not found: {path} (a run directory or a checkpoint prefix)")
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        return "bert"
    d = read_json(config_path, "model config")
    model_type = d.get("model_type") if isinstance(d, dict) else None
    if model_type not in _FAMILY_OF_MODEL_TYPE:
        raise UserError(
            f"{config_path}: model_type {model_type!r} is not one this exports "
            f"({', '.join(_FAMILY_OF_MODEL_TYPE)})"
        )
    return _FAMILY_OF_MODEL_TYPE[model_type]


def _check_output(output_dir, force):
    if os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            raise UserError(f"--output_dir {output_dir} is a file; give a directory")
        if os.listdir(output_dir) and not force:
            raise UserError(
                f"--output_dir {output_dir} is not empty; pass --force to replace it or choose "
                "another directory"
            )


def _commit(stage, output_dir):
    """Rename the finished `stage` directory to `output_dir`, replacing what is there."""
    old = None
    if os.path.isdir(output_dir):
        old = f"{stage}.old"
        os.rename(output_dir, old)
    os.rename(stage, output_dir)
    if old is not None:
        shutil.rmtree(old)


def export(path, output_dir, task=None, force=False, **lengths):
    """Write the SavedModel of the checkpoint at `path` to `output_dir` (see the module docstring).

    Args:
      path: run directory, checkpoint prefix or Hugging Face folder.
      task: one of the family's tasks, or None to infer it from the run (BERT: its
        arguments.json task, else the heads in the checkpoint).
      force: replace a non-empty `output_dir`.
      lengths: GPT-2's input_len / output_len (static prompt width and generated tokens).
    Returns:
      (info dict as written to assets/export_info.json, notes: one-line strings).
    """
    _check_output(output_dir, force)
    family = model_family(path)
    if family not in FAMILIES:
        raise UserError(
            f"{path} is a {family} checkpoint: SavedModel export exists for "
            f"{', '.join(FAMILIES)} checkpoints only so far"
        )
    entry = FAMILIES[family]
    if task is not None and task not in entry.tasks:
        raise UserError(
            f"--task {task} is not a {family} task; {family} exports {', '.join(entry.tasks)}"
        )
    exportable = entry.build(path, task, **{k: v for k, v in lengths.items() if v is not None})

    import tensorflow as tf

    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.abspath(output_dir))
    stage = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-")
    try:
        with tempfile.TemporaryDirectory() as files:
            module, info = exportable.module, exportable.info
            tracked = {}
            for name, content in {**exportable.assets, INFO_FILE: info}.items():
                staged = os.path.join(files, name)
                if isinstance(content, dict):
                    with open(staged, "w", encoding="utf-8") as f:
                        f.write(json.dumps(content, indent=2, sort_keys=True) + "\n")
                else:
                    shutil.copyfile(content, staged)
                tracked[name] = tf.saved_model.Asset(staged)
            module.asset_files = tracked
            tf.saved_model.save(module, stage, signatures=exportable.signatures)
        _commit(stage, output_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return exportable.info, exportable.notes
