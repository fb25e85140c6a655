"""Model hyper-parameters: the one list of BERT's model fields, without TensorFlow.

`BertConfig` is Google's bert_config.json plus the reference app's switches. Each field says what kind
of setting it is (`field_kind`), which the rest of the project reads instead of keeping its own list:
- "architecture": sizes and switches a checkpoint fixes; fine-tuning takes them from the checkpoint, and
  an explicit option that contradicts it is an error;
- "training": dropout rates and the initializer; an explicit option wins over the checkpoint's value;
- "layout": how the run feeds and evaluates the model (data layout, fused or split Q/K/V,
  recomputation); never taken from a checkpoint.
`GOOGLE_FIELDS` are the eleven keys of Google's bert_config.json. The options schema (`options.py`)
generates its "BERT model" flags from these fields, with the help texts given here.
"""

import dataclasses

from common.errors import UserError
from common.fileio import atomic_write_json, read_json

# Names accepted by `hidden_act` (modeling_ops.ACTIVATIONS maps each to its function). "gelu" is
# the tanh form, as in Google BERT and the reference app; Hugging Face's "gelu" is our "gelu_erf".
ACTIVATION_NAMES = ("gelu", "gelu_new", "gelu_erf", "gelu_exact", "relu", "swish", "silu", "tanh")


def _field(default, kind, help, option_default=dataclasses.MISSING, google=False, low=1):
    """A BertConfig field. option_default: the flag's default (MISSING = the field's default; None =
    "from the checkpoint, else the field's default"). low: smallest allowed integer."""
    meta = {"kind": kind, "help": help, "google": google, "low": low}
    meta["option_default"] = default if option_default is dataclasses.MISSING else option_default
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


A, T, L = "architecture", "training", "layout"


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Model hyper-parameters: Google's bert_config.json fields plus the reference app's switches.

    Defaults of the switches are the reference's effective ones (CLI defaults), not its class defaults.
    `layer_norm_eps` is 1e-3 as in the reference; set 1e-12 for Google/HF checkpoints.
    `recompute` wraps each encoder layer in `tf.recompute_grad` (gradient checkpointing).
    """

    vocab_size: int = _field(
        dataclasses.MISSING,
        A,
        "vocabulary size; null = number of lines of vocab_file",
        option_default=None,
        google=True,
    )
    hidden_size: int = _field(768, A, "hidden width H", None, google=True)
    num_hidden_layers: int = _field(12, A, "number of encoder layers", None, google=True)
    num_attention_heads: int = _field(12, A, "attention heads per layer", None, google=True)
    intermediate_size: int = _field(3072, A, "feed-forward width", None, google=True)
    hidden_act: str = _field(
        "gelu", A, "activation: gelu (tanh approximation), gelu_erf, relu, ...", None, google=True
    )
    hidden_dropout_prob: float = _field(
        0.1, T, "dropout on embeddings and layer outputs", None, google=True
    )
    attention_probs_dropout_prob: float = _field(
        0.1, T, "dropout on attention probabilities", None, google=True
    )
    max_position_embeddings: int = _field(
        512, A, "rows of the position embedding table", None, google=True
    )
    type_vocab_size: int = _field(2, A, "number of segment (token type) ids", None, google=True)
    initializer_range: float = _field(
        0.02, T, "stddev of the truncated-normal initializer", None, google=True
    )
    max_predictions_per_seq: int = _field(20, L, "masked tokens per sequence (as in the data)")
    use_attention_projection_bias: bool = _field(True, A, "bias on the attention output projection")
    use_cls_layer: bool = _field(True, L, "MLM transform (dense + LayerNorm) before the output")
    use_qkv_split: bool = _field(False, L, "separate Q/K/V kernels instead of one fused [H, 3H]")
    use_qkv_bias: bool = _field(False, A, "biases on query, key and value")
    use_prediction_bias: bool = _field(True, L, "MLM output bias")
    static_mask: bool = _field(False, L, "data written with --remask (masked tokens first)")
    layer_norm_eps: float = _field(1e-3, A, "LayerNorm epsilon (reference 1e-3; Google 1e-12)")
    recompute: bool = _field(False, L, "gradient checkpointing per encoder layer")
    position_offset: int = _field(0, A, "position id of the first token (RoBERTa: 2)", low=0)
    groupbert: bool = _field(False, A, "use the GroupBERT architecture")
    groupbert_ffn_output_groups: int = _field(4, A, "GroupBERT: groups of the FFN output")
    groupbert_conv_kernel_size: int = _field(7, A, "GroupBERT: convolution kernel size")
    groupbert_conv_group_size: int = _field(16, A, "GroupBERT: channels per convolution group")

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type is int:
                low = field.metadata["low"]
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
                want = "a positive integer" if low else "a non-negative integer"
            elif field.type is float:
                ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
                want = "a non-negative number"
            elif field.type is bool:
                ok = isinstance(value, bool)
                want = "true or false"
            else:
                ok = isinstance(value, str)
                want = "a string"
            if not ok:
                raise UserError(f"model config: {field.name} is {value!r}, expected {want}")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"model config: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}; change one of them"
            )
        if self.hidden_act not in ACTIVATION_NAMES:
            raise UserError(
                f"model config: unknown hidden_act {self.hidden_act!r}; "
                f"use one of {', '.join(sorted(ACTIVATION_NAMES))}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if getattr(self, name) >= 1:
                raise UserError(
                    f"model config: {name} must be in [0, 1), got {getattr(self, name)}"
                )
        if self.layer_norm_eps <= 0:
            raise UserError(f"model config: layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @classmethod
    def from_dict(cls, d):
        """Build from a dict, taking the keys that are fields and ignoring the others.

        Unknown keys are the options layer's business (it rejects them); a config dict here may
        legitimately carry training keys too.
        """
        if "vocab_size" not in d:
            raise UserError("model config: vocab_size is missing; set it (or give a vocab file)")
        return cls(**{k: v for k, v in d.items() if k in FIELDS})

    @classmethod
    def from_json_file(cls, path):
        """Read a Google-style bert_config.json (extra keys ignored)."""
        d = read_json(path, "model config")
        if not isinstance(d, dict):
            raise UserError(f"model config {path} must hold a JSON object")
        return cls.from_dict(d)

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json_file(self, path):
        """Write as JSON, atomically (temporary file in the same directory, then rename)."""
        atomic_write_json(path, self.to_dict())


FIELDS = {f.name: f for f in dataclasses.fields(BertConfig)}
GOOGLE_FIELDS = tuple(n for n, f in FIELDS.items() if f.metadata["google"])
# Fields that are options of their own (recompute is set by the option enable_recomputation).
OPTION_FIELDS = tuple(n for n in FIELDS if n != "recompute")


def fields_of_kind(kind):
    """Names of the BertConfig fields of one kind ("architecture", "training" or "layout")."""
    return tuple(n for n, f in FIELDS.items() if f.metadata["kind"] == kind)


def from_options(values):
    """The BertConfig fields set in a dict of option values ({field: value}); null values are left
    out so that BertConfig's own defaults apply. `recompute` comes from `enable_recomputation`."""
    fields = {k: values[k] for k in OPTION_FIELDS if values.get(k) is not None}
    fields["recompute"] = bool(values.get("enable_recomputation", False))
    return fields
