"""Pipeline stages across devices: which device holds each part of a model, and the step's schedule.

A model is cut into stages, each placed on one device: BERT by `pipeline_stages` (lists of the
tokens emb, pos, hid, mlm, nsp, loc, glu, glu_reg) and `device_mapping` (the device of each
stage), GPT-2 by `--layers-per-ipu` (blocks per device; the embeddings and the tied LM head sit on
device 0, as in the reference). A `Placement` maps the model's parts to devices:

  emb   embeddings (and the attention mask, computed once there)
  hid i encoder layer / decoder block i
  mlm   the (masked) LM head: BERT's cls/predictions, GPT-2's ln_f and tied projection, and the loss
  cls   what reads [CLS]: the pooler and NSP, or a fine-tuning head (loc, glu, glu_reg)

The model code asks `modeling_ops.stage(kind, index)` for a device scope and creates each variable
on the device of its part (`Placement.variable_device`); without an active placement both are
no-ops, so the same code runs unpipelined. The training step (training.Trainer) runs the
gradient-accumulation micro-batches of one optimizer step unrolled through the stages and takes
one `tf.gradients` of their summed losses; TensorFlow places every gradient op beside its forward
op, so the backward runs on the stage devices too. The graph's dataflow is the schedule: stage s
works on micro-batch m while stage s+1 works on micro-batch m-1 (GPipe: all micro-batches' stage
inputs are kept until their backward; per-layer recomputation keeps only those). The result is the
unpipelined step's, up to the order of floating-point sums.

Devices: GPUs when the machine has them, else the CPU split into as many logical devices. One
model replica per process: pipelining does not combine with --replicas > 1 or several workers
(`check_alone`).
"""

import re

from common.errors import UserError

KINDS = ("emb", "hid", "mlm", "cls")
_TOKEN_KIND = {"emb": "emb", "pos": "emb", "hid": "hid", "mlm": "mlm", "nsp": "cls",
               "loc": "cls", "glu": "cls", "glu_reg": "cls"}  # fmt: skip
# Variable name -> part, first match wins: BERT/GroupBERT (Google names) and GPT-2 (HF names).
_VARIABLE_PARTS = (
    (re.compile(r"bert/embeddings/|transformer/w[tp]e/"), "emb"),
    (re.compile(r"bert/encoder/layer_(\d+)/|transformer/h/(\d+)/"), "hid"),
    (re.compile(r"bert/encoder/"), "last_hid"),  # GroupBERT's final LayerNorm
    (re.compile(r"cls/predictions/|transformer/ln_f/"), "mlm"),
)


class Placement:
    """Devices of a model's parts.

    Args:
      layer_devices: device index of each encoder layer / decoder block (0-based).
      part_devices: {"emb" | "mlm" | "cls": device index}.
      stages: [(device index, description)] in forward order, for the report.

    Attributes:
      num_devices: how many devices the placement uses (indices 0..num_devices-1).
      names: device names, set by `training.make_strategy` (e.g. "/device:CPU:1").
    """

    def __init__(self, layer_devices, part_devices, stages):
        self.layer_devices = list(layer_devices)
        self.part_devices = dict(part_devices)
        self.stages = list(stages)
        self.num_devices = 1 + max([*self.layer_devices, *self.part_devices.values()])
        self.names = None

    def index(self, kind, layer=None):
        """Device index of a part ("hid" needs the layer index)."""
        if kind == "hid":
            return self.layer_devices[layer]
        return self.part_devices[kind]

    def device(self, kind, layer=None):
        """Device name of a part (once `names` is set)."""
        return self.names[self.index(kind, layer)]

    def variable_device(self, name):
        """Device name of the variable `name` (parts by name; fine-tuning heads go to "cls")."""
        for pattern, kind in _VARIABLE_PARTS:
            found = pattern.match(name)
            if found:
                if kind == "last_hid":
                    return self.names[self.layer_devices[-1]]
                layer = next((int(g) for g in found.groups() if g is not None), None)
                return self.device(kind, layer)
        return self.device("cls")

    def report(self, params, slots=None):
        """Lines describing each device: its stages, and the weights and optimizer state (MB)
        that sit there (read from the variables' own devices)."""

        def megabytes(variables):
            return sum(v.shape.num_elements() * v.dtype.size for v in variables) / 2**20

        lines = []
        for d, name in enumerate(self.names):
            held = [v for v in params.values() if v.device.endswith(name)]
            state = [v for v in (slots or {}).values() if v.device.endswith(name)]
            what = " | ".join(desc for dev, desc in self.stages if dev == d)
            lines.append(
                f"pipeline device {d} ({name}): {what}; {len(held)} variables, "
                f"{megabytes(held):.1f} MB weights + {megabytes(state):.1f} MB optimizer state"
            )
        return lines


def from_bert(stages, mapping, num_layers):
    """The placement of `pipeline_stages` on `device_mapping`, or None when everything is on one
    device (no mapping, or every stage mapped to the same device).

    Raises:
      UserError: one line when the mapping and the stages do not fit together.
    """
    if mapping is None or len(set(mapping)) <= 1:
        return None
    if stages is None:
        raise UserError(
            f"device_mapping {mapping} places stages on several devices, but pipeline_stages is "
            "not set: give the stages (lists of emb, pos, hid, mlm, nsp, loc, glu, glu_reg)"
        )
    if len(mapping) != len(stages):
        raise UserError(
            f"device_mapping has {len(mapping)} entries but pipeline_stages has {len(stages)} "
            "stages: give one device per stage"
        )
    _check_devices(mapping, "device_mapping")
    layers, parts, where = [], {}, []
    for device, tokens in zip(mapping, stages):
        for token in tokens:
            kind = _TOKEN_KIND[token]
            if kind == "hid":
                layers.append(device)
            elif parts.setdefault(kind, device) != device:
                raise UserError(
                    f"pipeline_stages puts '{token}' on device {device} but its part "
                    f"({kind}) is already on device {parts[kind]}: keep emb and pos, and nsp with "
                    "the fine-tuning heads, in one stage"
                )
        where.append((device, f"[{','.join(_runs(tokens))}]"))
    if len(layers) != num_layers:
        raise UserError(
            f"pipeline_stages has {len(layers)} 'hid' layers but the model has {num_layers}"
        )
    last = mapping[-1]
    parts.setdefault("emb", mapping[0])
    parts.setdefault("mlm", last)
    parts.setdefault("cls", parts["mlm"])
    return Placement(layers, parts, where)


def from_gpt2(layers_per_device, num_layers):
    """The placement of GPT-2's `--layers-per-ipu` (blocks per device; the embeddings and the tied
    LM head on device 0), or None for a single device."""
    if not layers_per_device or len(layers_per_device) <= 1:
        return None
    given = " ".join(map(str, layers_per_device))
    if min(layers_per_device) < 0:
        raise UserError(f"--layers-per-ipu {given}: block counts cannot be negative")
    if sum(layers_per_device) != num_layers:
        raise UserError(
            f"--layers-per-ipu {given} sums to {sum(layers_per_device)}, but the model has "
            f"{num_layers} blocks"
        )
    layers = [d for d, n in enumerate(layers_per_device) for _ in range(n)]
    stages, first = [], 0
    for d, n in enumerate(layers_per_device):
        parts = (["wte,wpe"] if d == 0 else []) + ([f"h.{first}-{first + n - 1}"] if n else [])
        parts += ["ln_f,lm_head"] if d == 0 else []
        stages.append((d, " ".join(parts) or "empty"))
        first += n
    return Placement(layers, {"emb": 0, "mlm": 0, "cls": 0}, stages)


def check_alone(placement, replicas, workers):
    """One model replica per process: refuse pipelining with data-parallel replicas."""
    if placement is None or (replicas <= 1 and workers <= 1):
        return
    what = f"--replicas {replicas}" if replicas > 1 else f"{workers} workers"
    raise UserError(
        f"pipeline stages on {placement.num_devices} devices do not combine with {what}: "
        f"run one pipelined replica per process (--replicas 1, one worker), or drop the "
        f"stage mapping and train data-parallel"
    )


def _check_devices(mapping, what):
    if min(mapping) < 0:
        raise UserError(f"{what} {mapping}: device indices start at 0")
    unused = sorted(set(range(max(mapping) + 1)) - set(mapping))
    if unused:
        raise UserError(
            f"{what} {mapping} leaves device{'s' * (len(unused) > 1)} "
            f"{', '.join(map(str, unused))} without a stage: number the devices 0..N-1"
        )


def _runs(tokens):
    """["emb", "hid", "hid"] -> ["emb", "hid×2"]."""
    out = []
    for t in tokens:
        if out and out[-1][0] == t:
            out[-1][1] += 1
        else:
            out.append([t, 1])
    return [t if n == 1 else f"{t}×{n}" for t, n in out]
