"""Checkpoint interop: Google TF1 BERT, Hugging Face BERT folders and our native checkpoints.

Three formats hold the same BERT:
- "native": our TF1-format checkpoint (`checkpoints.save`), names from `modeling.BertModel`
  (`bert/encoder/layer_0/attention/projection/dense/kernel`, fused `.../self/kernel/qkv_weight`
  [H,3H] unless `use_qkv_split`), optimizer slots as `<variable>/<slot>`.
- "google": Google BERT's TF1 checkpoint. Same names except `attention/output/...` for our
  `attention/projection/...`, always split Q/K/V with biases, and run_classifier's head at the top
  level (`output_weights`, `output_bias`) where ours is `glue_loss/output_*`.
- "hf": a Hugging Face folder (config.json, model.safetensors, vocab.txt). Dense kernels are stored
  transposed ([out,in]), LayerNorm gamma/beta are weight/bias, heads are `cls.*`, `qa_outputs.*`,
  `classifier.*`; head models prefix the encoder with `bert.`. RoBERTa folders (config model_type
  "roberta") prefix it with `roberta.` and name the MLM head `lm_head.*`; ours is then a BERT with
  position_offset 2 (RoBERTa's position ids start at pad_token_id + 1), all rows of the position
  table kept, a 1-row token-type table, and no pooler in RobertaForMaskedLM (see `is_roberta`).

Every conversion goes through one in-memory form, "canonical": {our name: np.ndarray} with split
Q/K/V. Every step is a rename, a transpose or a concatenation/split, so conversions are bitwise
lossless unless the user asks for truncation, padding or dropping.

`load_into(path, variables, ...)` fills `tf.Variable`s from any of the three formats, converting on
the fly, strictly (missing model variables are an error unless allowed to start fresh).
"""

import dataclasses
import glob
import json
import os
import re

import numpy as np

import model_config
from common.errors import UserError
from common.fileio import atomic_write_text, read_json

FORMATS = ("native", "google", "hf")
HF_WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
STATE_FILE = "checkpoint"

# Names of canonical tensors (ours, split Q/K/V). Anything else under bert/, cls/ or glue_loss/ is
# unknown to this converter (GroupBERT, for instance) and is reported, never silently dropped.
_LAYER = r"bert/encoder/layer_\d+/"
CANONICAL_PATTERNS = [
    re.compile(p + "$")
    for p in (
        r"bert/embeddings/(word|position|token_type)_embeddings",
        r"bert/embeddings/LayerNorm/(gamma|beta)",
        _LAYER + r"attention/self/(query|key|value)/(kernel|bias)",
        _LAYER + r"attention/projection/dense/(kernel|bias)",
        _LAYER + r"(attention/projection|output)/LayerNorm/(gamma|beta)",
        _LAYER + r"(intermediate|output)/dense/(kernel|bias)",
        r"bert/pooler/dense/(kernel|bias)",
        r"cls/predictions/transform/dense/(kernel|bias)",
        r"cls/predictions/transform/LayerNorm/(gamma|beta)",
        r"cls/predictions/output_bias",
        r"cls/(seq_relationship|squad)/output_(weights|bias)",
        r"glue_loss/output_(weights|bias)",
    )
]
_FUSED = re.compile(r"(" + _LAYER + r"attention/self)/kernel/qkv_weight$")
QKV = ("query", "key", "value")

# Heads by the name prefixes of their tensors. "mlm" owns the transform layer and output bias
# (its projection is tied to the word embeddings).
HEAD_PREFIXES = {
    "mlm": "cls/predictions/",
    "nsp": "cls/seq_relationship/",
    "squad": "cls/squad/",
    "classifier": "glue_loss/",
}

# Activations: Google's "gelu" and ours are the tanh form; Hugging Face's "gelu" is the erf form.
_HF_TO_OURS_ACT = {
    "gelu": "gelu_erf",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "swish",
    "tanh": "tanh",
}
_OURS_TO_HF_ACT = {
    "gelu": "gelu_new",
    "gelu_new": "gelu_new",
    "gelu_erf": "gelu",
    "gelu_exact": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "tanh": "tanh",
}
GOOGLE_ACTS = ("gelu", "relu", "tanh")
GOOGLE_LAYER_NORM_EPS = 1e-12  # hard-coded in Google's modeling.py; also HF's default
GOOGLE_CONFIG_KEYS = model_config.GOOGLE_FIELDS


def head_variables(head):
    """(weights, bias) names of a linear head: "nsp", "squad" or "classifier"."""
    if head not in ("nsp", "squad", "classifier"):
        raise ValueError(f"{head!r} is not a linear head (nsp, squad, classifier)")
    return tuple(HEAD_PREFIXES[head] + f"output_{k}" for k in ("weights", "bias"))


def is_head(name):
    return any(name.startswith(p) for p in HEAD_PREFIXES.values())


def is_canonical(name):
    return any(p.match(name) for p in CANONICAL_PATTERNS)


def heads_present(tensors):
    """The heads (keys of HEAD_PREFIXES) that have at least one tensor in `tensors`."""
    return [h for h, p in HEAD_PREFIXES.items() if any(n.startswith(p) for n in tensors)]


# ----------------------------------------------------------------------------- TF1 checkpoints


def resolve_tf_checkpoint(path):
    """A TF1 checkpoint prefix from a prefix, an `.index` file or a directory.

    A directory is resolved by its `checkpoint` state file (latest entry), else by its only
    `*.index` file (Google's released folders have `bert_model.ckpt.index` and no state file).
    """
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if os.path.isfile(path + ".index"):
        return path
    if os.path.isdir(path):
        state = os.path.join(path, STATE_FILE)
        if os.path.isfile(state):
            with open(state, encoding="utf-8") as f:
                names = re.findall(r'model_checkpoint_path: "([^"]+)"', f.read())
            if names:
                latest = names[0] if os.path.isabs(names[0]) else os.path.join(path, names[0])
                if os.path.isfile(latest + ".index"):
                    return latest
        found = sorted(glob.glob(os.path.join(glob.escape(path), "*.index")))
        if len(found) == 1:
            return found[0][: -len(".index")]
        if found:
            shown = ", ".join(os.path.basename(f)[: -len(".index")] for f in found)
            raise UserError(f"{path} holds several checkpoints ({shown}); give the prefix of one")
        raise UserError(
            f"no checkpoint in directory {path} (no *.index file, no {HF_WEIGHTS} with config.json)"
        )
    raise UserError(f"checkpoint not found: {path} (expected {path}.index or a directory)")


def read_tf_checkpoint(prefix):
    """{name: np.ndarray} of every tensor in a TF1 checkpoint (one-line error if unreadable)."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(prefix)
        return {n: reader.get_tensor(n) for n in sorted(reader.get_variable_to_shape_map())}
    except (tf.errors.OpError, ValueError) as err:
        raise UserError(
            f"cannot read checkpoint {prefix}: {getattr(err, 'message', err)}"
        ) from None


def write_tf_checkpoint(prefix, tensors):
    """Write {name: np.ndarray} as a TF1 checkpoint at `prefix`, atomically, plus a state file."""
    import checkpoints

    checkpoints.write_tensors(prefix, tensors)
    checkpoints.write_state(os.path.dirname(os.path.abspath(prefix)), [prefix])


def split_training_state(tensors):
    """Sort TF1 checkpoint tensors into (model, slots, other).

    A slot is `<tensor>/<slot name>` where `<tensor>` is itself in the checkpoint
    (`.../kernel/adam_m`, `.../kernel/lamb_v`, `.../kernel/Momentum`). Model tensors are the rest
    under bert/, cls/ or glue_loss/ (plus Google's top-level classifier `output_weights`/`_bias`);
    `other` is training state such as `global_step` or loss-scaling counters.

    Returns:
      (model {name: array}, slots {slot suffix: {base name: array}}, other {name: array}).
    """
    model, slots, other = {}, {}, {}
    for name, value in tensors.items():
        base, _, suffix = name.rpartition("/")
        while base and base not in tensors:
            # A slot of a slot does not exist; walk up only for multi-part slot suffixes.
            base, _, more = base.rpartition("/")
            suffix = f"{more}/{suffix}"
        if base:
            slots.setdefault(suffix, {})[base] = value
        elif name.startswith(("bert/", "cls/", "glue_loss/")) or name in (
            "output_weights",
            "output_bias",
        ):
            model[name] = value
        else:
            other[name] = value
    return model, slots, other


def detect_tf_format(names):
    """ "google" if the checkpoint uses Google's names (`attention/output`), else "native"."""
    names = list(names)
    if any("/attention/output/" in n for n in names) or "output_weights" in names:
        return "google"
    return "native"


# ----------------------------------------------------------------------------- name maps


def google_to_canonical(tensors):
    """Google names -> ours (split Q/K/V). Works on model tensors or on one slot group."""
    out = {}
    for name, value in tensors.items():
        if name in ("output_weights", "output_bias"):
            name = "glue_loss/" + name
        out[name.replace("/attention/output/", "/attention/projection/")] = value
    return out


def canonical_to_google(tensors):
    out = {}
    for name, value in tensors.items():
        name = name.replace("/attention/projection/", "/attention/output/")
        out[name[len("glue_loss/") :] if name.startswith("glue_loss/") else name] = value
    return out


def native_to_canonical(tensors):
    """Ours -> canonical: fused [H,3H] QKV kernels become query/key/value [H,H] (column blocks)."""
    out = {}
    for name, value in tensors.items():
        match = _FUSED.match(name)
        if match:
            for part, block in zip(QKV, np.split(value, 3, axis=-1)):
                out[f"{match.group(1)}/{part}/kernel"] = np.ascontiguousarray(block)
        else:
            out[name] = value
    return out


def canonical_to_native(tensors, fuse_qkv):
    """Canonical -> ours; with fuse_qkv the three kernels of a layer become one [H,3H] kernel."""
    if not fuse_qkv:
        return dict(tensors)
    out = {}
    for name, value in tensors.items():
        match = re.match(r"(" + _LAYER + r"attention/self)/(query|key|value)/kernel$", name)
        if not match:
            out[name] = value
        elif match.group(2) == "query":
            scope = match.group(1)
            parts = [f"{scope}/{p}/kernel" for p in QKV]
            missing = [p for p in parts if p not in tensors]
            if missing:
                raise UserError(f"cannot fuse Q/K/V of {scope}: {', '.join(missing)} missing")
            out[f"{scope}/kernel/qkv_weight"] = np.concatenate([tensors[p] for p in parts], -1)
        elif f"{match.group(1)}/query/kernel" not in tensors:
            raise UserError(f"cannot fuse Q/K/V of {match.group(1)}: its query kernel is missing")
    return out


_HF_HEADS = {
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
    "cls/squad/output_weights": "qa_outputs.weight",
    "cls/squad/output_bias": "qa_outputs.bias",
    "glue_loss/output_weights": "classifier.weight",
    "glue_loss/output_bias": "classifier.bias",
}
_HF_HEADS_INV = {v: k for k, v in _HF_HEADS.items()}
ROBERTA_PREFIX = "roberta."
ROBERTA_POSITION_OFFSET = 2  # HF RoBERTa: position ids = pad_token_id (1) + 1 + i
_HF_ROBERTA_HEADS = {
    "cls/predictions/transform/dense/kernel": "lm_head.dense.weight",
    "cls/predictions/transform/dense/bias": "lm_head.dense.bias",
    "cls/predictions/transform/LayerNorm/gamma": "lm_head.layer_norm.weight",
    "cls/predictions/transform/LayerNorm/beta": "lm_head.layer_norm.bias",
    "cls/predictions/output_bias": "lm_head.bias",
}
_HF_ROBERTA_HEADS_INV = {v: k for k, v in _HF_ROBERTA_HEADS.items()}
POOLER = ("bert/pooler/dense/kernel", "bert/pooler/dense/bias")
# Hugging Face tensors that are not parameters of their own: a buffer and the tied MLM decoders.
HF_DERIVED = (
    "embeddings.position_ids",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "lm_head.decoder.weight",
    "lm_head.decoder.bias",
)


def is_roberta(fields):
    """True for a RoBERTa model: BertConfig fields with position_offset 2 (HF's RoBERTa layout).

    Hugging Face's BERT has no position offset, so any other non-zero offset has no HF equivalent.
    """
    offset = (fields or {}).get("position_offset", 0)
    if offset not in (0, ROBERTA_POSITION_OFFSET):
        raise UserError(
            f"position_offset {offset} has no Hugging Face equivalent (BERT: 0, RoBERTa: 2)"
        )
    return offset == ROBERTA_POSITION_OFFSET


def hf_name(name, prefix="bert."):
    """Canonical name -> (Hugging Face name, transpose?). Heads keep the same [out,in] layout.

    With prefix "roberta." the MLM head gets RoBERTa's `lm_head.*` names.
    """
    if prefix == ROBERTA_PREFIX and name in _HF_ROBERTA_HEADS:
        return _HF_ROBERTA_HEADS[name], name.endswith("/kernel")
    if name in _HF_HEADS:
        return _HF_HEADS[name], False
    s = name.replace("/attention/projection/", "/attention/output/")
    s = re.sub(r"/layer_(\d+)/", r"/layer/\1/", s)
    transpose = s.endswith("/kernel")
    if s.endswith("_embeddings"):
        s += "/weight"
    s = re.sub(r"/(kernel|gamma)$", "/weight", s)
    s = re.sub(r"/beta$", "/bias", s)
    s = s.replace("/", ".")
    if s.startswith("bert."):
        s = prefix + s[len("bert.") :]
    return s, transpose


def canonical_name_from_hf(name):
    """Hugging Face name -> (canonical name, transpose?), or (None, False) if not a BERT tensor."""
    for prefix in ("bert.", ROBERTA_PREFIX):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if name in _HF_ROBERTA_HEADS_INV:
        canonical = _HF_ROBERTA_HEADS_INV[name]
        return canonical, canonical.endswith("/kernel")
    if name in _HF_HEADS_INV:
        return _HF_HEADS_INV[name], False
    s = name.replace(".", "/")
    if not s.startswith("cls/"):
        s = "bert/" + s
    s = re.sub(r"/layer/(\d+)/", r"/layer_\1/", s)
    s = s.replace("/attention/output/", "/attention/projection/")
    transpose = False
    if s.endswith("_embeddings/weight"):
        s = s[: -len("/weight")]
    elif "/LayerNorm/" in s:
        s = re.sub(r"/weight$", "/gamma", re.sub(r"/bias$", "/beta", s))
    elif s.endswith("/weight"):
        s, transpose = s[: -len("/weight")] + "/kernel", True
    return (s, transpose) if is_canonical(s) else (None, False)


def _transposed(value):
    return np.ascontiguousarray(value.T)


def hf_to_canonical(tensors):
    """Hugging Face state dict -> (canonical tensors, unknown names, notes).

    The tied MLM decoder (`cls.predictions.decoder.*`) must equal the word embeddings and output
    bias it is tied to, and is then dropped; `embeddings.position_ids` is a buffer and dropped.
    """
    out, unknown, notes = {}, [], []
    for name, value in tensors.items():
        bare = name.split(".", 1)[1] if name.startswith(("bert.", ROBERTA_PREFIX)) else name
        if bare in HF_DERIVED or name in HF_DERIVED:
            continue
        canonical, transpose = canonical_name_from_hf(name)
        if canonical is None:
            unknown.append(name)
        elif canonical in out:
            raise UserError(f"Hugging Face tensor {name} appears twice (with and without bert.)")
        else:
            out[canonical] = _transposed(value) if transpose else value
    ties = (
        ("cls.predictions.decoder.weight", "bert/embeddings/word_embeddings"),
        ("cls.predictions.decoder.bias", "cls/predictions/output_bias"),
        ("lm_head.decoder.weight", "bert/embeddings/word_embeddings"),
        ("lm_head.decoder.bias", "cls/predictions/output_bias"),
    )
    for hf, ours in ties:
        if hf in tensors and ours in out:
            if not np.array_equal(tensors[hf], out[ours]):
                raise UserError(
                    f"{hf} differs from the tensor it should be tied to ({ours}); untied MLM "
                    "decoders are not supported (our MLM projection is the word-embedding table)"
                )
            notes.append(f"{hf} is tied to {ours}: checked equal, not stored separately")
    return out, unknown, notes


def canonical_to_hf(tensors, prefix="bert."):
    """Canonical -> Hugging Face {name: array} (kernels transposed to [out,in])."""
    out = {}
    for name, value in tensors.items():
        hf, transpose = hf_name(name, prefix)
        out[hf] = _transposed(value) if transpose else np.ascontiguousarray(value)
    return out


# ----------------------------------------------------------------------------- Hugging Face files


def _read_safetensors_file(path):
    from safetensors import safe_open

    out = {}
    with safe_open(path, framework="numpy") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            try:
                out[key] = f.get_tensor(key)
            except (TypeError, ValueError):
                out[key] = None  # numpy has no bfloat16: read below from the raw bytes
    if any(v is None for v in out.values()):
        out.update(_read_bfloat16(path, [k for k, v in out.items() if v is None]))
    return out


def _read_bfloat16(path, keys):
    """bfloat16 tensors of a safetensors file as float32 (exact: bf16 is the top half of fp32)."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        out = {}
        for key in keys:
            info = header[key]
            if info["dtype"] != "BF16":
                raise UserError(f"{path}: tensor {key} has unsupported dtype {info['dtype']}")
            start, end = info["data_offsets"]
            f.seek(base + start)
            raw = np.frombuffer(f.read(end - start), dtype="<u2").astype(np.uint32) << 16
            out[key] = raw.view(np.float32).reshape(info["shape"])
    return out


def read_hf_folder(folder):
    """(state dict {name: np.ndarray}, config dict) of a Hugging Face BERT folder."""
    config_path = os.path.join(folder, "config.json")
    config = read_json(config_path, "Hugging Face config")
    tensors = {}
    for path in hf_weight_files(folder):
        tensors.update(_read_safetensors_file(path))
    return tensors, config


def hf_weight_files(folder):
    """Paths of a Hugging Face folder's safetensors files: model.safetensors or the index's shards."""
    index = os.path.join(folder, HF_INDEX)
    if os.path.isfile(os.path.join(folder, HF_WEIGHTS)):
        files = [os.path.join(folder, HF_WEIGHTS)]
    elif os.path.isfile(index):
        shards = sorted(set(read_json(index, "safetensors index").get("weight_map", {}).values()))
        files = [os.path.join(folder, s) for s in shards]
    else:
        raise UserError(
            f"{folder} has no {HF_WEIGHTS}: only safetensors weights are read (no PyTorch needed); "
            "re-save the model with transformers' save_pretrained(..., safe_serialization=True)"
        )
    return files


def write_hf_folder(folder, tensors, config):
    """Writes model.safetensors (PyTorch metadata, as transformers does) and config.json."""
    from safetensors.numpy import save_file

    path = os.path.join(folder, HF_WEIGHTS)
    temp = os.path.join(folder, f".tmp-{HF_WEIGHTS}-{os.getpid()}")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, temp, {"format": "pt"})
    os.replace(temp, path)
    atomic_write_text(os.path.join(folder, "config.json"), json.dumps(config, indent=2) + "\n")


def is_hf_folder(path):
    return (
        os.path.isdir(path)
        and os.path.isfile(os.path.join(path, "config.json"))
        and (
            os.path.isfile(os.path.join(path, HF_WEIGHTS))
            or os.path.isfile(os.path.join(path, HF_INDEX))
        )
    )


# ----------------------------------------------------------------------------- configs


def config_from_hf(d):
    """Our BertConfig fields from a Hugging Face config.json dict (biases, eps, activation)."""
    model_type = d.get("model_type", "bert")
    if model_type not in ("bert", "roberta"):
        raise UserError(
            f"Hugging Face model_type is {model_type!r}; only 'bert' and 'roberta' are supported"
        )
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(
            f"position_embedding_type {d['position_embedding_type']!r} is not supported (absolute only)"
        )
    act = d.get("hidden_act", "gelu")
    if act not in _HF_TO_OURS_ACT:
        raise UserError(f"Hugging Face hidden_act {act!r} has no equivalent here")
    fields = {k: d[k] for k in GOOGLE_CONFIG_KEYS if k in d}
    fields["hidden_act"] = _HF_TO_OURS_ACT[act]
    fields["layer_norm_eps"] = float(d.get("layer_norm_eps", GOOGLE_LAYER_NORM_EPS))
    if model_type == "roberta":
        pad = d.get("pad_token_id", 1)
        if pad + 1 != ROBERTA_POSITION_OFFSET:
            raise UserError(
                f"RoBERTa pad_token_id {pad} is not supported: positions then start at {pad + 1}, "
                f"ours at position_offset {ROBERTA_POSITION_OFFSET} (pad_token_id 1)"
            )
        fields["position_offset"] = ROBERTA_POSITION_OFFSET
    return fields


def config_from_google(d):
    """Our BertConfig fields from a Google bert_config.json dict (epsilon 1e-12 as Google's code)."""
    fields = {k: d[k] for k in GOOGLE_CONFIG_KEYS if k in d}
    if "hidden_act" in d and d["hidden_act"] not in GOOGLE_ACTS + (
        "gelu_erf",
        "gelu_new",
        "linear",
    ):
        raise UserError(f"Google config hidden_act {d['hidden_act']!r} is unknown")
    fields["layer_norm_eps"] = float(d.get("layer_norm_eps", GOOGLE_LAYER_NORM_EPS))
    return fields


def hf_config(fields, architecture, num_labels=None):
    """A Hugging Face config.json dict from our BertConfig fields."""
    act = fields.get("hidden_act", "gelu")
    if act not in _OURS_TO_HF_ACT:
        raise UserError(f"hidden_act {act!r} has no Hugging Face equivalent")
    d = {k: fields[k] for k in GOOGLE_CONFIG_KEYS if k in fields}
    d.update(
        architectures=[architecture],
        model_type="bert",
        hidden_act=_OURS_TO_HF_ACT[act],
        layer_norm_eps=fields.get("layer_norm_eps", GOOGLE_LAYER_NORM_EPS),
        pad_token_id=0,
        position_embedding_type="absolute",
        tie_word_embeddings=True,
    )
    if is_roberta(fields):
        # <s> <pad> </s> = 0 1 2, as RoBERTa's and create_bpe_tokenizer.py's vocabularies.
        d.update(model_type="roberta", pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if num_labels is not None:
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return d


def shape_fields(tensors):
    """BertConfig fields implied by tensor shapes and presence (canonical names).

    Returns:
      dict with vocab_size, hidden_size, intermediate_size, num_hidden_layers,
      max_position_embeddings, type_vocab_size and the switches use_qkv_bias,
      use_attention_projection_bias, use_cls_layer, use_prediction_bias.
    """
    word = tensors.get("bert/embeddings/word_embeddings")
    if word is None:
        raise UserError("checkpoint has no bert/embeddings/word_embeddings: not a BERT checkpoint")
    layers = {int(m.group(1)) for n in tensors if (m := re.match(r"bert/encoder/layer_(\d+)/", n))}
    fields = {
        "vocab_size": int(word.shape[0]),
        "hidden_size": int(word.shape[1]),
        "num_hidden_layers": max(layers) + 1 if layers else 0,
        "use_qkv_bias": any(n.endswith("/attention/self/query/bias") for n in tensors),
        "use_attention_projection_bias": any(
            n.endswith("/attention/projection/dense/bias") for n in tensors
        ),
        "use_cls_layer": "cls/predictions/transform/dense/kernel" in tensors,
        "use_prediction_bias": "cls/predictions/output_bias" in tensors,
    }
    for name, key in (
        ("bert/embeddings/position_embeddings", "max_position_embeddings"),
        ("bert/embeddings/token_type_embeddings", "type_vocab_size"),
        ("bert/encoder/layer_0/intermediate/dense/kernel", "intermediate_size"),
    ):
        if name in tensors:
            fields[key] = int(tensors[name].shape[-1 if key == "intermediate_size" else 0])
    return fields


def expected_names(fields, heads=()):
    """Canonical names a complete checkpoint with these BertConfig fields and heads must have."""
    names = [f"bert/embeddings/{k}_embeddings" for k in ("word", "position", "token_type")]
    names += ["bert/embeddings/LayerNorm/gamma", "bert/embeddings/LayerNorm/beta"]
    for i in range(fields["num_hidden_layers"]):
        layer = f"bert/encoder/layer_{i}"
        names += [f"{layer}/attention/self/{p}/kernel" for p in QKV]
        if fields.get("use_qkv_bias"):
            names += [f"{layer}/attention/self/{p}/bias" for p in QKV]
        names.append(f"{layer}/attention/projection/dense/kernel")
        if fields.get("use_attention_projection_bias", True):
            names.append(f"{layer}/attention/projection/dense/bias")
        for scope in ("attention/projection/LayerNorm", "output/LayerNorm"):
            names += [f"{layer}/{scope}/gamma", f"{layer}/{scope}/beta"]
        for scope in ("intermediate/dense", "output/dense"):
            names += [f"{layer}/{scope}/kernel", f"{layer}/{scope}/bias"]
    if not is_roberta(fields):  # RobertaForMaskedLM has none
        names += list(POOLER)
    if "mlm" in heads:
        if fields.get("use_cls_layer"):
            names += [f"cls/predictions/transform/dense/{k}" for k in ("kernel", "bias")]
            names += [f"cls/predictions/transform/LayerNorm/{k}" for k in ("gamma", "beta")]
        if fields.get("use_prediction_bias"):
            names.append("cls/predictions/output_bias")
    for head in ("nsp", "squad", "classifier"):
        if head in heads:
            names += list(head_variables(head))
    return names


def check_complete(tensors, fields, source):
    """Strictness for conversions: every tensor the config implies must be present, none unknown."""
    unknown = sorted(n for n in tensors if not is_canonical(n))
    if unknown:
        raise UserError(
            f"{source}: {len(unknown)} tensor(s) this converter does not know: "
            f"{shown_names(unknown)} (GroupBERT and other variants are not supported)"
        )
    missing = [n for n in expected_names(fields, heads_present(tensors)) if n not in tensors]
    if missing:
        raise UserError(f"{source} is incomplete: {len(missing)} missing: {shown_names(missing)}")


def shown_names(names, limit=10):
    return ", ".join(names[:limit]) + (
        f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    )


# ----------------------------------------------------------------------------- reading any format


@dataclasses.dataclass
class Source:
    """A checkpoint read into canonical form.

    Attributes:
      path: the resolved location (TF1 prefix or HF folder).
      format: "native", "google" or "hf".
      model: {canonical name: np.ndarray}.
      slots: {slot suffix: {canonical name: np.ndarray}} (TF1 formats only).
      other: {name: np.ndarray} training state (`global_step`, ...).
      config: BertConfig fields from the folder's config file (None if there is none), with the
        switches set from the tensors present.
      fused: True if the checkpoint stored fused [H,3H] Q/K/V kernels (native only).
      notes: human-readable remarks made while reading.
      vocab_file, tokenizer_file: the WordPiece vocab / BPE tokenizer.json beside the checkpoint
        (or named by its run's arguments.json), None if there is none.
      do_lower_case: the casing the checkpoint was trained with, when its folder says (HF's
        tokenizer_config.json, our arguments.json), else None.
    """

    path: str
    format: str
    model: dict
    slots: dict
    other: dict
    config: dict | None
    fused: bool
    notes: list
    vocab_file: str | None = None
    tokenizer_file: str | None = None
    do_lower_case: bool | None = None


def run_arguments(directory):
    """The folder's arguments.json (our run's resolved options) as a dict, or {} if absent."""
    arguments = os.path.join(directory, "arguments.json")
    return read_json(arguments, "run arguments") if os.path.isfile(arguments) else {}


def _folder_config(directory, fmt, args, bert_config_file=None):
    """Config fields from `bert_config_file`, or the folder's bert_config.json / arguments.json
    (`args`, from `run_arguments`)."""
    path = bert_config_file or os.path.join(directory, "bert_config.json")
    if os.path.isfile(path):
        d = read_json(path, "model config")
        if not isinstance(d, dict):
            raise UserError(f"model config {path} must hold a JSON object")
        # Ours carries the switches (use_qkv_bias, ...); Google's has only its eleven keys.
        if fmt == "google" or "use_qkv_bias" not in d:
            return config_from_google(d)
        return dict(d)
    if bert_config_file:
        raise UserError(f"model config not found: {bert_config_file}")
    if fmt == "native" and args:
        return dict(model_config.from_options(args))
    return None


def _assets(directory, fmt, args):
    """(vocab_file, tokenizer_file, do_lower_case) found beside a checkpoint, None where unknown.

    The folder's vocab.txt / tokenizer.json, else the files a run's arguments.json (`args`) names;
    the casing from a Hugging Face tokenizer_config.json, else from arguments.json.
    """
    found = []
    for name, key in (("vocab.txt", "vocab_file"), ("tokenizer.json", "tokenizer_file")):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            path = args.get(key) if args.get(key) and os.path.isfile(args[key]) else None
        found.append(path)
    lower = args.get("do_lower_case") if fmt == "native" else None
    tokenizer_config = os.path.join(directory, "tokenizer_config.json")
    if fmt == "hf" and os.path.isfile(tokenizer_config):
        lower = read_json(tokenizer_config, "tokenizer config").get("do_lower_case")
    return (*found, lower if isinstance(lower, bool) else None)


def read_checkpoint(path, bert_config_file=None):
    """Read a native, Google or Hugging Face checkpoint into canonical form (see `Source`).

    The one resolver of checkpoint paths: format, model config, vocab/tokenizer and casing. Used by
    convert_ckpt.py, extract_features.py, fine-tuning and --init-checkpoint.

    Args:
      path: a TF1 checkpoint prefix, a run/checkpoint directory, or a Hugging Face folder.
      bert_config_file: optional config path overriding the one next to the checkpoint.
    """
    notes = []
    if is_hf_folder(path):
        state, hf = read_hf_folder(path)
        model, unknown, tie_notes = hf_to_canonical(state)
        notes += tie_notes
        if unknown:
            raise UserError(
                f"{path}: {len(unknown)} Hugging Face tensor(s) that are not BERT's: {shown_names(unknown)}"
            )
        dtypes = sorted({str(v.dtype) for v in model.values()} - {"float32"})
        if dtypes:
            notes.append(f"{', '.join(dtypes)} tensors widened to float32 (exact)")
            model = {k: v.astype(np.float32) for k, v in model.items()}
        config = config_from_hf(hf)
        fmt, slots, other, fused = "hf", {}, {}, False
        directory = path
        args = run_arguments(directory)
    else:
        prefix = resolve_tf_checkpoint(path)
        tensors, path = read_tf_checkpoint(prefix), prefix
        model, slots, other = split_training_state(tensors)
        fmt = detect_tf_format(model)
        fused = any(_FUSED.match(n) for n in model)
        if fmt == "google":
            model = google_to_canonical(model)
            slots = {s: google_to_canonical(g) for s, g in slots.items()}
        # Slots follow their variable: a fused kernel's slots are split like the kernel.
        model = native_to_canonical(model)
        slots = {s: native_to_canonical(g) for s, g in slots.items()}
        directory = os.path.dirname(os.path.abspath(prefix))
        args = run_arguments(directory)
        config = _folder_config(directory, fmt, args, bert_config_file)
    if config is not None:
        config = _reconcile(config, shape_fields(model), path)
    vocab, tokenizer, lower = _assets(directory, fmt, args)
    return Source(path, fmt, model, slots, other, config, fused, notes, vocab, tokenizer, lower)


def _reconcile(config, implied, path):
    """Config fields with the sizes checked against the tensors and the switches taken from them."""
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                "max_position_embeddings", "type_vocab_size"):  # fmt: skip
        if key in config and key in implied and config[key] != implied[key]:
            raise UserError(
                f"{path}: the config says {key} = {config[key]} but the tensors have {implied[key]}"
            )
    merged = dict(config)
    merged.update(implied)
    return merged


# ----------------------------------------------------------------------------- loading variables


@dataclasses.dataclass
class LoadReport:
    """What `load_into` did. Lists hold variable (or checkpoint tensor) names."""

    source: str
    format: str
    loaded: list
    fresh: list  # required variables allowed to be missing: they keep their initial values
    missing: list  # optional variables the checkpoint lacks (e.g. optimizer slots)
    unexpected: list  # checkpoint model tensors with no variable (e.g. heads the task lacks)
    ignored_state: int  # optimizer slots and counters of the checkpoint that were not loaded
    notes: list

    def summary(self):
        converted = "" if self.format == "native" else f" (converted from {self.format})"
        parts = [f"loaded {len(self.loaded)} variables from {self.source}{converted}"]
        if self.fresh:
            parts.append(f"{len(self.fresh)} start fresh: {shown_names(self.fresh)}")
        if self.missing:
            parts.append(f"{len(self.missing)} optional not in checkpoint")
        if self.unexpected:
            parts.append(f"unused checkpoint tensors: {shown_names(self.unexpected)}")
        if self.ignored_state:
            parts.append(f"ignored {self.ignored_state} optimizer/state tensors")
        return "; ".join(parts + self.notes)


def _allowed(name, allow_fresh):
    return any(name == a or (a.endswith("/") and name.startswith(a)) for a in allow_fresh)


_SWITCH_HINTS = (
    ("/attention/self/query/bias", "use_qkv_bias"),
    ("/attention/self/key/bias", "use_qkv_bias"),
    ("/attention/self/value/bias", "use_qkv_bias"),
    ("/attention/projection/dense/bias", "use_attention_projection_bias"),
    ("cls/predictions/transform/", "use_cls_layer"),
    ("cls/predictions/output_bias", "use_prediction_bias"),
)


def _hint(names, present):
    """Config advice for tensors that exist on one side only."""
    switches = sorted({s for n in names for frag, s in _SWITCH_HINTS if frag in n})
    if not switches:
        return ""
    value = "true" if present else "false"
    return "; set " + ", ".join(f"{s} {value}" for s in switches) + " in the model config"


def load_into(path, variables, required=None, allow_fresh=()):
    """Fill `variables` from a native, Google or Hugging Face checkpoint, converting by name.

    Strict: a required variable the checkpoint lacks is an error listing the names (unless it is
    in `allow_fresh`), a shape mismatch is an error naming the variable and both shapes, and an
    encoder tensor of the checkpoint that no variable takes (e.g. a QKV bias the config lacks) is an
    error with the config switch to set. Unused head tensors (cls/..., glue_loss/...) are reported.

    Args:
      path: TF1 checkpoint prefix, checkpoint/run directory, Hugging Face folder, or a `Source`
        from `read_checkpoint`.
      variables: {name: tf.Variable} (model variables, optionally optimizer slots named
        `<variable>/<slot>` and counters such as `beta1_power`), filled in place. The Q/K/V layout
        (fused or split) is read from the names, so any checkpoint loads into either layout.
      required: names that must be loaded (default: all of `variables`).
      allow_fresh: names, or scope prefixes ending in "/", that may be missing among `required`
        (e.g. ("cls/squad/",) to fine-tune with a new head); they are listed in `report.fresh`.
    Returns:
      LoadReport.
    """
    source = path if isinstance(path, Source) else read_checkpoint(path)
    if source.format == "hf" and is_roberta(source.config) and POOLER[0] not in source.model:
        allow_fresh = (*allow_fresh, "bert/pooler/")  # RobertaForMaskedLM has no pooler
    fuse = any(_FUSED.match(n) for n in variables)
    available = canonical_to_native(source.model, fuse)
    model_names = set(available)
    for suffix, group in source.slots.items():
        for name, value in canonical_to_native(group, fuse).items():
            available[f"{name}/{suffix}"] = value
    if source.format == "native":
        available.update(source.other)  # our counters (beta1_power, ...) keep their names
    required = list(variables) if required is None else list(required)
    absent = [n for n in required if n not in available]
    fresh = [n for n in absent if _allowed(n, allow_fresh)]
    missing_required = [n for n in absent if n not in fresh]
    if missing_required:
        advice = _hint(missing_required, False)
        if not advice and all(is_head(n) for n in missing_required):
            advice = "; these are task heads: allow them to start fresh to fine-tune"
        raise UserError(
            f"checkpoint {source.path} ({source.format}) lacks {len(missing_required)} required "
            f"variable(s): {shown_names(missing_required)}{advice}"
        )
    names = [n for n in variables if n in available]
    for n in names:
        want, have = variables[n].shape.as_list(), list(available[n].shape)
        if want != have:
            hint = ""
            if n.endswith(("word_embeddings", "output_bias")) and want[:1] != have[:1]:
                hint = "; convert with `convert_ckpt.py ... --vocab_size N` to truncate or pad"
            raise UserError(
                f"checkpoint {source.path}: variable {n} has shape {have}, the model has {want}{hint}"
            )
    unused = sorted(model_names - set(variables))
    encoder_unused = [n for n in unused if not is_head(n)]
    if encoder_unused:
        raise UserError(
            f"checkpoint {source.path} has {len(encoder_unused)} model tensor(s) the model lacks: "
            f"{shown_names(encoder_unused)}{_hint(encoder_unused, True)}"
        )
    for n in names:
        var = variables[n]
        var.assign(np.asarray(available[n], dtype=var.dtype.as_numpy_dtype))
    return LoadReport(
        source=source.path,
        format=source.format,
        loaded=names,
        fresh=fresh,
        missing=[n for n in variables if n not in available and n not in fresh],
        unexpected=unused,
        ignored_state=sum(1 for n in available if n not in model_names and n not in variables)
        + (0 if source.format == "native" else len(source.other)),
        notes=source.notes,
    )


def head_prefixes(heads):
    """Scope prefixes (for `allow_fresh`) of head names, e.g. ("squad",) -> ("cls/squad/",)."""
    unknown = set(heads) - set(HEAD_PREFIXES)
    if unknown:
        raise ValueError(f"unknown heads {sorted(unknown)}; known: {list(HEAD_PREFIXES)}")
    return tuple(HEAD_PREFIXES[h] for h in heads)


def inference_config(path, bert_config_file=None):
    """The modeling.BertConfig that runs the checkpoint at `path` for inference, and its Source.

    Sizes come from the folder's config (bert_config.json, config.json or arguments.json), checked
    against the tensors; the bias and MLM-layer switches from the tensors present. Q/K/V is split
    (loading converts either layout) and the static-mask layout and recomputation are off.

    Returns:
      (modeling.BertConfig, Source); pass the Source to `load_into` to avoid reading twice.
    """
    source = read_checkpoint(path, bert_config_file)
    if source.config is None:
        raise UserError(
            f"no model config next to {source.path}: put its bert_config.json there or pass "
            "--bert-config-file"
        )
    fields = {**source.config, "use_qkv_split": True, "static_mask": False, "recompute": False}
    return model_config.BertConfig.from_dict(fields), source
