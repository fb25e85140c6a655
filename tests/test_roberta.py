"""RoBERTa-style MLM: byte-level BPE tokenizer, FULL-SENTENCES packing, dynamic masking, training
without NSP, and Hugging Face RobertaForMaskedLM interop. References: hand-written packing tables,
NumPy counts of the masking rule, and transformers (PyTorch) for the logits."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bert_data import create_bpe_tokenizer, create_mlm_data, mlm, records
from bert_data.records import parse_example
from common.errors import UserError
from tests.run_outputs import run_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "bert_data", "sample.txt")
TINY = os.path.join(ROOT, "configs", "pretrain_roberta_tiny_128.json")
BOS, PAD, EOS, UNK, MASK = 0, 1, 2, 3, 4  # create_bpe_tokenizer's ids, spelled out
H, HEADS, INTER, VOCAB, LAYERS, POSITIONS = 36, 3, 37, 99, 2, 16


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    create_bpe_tokenizer.main(
        ["--input-file", SAMPLE, "--output-dir", str(out), "--vocab-size", "600"]
    )
    return out


@pytest.fixture(scope="module")
def sample_mlm(tmp_path_factory, tokenizer_dir):
    path = str(tmp_path_factory.mktemp("mlm") / "sample.tfrecord")
    create_mlm_data.main(
        ["--input-file", SAMPLE, "--output-file", path, "--quiet",
         "--tokenizer-file", str(tokenizer_dir / "tokenizer.json"), "--sequence-length", "128"]
    )  # fmt: skip
    return path


def read_features(path):
    rows = [parse_example(r) for r in records.read_records(path)]
    return (
        np.array([r["input_ids"] for r in rows], np.int64),
        np.array([r["input_mask"] for r in rows], np.int64),
    )


# ----------------------------------------------------------------------------- tokenizer


def test_bpe_tokenizer_is_deterministic_with_roberta_specials(tokenizer_dir, tmp_path):
    # Another process with one thread (this one has the default pool) must write the same bytes.
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    again = tmp_path / "again"
    subprocess.run(
        [sys.executable, "-m", "bert_data.create_bpe_tokenizer", "--input-file", SAMPLE,
         "--output-dir", str(again), "--vocab-size", "600"],
        cwd=ROOT, env=env, check=True, capture_output=True,
    )  # fmt: skip
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        assert (again / name).read_bytes() == (tokenizer_dir / name).read_bytes(), name

    tok, ids = create_bpe_tokenizer.load_tokenizer(str(tokenizer_dir / "tokenizer.json"))
    assert ids == {"<s>": BOS, "<pad>": PAD, "</s>": EOS, "<unk>": UNK, "<mask>": MASK}
    assert tok.get_vocab_size() == 600
    text = "It was the best of times, it was the worst of times."
    enc = tok.encode(text)
    assert enc.ids[0] == BOS and enc.ids[-1] == EOS and tok.decode(enc.ids) == text
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")] == [0, 1, 2, 3, 4]
    transformers = pytest.importorskip("transformers")
    hf = transformers.RobertaTokenizer(
        str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt")
    )
    assert hf(text)["input_ids"] == enc.ids


def test_tokenizer_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        create_bpe_tokenizer.main(
            ["--input-file", SAMPLE, "--output-dir", str(tmp_path), "--vocab-size", "100"]
        )
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--vocab-size 100" in err[0] and "261" in err[0]
    with pytest.raises(SystemExit):
        create_bpe_tokenizer.main(["--input-file", str(tmp_path / "none.txt"), "--output-dir", "x"])
    assert "not found" in capsys.readouterr().err
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(
        str(tmp_path / "w.json")
    )
    with pytest.raises(UserError, match="lacks the special token.*<s> <pad> </s> <unk> <mask>"):
        create_bpe_tokenizer.load_tokenizer(str(tmp_path / "w.json"))


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize(
    "docs, seq, want_ids, want_mask",
    [
        (  # separator inside a sequence, and a separator as the last body token
            [[10, 11, 12], [13, 14, 15, 16, 17], [18]],
            6,
            [[0, 10, 11, 12, 2, 2], [0, 13, 14, 15, 16, 2], [0, 17, 2, 18, 2, 1]],
            [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]],
        ),
        (  # a document ending with a sequence: no separator opens the next one
            [[10, 11, 12, 13], [], [14]],
            6,
            [[0, 10, 11, 12, 13, 2], [0, 14, 2, 1, 1, 1]],
            [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]],
        ),
        (  # a long document spans sequences; the stream ends on a full sequence
            [[20, 21, 22, 23, 24, 25, 26]],
            5,
            [[0, 20, 21, 22, 2], [0, 23, 24, 25, 2], [0, 26, 2, 1, 1]],
            [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]],
        ),
    ],
)
def test_full_sentences_packing_table(docs, seq, want_ids, want_mask):
    ids, mask = create_mlm_data.pack_documents(docs, seq, BOS, EOS, PAD)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)


def test_create_mlm_data_packs_documents(tokenizer_dir, tmp_path, capsys):
    docs = [
        ["It was the best of times.", "It was the worst of times."],
        ["The <mask> string is text here, and so is </s>."],
        ["A short one."],
    ]
    text = tmp_path / "docs.txt"
    text.write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    tok_file = str(tokenizer_dir / "tokenizer.json")
    out_a, out_b = tmp_path / "a.tfrecord", tmp_path / "b.tfrecord"
    create_mlm_data.main(
        ["--input-file", str(text), "--output-file", f"{out_a},{out_b}", "--quiet",
         "--tokenizer-file", tok_file, "--sequence-length", "16"]
    )  # fmt: skip
    assert "sequences of 16 tokens" in capsys.readouterr().err
    ids_a, mask_a = read_features(out_a)
    ids_b, mask_b = read_features(out_b)
    # Round robin over the shards: sequence i is in shard i % 2.
    ids = np.zeros((len(ids_a) + len(ids_b), 16), np.int64)
    mask = np.zeros_like(ids)
    ids[0::2], ids[1::2], mask[0::2], mask[1::2] = ids_a, ids_b, mask_a, mask_b

    tok, _ = create_bpe_tokenizer.load_tokenizer(tok_file)
    tok.encode_special_tokens = True
    encoded = [tok.encode(" ".join(d), add_special_tokens=False).ids for d in docs]
    assert MASK not in encoded[1] and EOS not in encoded[1]  # literal strings stay text
    stream = encoded[0] + [EOS] + encoded[1] + [EOS] + encoded[2]
    n = len(ids)
    assert n == -(-len(stream) // 14)
    assert (
        len(encoded[0]) % 14 and (len(encoded[0]) + 1 + len(encoded[1])) % 14
    )  # no cut at a doc end
    assert (ids[:, 0] == BOS).all()
    real = mask.sum(axis=1)
    assert (real[:-1] == 16).all() and (mask[-1, real[-1] :] == 0).all()
    assert (ids[np.arange(n), real - 1] == EOS).all()
    assert (ids[-1, real[-1] :] == PAD).all()
    bodies = np.concatenate([ids[r, 1 : real[r] - 1] for r in range(n)])
    np.testing.assert_array_equal(bodies, stream)


def test_create_mlm_data_errors(tokenizer_dir, tmp_path, capsys):
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(str(tmp_path / "bare.json"))
    cases = [
        (["--input-file", str(tmp_path / "missing.txt")], "not found"),
        (["--input-file", SAMPLE, "--tokenizer-file", str(tmp_path / "bare.json")], "lacks"),
        (["--input-file", SAMPLE, "--sequence-length", "2"], "too small"),
    ]
    for args, message in cases:
        argv = ["--output-file", str(tmp_path / "o.tfrecord"), "--quiet"]
        argv += ["--tokenizer-file", str(tokenizer_dir / "tokenizer.json"), *args]
        with pytest.raises(SystemExit) as exit_info:
            create_mlm_data.main(argv)
        assert exit_info.value.code != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "o.tfrecord")


# ----------------------------------------------------------------------------- dynamic masking

SPECIALS = (BOS, PAD, EOS, UNK, MASK)


def synthetic_batch(rows=3000, seq=41, vocab=1000, seed=0):
    """Packed-looking rows: <s> ids </s>, some padded at the end, a few separators inside."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, (rows, seq))
    lengths = np.where(rng.random(rows) < 0.3, rng.integers(3, seq, rows), seq)
    ids[:, 0] = BOS
    ids[np.arange(rows), lengths - 1] = EOS
    ids[rng.random((rows, seq)) < 0.02] = EOS
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    ids = np.where(mask == 1, ids, PAD)
    return ids, mask


def run_mask(ids, mask, seed=7, epoch=0, max_predictions=6, vocab=1000):
    features = {
        "input_ids": tf.constant(ids),
        "input_mask": tf.constant(mask),
        "epoch": tf.fill([len(ids)], tf.constant(epoch, tf.int64)),
        "index": tf.range(len(ids), dtype=tf.int64),
    }
    out = mlm.dynamic_mask(features, seed, 0.15, max_predictions, SPECIALS, vocab, MASK)
    return {k: v.numpy() for k, v in out.items()}


def test_dynamic_masking_rule_and_statistics():
    ids, mask = synthetic_batch()
    out = run_mask(ids, mask)
    maskable = (mask == 1) & ~np.isin(ids, SPECIALS)
    n = maskable.sum(axis=1)
    want_k = np.where(n > 0, np.clip(np.round(n * 0.15), 1, 6), 0)
    used = out["masked_lm_weights"] == 1
    np.testing.assert_array_equal(used.sum(axis=1), want_k)
    assert (used[:, :-1] >= used[:, 1:]).all()  # used slots first
    pos = out["masked_lm_positions"]
    assert (pos[~used] == 0).all() and (out["masked_lm_ids"][~used] == 0).all()
    for r in range(len(ids)):
        p = pos[r, used[r]]
        assert (np.diff(p) > 0).all()
    rows = np.nonzero(used)[0]
    chosen = pos[used]
    assert maskable[rows, chosen].all()  # specials and padding are never chosen
    np.testing.assert_array_equal(out["masked_lm_ids"][used], ids[rows, chosen])
    selected = np.zeros_like(maskable)
    selected[rows, chosen] = True
    np.testing.assert_array_equal(out["input_ids"][~selected], ids[~selected])
    np.testing.assert_array_equal(out["input_mask"], mask)
    assert (out["segment_ids"] == 0).all()

    new, old = out["input_ids"][rows, chosen], ids[rows, chosen]
    assert len(new) > 10000
    as_mask, kept = np.mean(new == MASK), np.mean(new == old)
    replaced = (new != MASK) & (new != old)
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
    assert abs(np.mean(replaced) - 0.1) < 0.02
    assert not np.isin(new[replaced], SPECIALS).any() and (new[replaced] < 1000).all()
    # Every maskable slot is equally likely: compare per-position rates of full-length rows.
    full = mask.sum(axis=1) == ids.shape[1]
    rate = selected[full, 1:-1].sum(axis=0) / maskable[full, 1:-1].sum(axis=0)
    expected = used[full].sum() / maskable[full].sum()
    assert np.all(np.abs(rate - expected) < 0.04), rate


def test_dynamic_masks_depend_only_on_seed_epoch_and_index():
    ids, mask = synthetic_batch(rows=200)
    first = run_mask(ids, mask)
    same = run_mask(ids, mask)
    for key in first:
        np.testing.assert_array_equal(first[key], same[key])
    for other in (run_mask(ids, mask, epoch=1), run_mask(ids, mask, seed=8)):
        differs = (other["masked_lm_positions"] != first["masked_lm_positions"]).any(axis=1)
        assert differs.mean() > 0.9


def mlm_opts(**extra):
    from bert_data.pretraining import Pipeline

    return Pipeline(
        seq_length=128, max_predictions_per_seq=20, micro_batch_size=4,
        gradient_accumulation_count=3, parallel_io_threads=2, **extra,
    )  # fmt: skip


def unmask(element):
    """Original ids of each sequence of a [GA, B, ...] element, and its masked positions."""
    ids = element["input_ids"].numpy().reshape(-1, 128).astype(np.int64)
    pos = element["masked_lm_positions"].numpy().reshape(ids.shape[0], -1)
    labels = element["masked_lm_ids"].numpy().reshape(pos.shape)
    used = element["masked_lm_weights"].numpy().reshape(pos.shape) == 1
    for r in range(len(ids)):
        ids[r, pos[r, used[r]]] = labels[r, used[r]]
    return ids, [tuple(pos[r, used[r]]) for r in range(len(ids))]


def test_mlm_dataset_new_masks_each_pass_and_exact_resume(sample_mlm, tokenizer_dir, tmp_path):
    masking = mlm.masking_from_tokenizer(str(tokenizer_dir / "tokenizer.json"))
    originals, _ = read_features(sample_mlm)
    opts = mlm_opts()
    it = iter(mlm.mlm_dataset([sample_mlm], opts, 3, masking))
    seen = {}
    for _ in range(3 * len(originals) // 12 + 1):  # three passes over the records
        element = next(it)
        assert element["input_ids"].shape == (3, 4, 128)
        assert element["masked_lm_weights"].dtype == tf.float32
        for row, positions in zip(*unmask(element)):
            seen.setdefault(row.tobytes(), []).append(positions)
    assert set(seen) <= {r.tobytes() for r in originals}
    repeated = [p for p in seen.values() if len(p) > 1]
    assert len(repeated) > len(originals) // 2
    assert all(len(set(p)) == len(p) for p in repeated)  # a record's masks differ between passes

    checkpoint = tf.train.Checkpoint(iterator=it)
    path = checkpoint.write(str(tmp_path / "data"))
    want = [next(it) for _ in range(4)]
    resumed = iter(mlm.mlm_dataset([sample_mlm], opts, 3, masking))
    tf.train.Checkpoint(iterator=resumed).read(path).assert_consumed()
    for a, b in zip(want, [next(resumed) for _ in range(4)]):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


def test_check_files_names_the_mismatch(sample_mlm):
    assert mlm.check_files([sample_mlm], 128, 600) > 0
    with pytest.raises(UserError, match="sequence length 128 but seq_length is 64"):
        mlm.check_files([sample_mlm], 64, 600)
    with pytest.raises(UserError, match=">= vocab_size 50"):
        mlm.check_files([sample_mlm], 128, 50)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("size", ["base", "tiny"])
def test_roberta_configs_parse_with_the_recipe(capsys, size):
    import options

    path = os.path.join(ROOT, "configs", f"pretrain_roberta_{size}_128.json")
    opts = options.parse_options(["--config", path])
    assert capsys.readouterr().err == ""
    assert opts["model_type"] == "roberta" and not opts["static_mask"]
    fields = options.bert_config_fields(opts)
    assert (fields["position_offset"], fields["type_vocab_size"]) == (2, 1)
    assert (fields["layer_norm_eps"], fields["hidden_act"], fields["use_qkv_bias"]) == (
        1e-5,
        "gelu_erf",
        True,
    )
    assert fields["use_cls_layer"] and fields["use_prediction_bias"]
    assert fields["max_position_embeddings"] == 514 and opts["seq_length"] == 128
    assert (opts["optimizer"], opts["beta2"], opts["weight_decay_rate"]) == ("adamw", 0.98, 0.01)
    if size == "base":
        assert (opts["vocab_size"], opts["base_learning_rate"], opts["warmup"]) == (
            50265,
            3e-4,
            1000,
        )
        assert (fields["hidden_size"], fields["num_hidden_layers"]) == (768, 12)


STEP = re.compile(r"^step: (\d+), .*?mlm_loss: ([\d.]+), mlm_acc: ([\d.]+) %", re.M)


def cli(*args):
    return run_script(os.path.join(ROOT, "run_pretraining.py"), *args)


def test_tiny_roberta_trains_on_sample_data(sample_mlm, tokenizer_dir, tmp_path):
    result = cli(
        "--config", TINY, "--train-file", sample_mlm, "--eval-file", sample_mlm,
        "--tokenizer-file", str(tokenizer_dir / "tokenizer.json"), "--vocab-size", "600",
        "--save-path", str(tmp_path), "--num-train-steps", "14", "--steps-per-logs", "1",
        "--hidden-size", "36", "--num-attention-heads", "3", "--intermediate-size", "37",
        "--micro-batch-size", "8", "--global-batch-size", "16", "--warmup", "2",
        "--base-learning-rate", "0.005", "--xla", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    steps = STEP.findall(result.stdout)
    assert [int(s[0]) for s in steps] == list(range(14))
    assert "nsp" not in result.stdout[result.stdout.index("step: 0") :]
    losses = np.array([float(s[1]) for s in steps])
    assert losses[0] == pytest.approx(np.log(600), abs=0.3)  # untrained: about uniform
    assert losses[-4:].mean() < losses[:4].mean() - 0.3
    assert re.search(
        r"^eval at step \d+ \(\d+ sequences\): mlm_loss: [\d.]+, mlm_acc: [\d.]+$",
        result.stdout,
        re.M,
    )
    config = json.loads(next(iter(tmp_path.glob("*/bert_config.json"))).read_text())
    assert config["position_offset"] == 2 and config["type_vocab_size"] == 1


def test_roberta_config_errors_are_one_line(sample_records, tokenizer_dir, tmp_path):
    for tokenizer, message in (
        (tmp_path / "missing.json", "tokenizer file not found"),
        (tokenizer_dir / "tokenizer.json", "holds BERT instances with fixed masks"),
    ):
        result = cli("--config", TINY, "--train-file", sample_records["standard"],
                     "--save-path", str(tmp_path), "--tokenizer-file", str(tokenizer))  # fmt: skip
        # One error line, no traceback (TensorFlow's start-up chatter may precede it).
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


# ----------------------------------------------------------------------------- interop


def random_roberta():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=INTER, max_position_embeddings=POSITIONS, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.RobertaForMaskedLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            one = name.endswith(("LayerNorm.weight", "layer_norm.weight"))
            p.copy_(torch.randn(p.shape) * 0.3 + (1.0 if one else 0.0))
    return model


IDS = np.array([[BOS, 17, 45, 98, 6, 11, EOS], [BOS, 60, 61, EOS, 70, EOS, PAD]], np.int64)
POSITIONS_MASKED = np.array([[1, 4, 5], [2, 4, 5]], np.int32)


def torch_logits(model):
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(IDS), attention_mask=torch.tensor((IDS != PAD).astype(np.int64))
        )
    return out.logits.numpy()[np.arange(2)[:, None], POSITIONS_MASKED]  # [B,P,V]


def test_roberta_logits_match_transformers_and_round_trip(tmp_path):
    import convert_ckpt
    import interop
    import modeling

    hf_model = random_roberta()
    transformers = pytest.importorskip("transformers")
    hf_model.save_pretrained(tmp_path / "hf")
    want = torch_logits(hf_model)
    convert_ckpt.main(
        ["hf2graphcore", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "ours")]
    )
    config = modeling.BertConfig.from_json_file(str(tmp_path / "ours" / "bert_config.json"))
    assert (config.position_offset, config.type_vocab_size, config.layer_norm_eps) == (2, 1, 1e-5)
    assert config.hidden_act == "gelu_erf" and config.max_position_embeddings == POSITIONS
    ours = modeling.BertModel(config, heads=("mlm",))
    report = interop.load_into(str(tmp_path / "ours"), ours.params)
    assert not report.missing and not report.unexpected
    features = {
        "input_ids": tf.constant(IDS, tf.int32),
        "input_mask": tf.constant(IDS != PAD, tf.int32),
        "segment_ids": tf.zeros(IDS.shape, tf.int32),
        "masked_lm_positions": tf.constant(POSITIONS_MASKED),
    }
    got = ours(features)["mlm_logits"].numpy()
    assert np.max(np.abs(got - want)) <= 1e-5

    convert_ckpt.main(
        ["graphcore2hf", str(tmp_path / "ours"), "--output_dir", str(tmp_path / "hf2")]
    )
    hf_config = json.loads((tmp_path / "hf2" / "config.json").read_text())
    assert hf_config["model_type"] == "roberta" and hf_config["architectures"] == [
        "RobertaForMaskedLM"
    ]
    assert (hf_config["pad_token_id"], hf_config["bos_token_id"], hf_config["eos_token_id"]) == (
        1,
        0,
        2,
    )
    again, info = transformers.RobertaForMaskedLM.from_pretrained(
        tmp_path / "hf2", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    np.testing.assert_array_equal(torch_logits(again.eval()), want)


def test_roberta_names_map_both_ways():
    import interop

    pairs = {
        "cls/predictions/transform/dense/kernel": ("lm_head.dense.weight", True),
        "cls/predictions/transform/LayerNorm/gamma": ("lm_head.layer_norm.weight", False),
        "cls/predictions/output_bias": ("lm_head.bias", False),
        "bert/encoder/layer_1/attention/projection/dense/kernel": (
            "roberta.encoder.layer.1.attention.output.dense.weight",
            True,
        ),
        "bert/embeddings/position_embeddings": (
            "roberta.embeddings.position_embeddings.weight",
            False,
        ),
    }
    for ours, (hf, transpose) in pairs.items():
        assert interop.hf_name(ours, "roberta.") == (hf, transpose)
        assert interop.canonical_name_from_hf(hf) == (ours, transpose)
    with pytest.raises(UserError, match="position_offset 3"):
        interop.is_roberta({"position_offset": 3})
