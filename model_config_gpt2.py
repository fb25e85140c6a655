"""GPT-2's model hyper-parameters, without TensorFlow: `GPT2Config`, keyed like Hugging Face's
config.json.

Field names are Hugging Face's `GPT2Config` keys (`n_embd`, `n_layer`, `n_head`, `n_positions`,
`vocab_size`, ...), so a config.json written by `save_pretrained` reads unchanged and `to_hf_dict`
builds a `transformers.GPT2Config`. Each field has metadata like `model_config.BertConfig`'s:
kind "architecture" (fixed by a checkpoint), "training" (dropout, initializer) or "layout" (how a
run executes the model: recomputation), and a help text.

`activation_function` uses Hugging Face's names, which differ from the BERT config's: here "gelu"
is the exact erf GELU (what the reference configs use) and "gelu_new" the tanh approximation
(OpenAI's checkpoints). `ACTIVATION_OPS` maps each to its `modeling_ops.ACTIVATIONS` name.
"""

import dataclasses
import difflib

from common.errors import UserError
from common.fileio import atomic_write_json, read_json

# Hugging Face activation name -> modeling_ops.ACTIVATIONS name. Hugging Face's "gelu" is the erf
# form; modeling_ops' "gelu" is the tanh form (Google BERT's), hence the explicit map.
ACTIVATION_OPS = {
    "gelu": "gelu_erf",
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "relu": "relu",
    "silu": "silu",
    "swish": "swish",
    "tanh": "tanh",
}

# Keys of a Hugging Face GPT-2 config.json that do not change GPT2LMHeadModel's training function
# (generation, tokenizer ids, the DoubleHeads summary, bookkeeping). They are read and dropped.
_INERT_HF_KEYS = """architectures model_type bos_token_id eos_token_id pad_token_id n_ctx output_past
    gradient_checkpointing use_cache summary_activation summary_first_dropout
    summary_proj_to_labels summary_type summary_use_proj task_specific_params transformers_version
    torch_dtype dtype return_dict output_hidden_states output_attentions torchscript
    use_bfloat16 tf_legacy_loss pruned_heads chunk_size_feed_forward is_encoder_decoder
    is_decoder cross_attention_hidden_size tie_encoder_decoder id2label label2id problem_type
    tokenizer_class prefix sep_token_id decoder_start_token_id finetuning_task
    max_length min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty
    temperature top_k top_p typical_p repetition_penalty length_penalty no_repeat_ngram_size
    encoder_no_repeat_ngram_size bad_words_ids num_return_sequences output_scores
    return_dict_in_generate forced_bos_token_id forced_eos_token_id remove_invalid_values
    exponential_decay_length_penalty suppress_tokens begin_suppress_tokens"""
INERT_HF_KEYS = frozenset(_INERT_HF_KEYS.split())
# Keys whose value must be the one GPT2LMHeadModel trains with; anything else is refused.
REQUIRED_HF_VALUES = {"add_cross_attention": False, "tie_word_embeddings": True}


def _field(default, kind, help):
    return dataclasses.field(default=default, metadata={"kind": kind, "help": help})


A, T, L = "architecture", "training", "layout"


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """GPT-2 hyper-parameters under Hugging Face's names; defaults are Hugging Face's (gpt2 small).

    `n_inner` None means 4 * n_embd. `recompute` (layout) wraps each block in tf.recompute_grad.
    Invalid values raise a one-line UserError.
    """

    vocab_size: int = _field(50257, A, "rows of the token embedding (and of the tied LM head)")
    n_positions: int = _field(1024, A, "rows of the position embedding: longest sequence")
    n_embd: int = _field(768, A, "hidden width E")
    n_layer: int = _field(12, A, "number of transformer blocks")
    n_head: int = _field(12, A, "attention heads per block (head size E / n_head)")
    n_inner: int | None = _field(None, A, "MLP width; null = 4 * n_embd")
    activation_function: str = _field(
        "gelu_new", A, "Hugging Face name: gelu_new (tanh form), gelu (exact erf form), relu, ..."
    )
    resid_pdrop: float = _field(0.1, T, "dropout on each block's attention and MLP outputs")
    embd_pdrop: float = _field(0.1, T, "dropout on the embeddings")
    attn_pdrop: float = _field(0.1, T, "dropout on the attention probabilities")
    layer_norm_epsilon: float = _field(1e-5, A, "LayerNorm epsilon")
    initializer_range: float = _field(0.02, T, "stddev of the normal initializer")
    scale_attn_weights: bool = _field(True, A, "divide attention scores by sqrt(head size)")
    scale_attn_by_inverse_layer_idx: bool = _field(
        False, A, "also divide block i's attention scores by i + 1"
    )
    reorder_and_upcast_attn: bool = _field(
        False, A, "compute the attention scores q.k in float32 even in a 16-bit compute dtype"
    )
    recompute: bool = _field(False, L, "gradient checkpointing per block (tf.recompute_grad)")
    recompute_layers: tuple | None = _field(
        None, L, "with recompute: only these blocks (0-based); null = every block"
    )

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("n_inner", "recompute_layers") and value is None:
                continue
            if field.name == "recompute_layers":
                ok = all(isinstance(i, int) and 0 <= i < self.n_layer for i in value)
                if not ok:
                    raise UserError(
                        f"GPT-2 config: recompute_layers {list(value)} must be block indices in "
                        f"[0, {self.n_layer - 1}]"
                    )
                continue
            if field.type in (int, int | None):
                ok, want = isinstance(value, int) and value >= 1, "a positive integer"
            elif field.type is float:
                ok, want = isinstance(value, int | float) and value >= 0, "a non-negative number"
            elif field.type is bool:
                ok, want = isinstance(value, bool), "true or false"
            else:
                ok, want = isinstance(value, str), "a string"
            if isinstance(value, bool) and field.type is not bool:
                ok = False
            if not ok:
                raise UserError(f"GPT-2 config: {field.name} is {value!r}, expected {want}")
        if self.n_embd % self.n_head:
            raise UserError(
                f"GPT-2 config: n_embd {self.n_embd} is not divisible by n_head {self.n_head}; "
                "change one of them"
            )
        if self.activation_function not in ACTIVATION_OPS:
            raise UserError(
                f"GPT-2 config: unknown activation_function {self.activation_function!r}; use one "
                f"of {', '.join(ACTIVATION_OPS)} (Hugging Face names: gelu is the erf form)"
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            if getattr(self, name) >= 1:
                raise UserError(
                    f"GPT-2 config: {name} must be in [0, 1), got {getattr(self, name)}"
                )
        if self.layer_norm_epsilon <= 0:
            raise UserError(
                f"GPT-2 config: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}"
            )

    @property
    def inner_size(self):
        """The MLP width: n_inner, or 4 * n_embd when it is None."""
        return 4 * self.n_embd if self.n_inner is None else self.n_inner

    @property
    def head_size(self):
        return self.n_embd // self.n_head

    @property
    def activation_op(self):
        """The `modeling_ops.ACTIVATIONS` name of activation_function."""
        return ACTIVATION_OPS[self.activation_function]

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_dict(cls, d, where="GPT-2 config"):
        """Build from a Hugging Face config.json dict (or one of configs/gpt2/).

        Keys starting with "_" (`_comment`, `_name_or_path`) and `INERT_HF_KEYS` are dropped;
        `n_vocab` is accepted for vocab_size; `REQUIRED_HF_VALUES` must hold; any other unknown
        key is a UserError naming the closest field.
        """
        if not isinstance(d, dict):
            raise UserError(f"{where} must hold a JSON object")
        d = dict(d)
        if "n_vocab" in d:
            if "vocab_size" in d and d["vocab_size"] != d["n_vocab"]:
                raise UserError(f"{where}: n_vocab and vocab_size disagree; keep one of them")
            d["vocab_size"] = d.pop("n_vocab")
        if d.get("model_type", "gpt2") != "gpt2":
            raise UserError(f"{where}: model_type is {d['model_type']!r}, expected 'gpt2'")
        fields = {}
        for key, value in d.items():
            if key in FIELDS:
                fields[key] = value
            elif key in REQUIRED_HF_VALUES:
                if value != REQUIRED_HF_VALUES[key]:
                    raise UserError(
                        f"{where}: {key}={value!r} is not supported "
                        f"(set it to {REQUIRED_HF_VALUES[key]!r} or leave it out)"
                    )
            elif not key.startswith("_") and key not in INERT_HF_KEYS:
                close = difflib.get_close_matches(key, list(FIELDS), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise UserError(f"{where}: unknown key {key!r}{hint}")
        return cls(**fields)

    @classmethod
    def from_json_file(cls, path):
        """Read a config.json (Hugging Face or configs/gpt2/); see `from_hf_dict`."""
        return cls.from_hf_dict(read_json(path, "GPT-2 config"), where=f"GPT-2 config {path}")

    def recomputes(self, i):
        """Whether block i is wrapped in tf.recompute_grad."""
        return self.recompute and (self.recompute_layers is None or i in self.recompute_layers)

    def to_json_file(self, path):
        """Write `to_hf_dict()` as JSON, atomically."""
        atomic_write_json(path, self.to_hf_dict())

    def to_hf_dict(self):
        """A Hugging Face config.json dict (`transformers.GPT2Config(**d)` builds the same model).
        Layout fields (recompute) are left out; bos/eos ids are min(50256, vocab_size - 1)."""
        d = {n: getattr(self, n) for n, f in FIELDS.items() if f.metadata["kind"] != L}
        d.update(model_type="gpt2", architectures=["GPT2LMHeadModel"], tie_word_embeddings=True)
        # <|endoftext|> is GPT-2's id 50256; a smaller vocabulary uses its last row.
        d["bos_token_id"] = d["eos_token_id"] = min(50256, self.vocab_size - 1)
        return d


FIELDS = {f.name: f for f in dataclasses.fields(GPT2Config)}
