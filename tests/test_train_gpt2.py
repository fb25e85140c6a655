"""train_gpt2.py: the reference's command line, training, exact resume, chunked loss, bad input."""

import glob
import json
import os
import pickle
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import options_gpt2
import train_gpt2
from common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=97, n_positions=16, n_embd=24, n_layer=2, n_head=3,
            activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
            model_type="gpt2")  # fmt: skip
STEP = re.compile(r"^step (\d+) of epoch (\d+), loss: ([\d.]+), acc: ([\d.]+), lr: ([\d.e-]+), "
                  r"throughput: [\d.]+ samples/sec, tokens/s: [\d,]+, mfu: ", re.M)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2cfg") / "config.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def run(capsys, *args):
    code = train_gpt2.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_args(tiny_config, out_dir, *extra):
    return ["--model-config", tiny_config, "--max-len", 12, "--dataset", "generated",
            "--batch-size", 2, "--gradient-accumulation", 2, "--device-iterations", 2,
            "--learning-rate", 3e-3, "--xla", "false", "--seed", 7,
            "--checkpoint-output-dir", out_dir, *extra]  # fmt: skip


def test_generated_data_trains_with_the_reference_log_line(capsys, tiny_config, tmp_path):
    args = tiny_args(tiny_config, tmp_path, "--epochs", 6, "--learning-rate", 1e-2)
    args[args.index("--gradient-accumulation") + 1] = 1
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "Samples per epoch: 16" in out and "Steps per epoch: 4" in out  # 4 host iterations
    steps = STEP.findall(out)
    assert [(int(s), int(e)) for s, e, *_ in steps] == [(i, e) for e in range(6) for i in range(4)]
    losses = np.array([float(s[2]) for s in steps])
    assert losses[0] == pytest.approx(np.log(97), abs=0.3)  # untrained: about uniform
    assert losses[-4:].mean() < losses[:4].mean() - 0.2  # the 16 random samples are being learnt
    (run_dir,) = glob.glob(str(tmp_path / "gpt2_adamw_*"))
    saved = json.loads(Path(run_dir, "arguments.json").read_text())
    assert saved["max_len"] == 12 and saved["optimizer"] == "AdamW"
    assert json.loads(Path(run_dir, "config.json").read_text())["n_positions"] == 12
    assert os.path.isfile(os.path.join(run_dir, "hf", "model.safetensors"))


def _final_weights(run_dir):
    import tensorflow as tf

    reader = tf.train.load_checkpoint(run_dir)
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith("transformer/")]
    return {n: reader.get_tensor(n) for n in names}


def _losses(out):
    return [m[2] for m in STEP.findall(out)]


def test_resume_continues_bitwise(capsys, tiny_config, tmp_path):
    whole, half = tmp_path / "whole", tmp_path / "half"
    common = ["--optimizer", "LAMB", "--lr-schedule", "cosine", "--lr-warmup", "0.25",
              "--lr-decay-steps", 4, "--weight-decay", "0.01"]  # fmt: skip
    code, out_whole, err = run(
        capsys, *tiny_args(tiny_config, whole, "--training-steps", 8, *common)
    )
    assert code == 0, err
    code, out_a, err = run(capsys, *tiny_args(tiny_config, half, "--training-steps", 4, *common))
    assert code == 0, err
    (first,) = glob.glob(str(half / "gpt2_*"))
    code, out_b, err = run(
        capsys,
        *tiny_args(tiny_config, half, "--training-steps", 8, *common,
                   "--checkpoint-input-dir", first, "--resume-training-from-checkpoint"),
    )  # fmt: skip
    assert code == 0, err
    assert "resumed from" in out_b
    assert _losses(out_a) + _losses(out_b) == _losses(out_whole)
    (whole_dir,) = glob.glob(str(whole / "gpt2_*"))
    a, b = _final_weights(whole_dir), _final_weights(first)
    assert a.keys() == b.keys()
    assert len([n for n in a if "/lamb_" not in n]) == 2 + 12 * 2 + 2  # weights, then LAMB slots
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_compile_only_exits_zero_and_trains_nothing(capsys, tiny_config, tmp_path):
    code, out, err = run(capsys, *tiny_args(tiny_config, tmp_path / "c", "--compile-only"))
    assert code == 0, err
    assert "Compile time:" in out and "nothing was trained" in out
    assert not STEP.findall(out)


def test_serialized_loss_equals_the_plain_loss_and_its_gradients():
    import tensorflow as tf

    from objectives import causal_lm

    rng = np.random.default_rng(0)
    b, s, e, v = 3, 11, 8, 29
    hidden = tf.constant(rng.normal(size=(b, s, e)), tf.float32)
    table = tf.constant(rng.normal(size=(v, e)), tf.float32)
    targets = tf.constant(rng.integers(0, v, size=(b, s)), tf.int32)
    weights = tf.constant((rng.random((b, s)) > 0.2).astype(np.int32))

    def plain(h, t):
        return causal_lm.next_token_loss(tf.einsum("bse,ve->bsv", h, t), targets, weights)

    def chunked(h, t):
        return causal_lm.serialized_lm_loss(h, t, targets, weights, seq_chunk=4, vocab_chunks=3)

    results = []
    for fn in (plain, chunked):
        with tf.GradientTape() as tape:
            tape.watch([hidden, table])
            out = fn(hidden, table)
        grads = tape.gradient(out["loss"], [hidden, table])
        results.append((out, grads))
    (p, pg), (c, cg) = results
    for key in ("loss", "acc", "tokens"):
        np.testing.assert_allclose(c[key].numpy(), p[key].numpy(), rtol=1e-6)
    for a, b_ in zip(pg, cg):
        np.testing.assert_allclose(b_.numpy(), a.numpy(), rtol=1e-5, atol=1e-7)
    assert float(p["tokens"]) == float(tf.reduce_sum(weights))


def test_sequence_serialization_flags_train_to_the_same_losses(capsys, tiny_config, tmp_path):
    outs = []
    for extra in ([], ["--enable-sequence-serialized", "True", "--serialized-seq-len", "5",
                       "--embedding-serialization-factor", "4",
                       "--recompute-checkpoint-every-layer", "True"]):  # fmt: skip
        code, out, err = run(capsys, *tiny_args(tiny_config, tmp_path / str(len(extra)),
                                                "--training-steps", 4, *extra))  # fmt: skip
        assert code == 0, err
        outs.append(np.array([float(x) for x in _losses(out)]))
    np.testing.assert_allclose(outs[1], outs[0], rtol=2e-5)


SEED_README = (
    "--model gpt2 --max-len 1024 --layers-per-ipu 0 4 4 4 --matmul-proportion 0.15 0.15 0.15 0.15 "
    "--ipus-per-replica 4 --replication-factor 1 --epochs 3 --gradient-accumulation 512 "
    "--device-iterations 1 --batch-size 1 --enable-sequence-serialized True --remap-logit True "
    "--embedding-serialization-factor 4 --recompute-checkpoint-every-layer True "
    "--enable-half-partials True --train-path generated --compile-only False"
)
RECIPE_SMALL = (
    "--model gpt2 --optimizer AdamW --learning-rate 1.5e-4 --lr-schedule cosine --lr-warmup 0.01 "
    "--layers-per-ipu 0 4 4 4 --matmul-proportion 0.15 0.15 0.15 0.15 --ipus-per-replica 4 "
    "--replication-factor 4 --epochs 20 --gradient-accumulation 2048 --device-iterations 8 "
    "--batch-size 1 --max-len 1024 --enable-sequence-serialized True --remap-logit True "
    "--embedding-serialization-factor 4 --recompute-checkpoint-every-layer True "
    "--enable-half-partials True --replicated-tensor-sharding True --dataset generated"
)
RECIPE_TEST = (
    "--model gpt2-test --layers-per-ipu 0 4 --matmul-proportion 0.20 0.20 --ipus-per-replica 2 "
    "--replication-factor 1 --epochs 3 --gradient-accumulation 32 --device-iterations 1 "
    "--batch-size 1 --max-len 128 --enable-sequence-serialized False "
    "--embedding-serialization-factor 8 --recompute-checkpoint-every-layer True "
    "--enable-half-partials True --dataset generated"
)


@pytest.mark.parametrize("command", [SEED_README, RECIPE_SMALL, RECIPE_TEST])
def test_reference_commands_parse_and_warn_once(capsys, command):
    cfg = options_gpt2.parse(shlex.split(command))
    err = capsys.readouterr().err
    assert err.count("IPU-only flags have no effect") == 1, err
    assert cfg.a.dataset == "generated"
    a = cfg.a
    assert (
        cfg.loop.global_batch_size == a.batch_size * a.gradient_accumulation * a.replication_factor
    )
    assert cfg.loop.replicas == a.replication_factor


def test_seed_era_aliases(capsys, tmp_path):
    cfg = options_gpt2.parse(["--train-path", "dynamic", "--data-prefix", "d/wiki_text_document",
                              "--pretrained-checkpoint", "ck", "--save-model-path", "out"])  # fmt: skip
    assert (cfg.a.dataset, cfg.a.input_files) == ("mmap", "d/wiki_text_document")
    assert (cfg.a.checkpoint_input_dir, cfg.checkpoint.save_path) == ("ck", "out")
    cfg = options_gpt2.parse(["--train-path", "tfrecord", "--tfrecord-path", "a.tfrecord", "b*.tf"])
    assert (cfg.a.dataset, cfg.a.input_files) == ("tfrecord", "a.tfrecord,b*.tf")
    cfg = options_gpt2.parse(["--train-path", "wiki.pkl", "--compile-only", "t"])
    assert (cfg.a.dataset, cfg.a.input_files, cfg.loop.compile_only) == ("pickle", "wiki.pkl", True)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "set --dataset"),
        (["--dataset", "mmap"], "needs --input-files"),
        (["--train-path", "generated", "--dataset", "mmap"], "means --dataset generated"),
        (
            ["--dataset", "generated", "--optimizer", "Adam", "--weight-decay", "0.1"],
            "Adam has none",
        ),
        (["--dataset", "generated", "--lr-warmup", "1.5"], "fraction in [0, 1)"),
        (["--dataset", "generated", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--dataset", "generated", "--resume-training-from-checkpoint"], "needs --checkpoint"),
        (["--dataset", "generated", "--max-lenn", "3"], "unrecognized arguments"),
    ],
)
def test_bad_command_lines_fail_in_one_line(argv, message):
    with pytest.raises(UserError, match=re.escape(message)) as err:
        options_gpt2.parse(argv)
    assert "\n" not in str(err.value)


def fails(capsys, argv, message):
    """main(argv) exits non-zero with one `error:` line containing `message`."""
    with pytest.raises(SystemExit) as exit_:
        train_gpt2.main([str(a) for a in argv])
    assert exit_.value.code != 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], lines


def test_bad_model_settings_fail_before_training(capsys, tiny_config, tmp_path):
    args = tiny_args(tiny_config, tmp_path / "out")
    fails(
        capsys,
        args + ["--layers-per-ipu", 1, 2],
        "--layers-per-ipu 1 2 sums to 3, but the model has 2",
    )
    small = tmp_path / "small.pkl"
    small.write_bytes(pickle.dumps([list(range(1, 30)), list(range(5, 20))]))
    data = ["--dataset", "pickle", "--input-files", small]
    fails(capsys, args + data + ["--batch-size", 64], "not enough data in --input-files")
    wrong = tmp_path / "wrong.pkl"
    wrong.write_bytes(pickle.dumps([list(range(90, 120))]))
    fails(capsys, args + ["--dataset", "pickle", "--input-files", wrong],
          f"{wrong}: token id 119 >= vocab_size 97")  # fmt: skip
    fails(capsys, args + ["--max-len", 40, "--checkpoint-input-dir", tmp_path / "none"], "none")
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_weight_decay_spares_every_1d_tensor(tiny_config):
    import modeling_gpt2
    import optimization
    from model_config_gpt2 import GPT2Config

    params = modeling_gpt2.GPT2Model(GPT2Config.from_json_file(tiny_config)).params
    exempt = {n for n in params if optimization._matches(n, optimization.WD_EXCLUDE_1D)}
    assert exempt == {n for n, v in params.items() if len(v.shape) == 1}


DATA = os.environ.get("SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
VOCAB = os.path.join(DATA, "vocab", "gpt2", "encoder.json")
MERGES = os.path.join(DATA, "vocab", "gpt2", "vocab.bpe")
WIKI = os.path.join(DATA, "wikitext-2")
needs_data = pytest.mark.skipif(
    not os.path.isfile(VOCAB) or not os.path.isdir(WIKI),
    reason=f"GPT-2 vocabulary and WikiText-2 not found under {DATA} (set SHARED_DATA)",
)


@pytest.fixture(scope="module")
def wiki_texts(tmp_path_factory):
    """The first ~12 KB of wiki.valid.raw and ~4 KB of wiki.test.raw, as files."""
    out = tmp_path_factory.mktemp("wiki")
    paths = []
    for name, size in (("wiki.valid.raw", 12_000), ("wiki.test.raw", 4_000)):
        text = Path(WIKI, name).read_text(encoding="utf-8")[:size]
        (out / name).write_text(text, encoding="utf-8")
        paths.append(str(out / name))
    return paths


def gpt2_vocab_config(tmp_path):
    path = tmp_path / "vocab_config.json"
    path.write_text(json.dumps({**TINY, "vocab_size": 50257}))
    return str(path)


@needs_data
def test_every_data_source_trains(capsys, tmp_path, wiki_texts, tiny_config):
    """text (with held-out perplexity), mmap (Megatron files of our preprocess_data), tfrecord and
    pickle (ids of the same text): each trains two host iterations from the same flags."""
    import tensorflow as tf

    from gpt2_data import preprocess_data, tokenizer

    train, test = wiki_texts
    config = gpt2_vocab_config(tmp_path)
    tok = tokenizer.load(VOCAB, MERGES)
    paragraphs = [p for p in Path(train).read_text(encoding="utf-8").split("\n \n") if p.strip()]
    docs = [tok.encode(p) for p in paragraphs]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    assert preprocess_data.main(["--input", str(jsonl), "--output-prefix", str(tmp_path / "wiki"),
                                 "--vocab-file", VOCAB, "--merge-file", MERGES,
                                 "--append-eod"]) in (0, None)  # fmt: skip
    pkl = tmp_path / "docs.pkl"
    pkl.write_bytes(pickle.dumps(docs))
    rec = str(tmp_path / "docs.tfrecord")
    with tf.io.TFRecordWriter(rec) as w:
        for d in docs:
            feature = tf.train.Feature(int64_list=tf.train.Int64List(value=d[:14]))
            w.write(tf.train.Example(features=tf.train.Features(
                feature={"input_ids": feature})).SerializeToString())  # fmt: skip
    sources = {
        "text": ["--input-files", train, "--eval-files", test],
        "mmap": ["--input-files", str(tmp_path / "wiki_text_document")],
        "tfrecord": ["--input-files", str(tmp_path / "docs*.tfrecord")],
        "pickle": ["--input-files", str(pkl), "--stride", 6],
    }
    for dataset, extra in sources.items():
        args = tiny_args(config, tmp_path / dataset, "--training-steps", 4)
        args[args.index("generated")] = dataset
        code, out, err = run(capsys, *args, *extra, "--vocab-file", VOCAB, "--merges-file", MERGES)
        assert code == 0, (dataset, err)
        losses = [float(x) for x in _losses(out)]
        assert len(losses) == 2 and all(np.isfinite(losses)), (dataset, out)
        assert losses[0] == pytest.approx(np.log(50257), abs=0.5), dataset
        if dataset == "text":
            match = re.search(
                r"^eval at step 3: loss: ([\d.]+), ppl: ([\d.]+), tokens: ([\d.]+)", out, re.M
            )
            assert match, out
            loss, ppl, tokens = map(float, match.groups())
            assert ppl == pytest.approx(np.exp(loss), rel=1e-4)
            assert (
                tokens == (len(tok.encode(Path(test).read_text(encoding="utf-8"))) - 1) // 12 * 12
            )
        if dataset == "mmap":  # one sequence per paragraph; the last 0.3% (here: 1) held out
            assert f"{len(docs)} documents ({len(docs) - 1} train)" in out, out
            small_vocab = tiny_args(tiny_config, tmp_path / "x", "--training-steps", 4)
            small_vocab[small_vocab.index("generated")] = "mmap"
            fails(capsys, small_vocab + extra, "wiki_text_document.bin: token id ")
            assert not os.path.exists(tmp_path / "x")


def _tiny_hf_folder(path):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=16, n_embd=24, n_layer=2, n_head=3)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path, safe_serialization=True)
    return path


def test_starts_from_a_hugging_face_folder(capsys, tmp_path):
    """--checkpoint-input-dir HF folder: its config is the model's; at learning rate 0 the final
    Hugging Face export equals the input bitwise."""
    from safetensors.numpy import load_file

    folder = _tiny_hf_folder(str(tmp_path / "hf_in"))
    args = ["--checkpoint-input-dir", folder, "--max-len", 12, "--dataset", "generated",
            "--batch-size", 2, "--device-iterations", 1, "--training-steps", 2,
            "--learning-rate", 0, "--xla", "false", "--checkpoint-output-dir", tmp_path / "out"]  # fmt: skip
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "initialised 28 tensors from" in out
    (run_dir,) = glob.glob(str(tmp_path / "out" / "gpt2_*"))
    before = load_file(os.path.join(folder, "model.safetensors"))
    after = load_file(os.path.join(run_dir, "hf", "model.safetensors"))
    assert set(after) <= set(before) and len(after) == 28
    for name in after:
        assert before[name].tobytes() == after[name].tobytes(), name


def test_megatron_fingerprint_names_another_vocab(capsys, tmp_path):
    """A corpus from one vocab/merges, trained with --vocab-file of another: one line naming both;
    with the corpus's own files it trains, and so does a corpus without a fingerprint."""
    from common import fingerprint
    from gpt2_data import preprocess_data
    from tests.test_gpt2_tokenizer import TINY_MERGES, tiny_vocab_files

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _, vocab, merges = tiny_vocab_files(tmp_path / "a", TINY_MERGES)
    _, other_vocab, _ = tiny_vocab_files(tmp_path / "b", TINY_MERGES[:-1])
    docs = tmp_path / "docs.txt"
    docs.write_text("the other there's aaaaaaa x\n\nthey're here and there\n\n" * 40)
    preprocess_data.main(["--input", str(docs), "--output-prefix", str(tmp_path / "c"),
                          "--vocab-file", vocab, "--merge-file", merges, "--append-eod"])  # fmt: skip
    capsys.readouterr()
    prefix = str(tmp_path / "c_text_document")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**TINY, "vocab_size": 300}))
    args = tiny_args(str(config), tmp_path / "out", "--training-steps", 2)
    args[args.index("generated")] = "mmap"
    args += ["--input-files", prefix]
    fails(capsys, [*args, "--vocab-file", other_vocab, "--merges-file", merges],
          f"{prefix} (fingerprint {prefix}.fingerprint.json) was made with vocab vocab.json")  # fmt: skip
    code, out, err = run(capsys, *args, "--vocab-file", vocab, "--merges-file", merges)
    assert code == 0 and "final: loss: " in out, err
    os.remove(fingerprint.path_of(prefix))
    args[args.index(tmp_path / "out")] = tmp_path / "out2"
    code, out, err = run(capsys, *args, "--vocab-file", other_vocab, "--merges-file", merges)
    assert code == 0 and "final: loss: " in out, err
