"""GPT-2 generation: greedy tokens equal transformers' generate, sampling is seeded and stays in its
top-k/top-p set, stop tokens end rows, text_generate_gpt2.py's command line, and the GPT-2
SavedModel (prefill/decode/generate) in a fresh process without the project.

The model is a tiny random transformers GPT2LMHeadModel (odd sizes) saved as a Hugging Face folder.
"""

import json
import os
import re
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import export_savedmodel
import generation_gpt2 as G
import interop_gpt2
import text_generate_gpt2
from tests.conftest import ROOT

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHARED = os.environ.get("SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
GPT2_VOCAB = os.path.join(SHARED, "vocab", "gpt2")
PROMPTS = [[5, 17, 3, 98, 40], [7], [11, 12, 13, 14, 15, 16, 17, 18, 19], [60, 61, 60]]
INPUT_LEN, OUTPUT_LEN = 10, 12


def _hf_model(folder, vocab_size, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=3, n_embd=36, n_head=3, vocab_size=vocab_size, n_positions=40,
        activation_function="gelu_new", bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    model.generation_config.eos_token_id = None  # no stopping: exactly max_new_tokens
    model.generation_config.pad_token_id = 0
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tiny_gpt2"))
    hf = _hf_model(folder, vocab_size=99)
    model, _ = interop_gpt2.load_model(folder)
    return folder, hf, model


def _hf_greedy(hf, prompt, n, repetition_penalty=1.0):
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        repetition_penalty=repetition_penalty,
    )
    return out[0, len(prompt) :].tolist()


def _generator(model, batch, sampling, xla=False, stop_id=-1, output_len=OUTPUT_LEN):
    return G.Generator(
        model,
        batch=batch,
        input_len=INPUT_LEN,
        output_len=output_len,
        sampling=sampling,
        dtype=tf.float32,
        stop_id=stop_id,
        xla=xla,
    )


@pytest.mark.parametrize("xla, penalty", [(False, 1.0), (True, 1.7)])
def test_greedy_tokens_equal_transformers(tiny, xla, penalty):
    _, hf, model = tiny
    want = [_hf_greedy(hf, p, OUTPUT_LEN, penalty) for p in PROMPTS]
    sampling = G.Sampling(greedy=True, repetition_penalty=penalty)
    batched, steps = _generator(model, len(PROMPTS), sampling, xla)(PROMPTS)  # mixed lengths
    assert batched.tolist() == want
    assert steps == OUTPUT_LEN
    one = _generator(model, 1, sampling, xla)
    assert [one([p])[0][0].tolist() for p in PROMPTS[:2]] == want[:2]


def test_padding_rows_of_a_partial_batch_change_nothing(tiny):
    _, hf, model = tiny
    gen = _generator(model, 3, G.Sampling(greedy=True))
    tokens, _ = gen(PROMPTS[:2])  # the third row repeats the second
    assert tokens.tolist() == [_hf_greedy(hf, p, OUTPUT_LEN) for p in PROMPTS[:2]]


def test_sampling_is_seeded_and_the_same_with_and_without_xla(tiny):
    _, _, model = tiny
    sampling = G.Sampling(temperature=0.8, top_k=20, top_p=0.95, repetition_penalty=1.3)
    plain, xla = (_generator(model, 4, sampling, x) for x in (False, True))
    a, b = plain(PROMPTS, seed=7)[0], plain(PROMPTS, seed=7)[0]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, plain(PROMPTS, seed=8)[0])
    assert np.array_equal(a, xla(PROMPTS, seed=7)[0])
    rows = plain([PROMPTS[0]] * 4, seed=3)[0]  # one prompt, four independent draws
    assert len({tuple(r) for r in rows}) > 1


def _numpy_kept(logits, top_k=0, top_p=1.0):
    """Indices kept by top-k then top-p, from a sort (the reference definition)."""
    kept = []
    for row in logits.astype(np.float64):
        keep = np.ones(row.shape, bool)
        if top_k:
            keep &= row >= np.sort(row)[::-1][top_k - 1]
        if top_p < 1.0:
            x = np.where(keep, row, -np.inf)
            order = np.argsort(-x, kind="stable")
            p = np.exp(x[order] - x[order][0])
            p /= p.sum()
            before = np.concatenate([[0.0], np.cumsum(p)[:-1]])
            last = order[before < top_p][-1]
            keep &= x >= x[last]
        kept.append(set(np.flatnonzero(keep)))
    return kept


@pytest.mark.parametrize("top_k, top_p", [(1, 1.0), (3, 1.0), (7, 1.0), (20, 1.0), (0, 0.3),
                                          (0, 0.9), (5, 0.5), (25, 0.8)])  # fmt: skip
def test_top_k_top_p_keep_exactly_their_set(top_k, top_p):
    rng = np.random.default_rng(top_k * 10 + int(top_p * 10))
    logits = rng.normal(size=(5, 60)).astype(np.float32) * 2
    logits[0, 10:14] = logits[0].max()  # ties at the top
    logits[1, 20:40] = np.float32(0.25)  # ties at the threshold
    filtered = G.filter_logits(tf.constant(logits), G.Sampling(top_k=top_k, top_p=top_p)).numpy()
    got = [set(np.flatnonzero(np.isfinite(row))) for row in filtered]
    assert got == _numpy_kept(logits, top_k, top_p)
    kept = np.isfinite(filtered)
    assert np.array_equal(filtered[kept], logits[kept])  # kept logits unchanged
    sampling = G.Sampling(top_k=top_k, top_p=top_p)
    for seed in range(20):
        picks = G.choose(tf.constant(filtered), sampling, tf.constant([seed, 0], tf.int64))
        assert all(int(t) in s for t, s in zip(picks.numpy(), got))


def test_draws_follow_the_softmax():
    logits = np.array([2.0, 1.0, 0.0, -1.0, -np.inf], np.float32)
    n = 20000
    picks = G.choose(
        tf.constant(np.tile(logits, (n, 1))), G.Sampling(), tf.constant([5, 1], tf.int64)
    ).numpy()
    p = np.exp(logits - logits.max())
    p /= p.sum()
    freq = np.bincount(picks, minlength=5) / n
    assert freq[4] == 0
    assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-9), (freq, p)


def test_repetition_penalty_and_temperature_as_transformers():
    logits = np.random.default_rng(0).normal(size=(2, 30)).astype(np.float32)
    prompt = np.array([[3, 7, 7, 0], [29, 1, 0, 0]], np.int32)
    lengths = np.array([3, 2], np.int32)
    seen = G.seen_tokens(tf.constant(prompt), tf.constant(lengths), 30)
    sampling = G.Sampling(temperature=0.7, repetition_penalty=1.9)
    got = G.filter_logits(tf.constant(logits), sampling, seen).numpy()
    ids = torch.tensor(prompt)
    scores = torch.tensor(logits)
    want = []
    for row in range(2):
        processors = transformers.LogitsProcessorList(
            [
                transformers.RepetitionPenaltyLogitsProcessor(1.9),
                transformers.TemperatureLogitsWarper(0.7),
            ]
        )
        want.append(processors(ids[row : row + 1, : lengths[row]], scores[row : row + 1])[0])
    np.testing.assert_allclose(got, torch.stack(want).numpy(), rtol=1e-6)


def test_stop_token_ends_rows(tiny):
    _, _, model = tiny
    prompts = [PROMPTS[0]] * 2
    free, _ = _generator(model, 2, G.Sampling(greedy=True))(prompts)
    stop = int(free[0, 3])
    first = list(free[0]).index(stop)  # the first time the stop token appears
    tokens, steps = _generator(model, 2, G.Sampling(greedy=True), stop_id=stop)(prompts)
    assert tokens[0, : first + 1].tolist() == free[0, : first + 1].tolist()
    assert set(tokens[:, first + 1 :].ravel().tolist()) <= {stop}
    assert steps == first + 1  # every row finished: no further model calls


@pytest.mark.parametrize(
    "text, stop, want",
    [("abc<|endoftext|>def", "<|endoftext|>", "abc"), ("abcdef", "<|endoftext|>", "abcdef"),
     ("<|endoftext|>x", "<|endoftext|>", ""), ("abc", "", "abc")],
)  # fmt: skip
def test_cut_at_stop(text, stop, want):
    assert text_generate_gpt2.cut_at_stop(text, stop) == want


def test_sizes_are_checked(tiny):
    _, _, model = tiny
    with pytest.raises(ValueError, match="exceeds the model's 40 positions"):
        G.Generator(model, batch=1, input_len=30, output_len=11, sampling=G.Sampling(),
                    dtype=tf.float32, stop_id=-1, xla=False)  # fmt: skip
    gen = _generator(model, 2, G.Sampling(greedy=True))
    with pytest.raises(ValueError, match="prompt 0 has 11 tokens"):
        gen([list(range(11))])
    with pytest.raises(ValueError, match="expected 1..2 prompts"):
        gen([[1]] * 3)


# ----------------------------------------------------------------------------- the script


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    """A tiny GPT-2 with GPT-2's 50257-token vocabulary and its tokenizer files beside it."""
    if not os.path.isfile(os.path.join(GPT2_VOCAB, "encoder.json")):
        pytest.skip(f"GPT-2 vocabulary not found in {GPT2_VOCAB} (set SHARED_DATA)")
    folder = tmp_path_factory.mktemp("bpe_gpt2")
    hf = _hf_model(str(folder), vocab_size=50257, seed=1)
    for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        shutil.copyfile(os.path.join(GPT2_VOCAB, src), folder / dst)
    from gpt2_data import tokenizer

    return str(folder), hf, tokenizer.for_checkpoint(str(folder))


def _run(argv, capsys):
    code = text_generate_gpt2.main(argv)
    return code, capsys.readouterr()


def test_script_file_of_prompts_greedy(bpe_model, tmp_path, capsys):
    folder, hf, tok = bpe_model
    prompts = ["The quick brown fox", "Hello", "A longer prompt with several words in it"]
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    samples = tmp_path / "samples"
    argv = ["--model-name-or-path", folder, "--input-file", str(path), "--batch-size", "2",
            "--greedy", "--repetition-penalty", "1", "--input-len", "12", "--output-len", "6",
            "--save-samples-path", str(samples), "--xla", "false", "--layers-per-ipu", "1", "2"]  # fmt: skip
    code, out = _run(argv, capsys)
    assert code == 0
    assert out.err.count("IPU-only flags have no effect") == 1
    outputs = re.findall(r"^Output: (.*)$", out.out, re.M)
    want = [p + tok.decode(_hf_greedy(hf, tok.encode(p), 6)) for p in prompts]
    assert outputs == [text_generate_gpt2.cut_at_stop(w, "<|endoftext|>") for w in want]
    assert len(re.findall(r"latency avg per sentence: [\d.]+ ms/sentence_\(6\)", out.out)) == 2
    assert re.search(r"Batch size: 2; Input length \d+; Output length 6, throughput: [\d.]+ "
                     r"samples/sec, tokens/s: [\d.]+", out.out)  # fmt: skip
    saved = (samples / "samples.txt").read_text(encoding="utf-8")
    assert saved.count("Input: ") == 3 and saved.startswith("Text generator record")


def test_script_interactive(bpe_model, monkeypatch, capsys):
    folder, _, _ = bpe_model
    lines = iter(["Once upon a time", "", "and then"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    argv = ["--model-name-or-path", folder, "--input-len", "8", "--output-len", "4",
            "--seed", "1", "--xla", "false"]  # fmt: skip
    code, out = _run(argv, capsys)
    assert code == 0
    assert len(re.findall(r"^Output: Once upon a time", out.out, re.M)) == 1
    assert len(re.findall(r"^Output: and then", out.out, re.M)) == 1
    assert "empty prompt" in out.err  # said, and the loop went on


@pytest.mark.parametrize(
    "extra, pattern",
    [(["--prompt", ""], r"empty prompt"),
     (["--prompt", "one two three four five six seven", "--input-len", "3"],
      r"Input text length 7 larger than limit 3"),
     (["--prompt", "x", "--input-len", "30", "--output-len", "11"], r"exceeds the model's 40"),
     (["--prompt", "x", "--fp16", "--bf16"], r"at most one of --fp16 and --bf16"),
     (["--prompt", "x", "--topp", "0"], r"top_p must be in \(0, 1\]")],
)  # fmt: skip
def test_script_bad_input_is_one_line(bpe_model, capsys, extra, pattern):
    folder, _, _ = bpe_model
    with pytest.raises(SystemExit) as exc:
        text_generate_gpt2.main(["--model-name-or-path", folder, "--xla", "false", "--input-len",
                                 "8", "--output-len", "4", *extra])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and re.search(pattern, err[0]), err


def test_script_refuses_a_model_that_is_not_gpt2(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SystemExit) as exc:
        text_generate_gpt2.main(["--model-name-or-path", str(tmp_path), "--prompt", "x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and "not a GPT-2 checkpoint" in err[0], err


# ----------------------------------------------------------------------------- SavedModel

_LOADER = """
import json, sys
import numpy as np
import tensorflow as tf
export, inputs_file, out = sys.argv[1:]
loaded = tf.saved_model.load(export)
x = np.load(inputs_file)
ids, lengths = tf.constant(x["ids"]), tf.constant(x["lengths"])
sig = loaded.signatures
pre = sig["prefill"](input_ids=ids, lengths=lengths)
token = tf.argmax(pre["logits"], axis=-1, output_type=tf.int32)
dec = sig["decode"](token=token, lengths=lengths, step=tf.constant(0), cache=pre["cache"])
gen = sig["generate"](input_ids=ids, lengths=lengths)
default = sig["serving_default"](input_ids=ids, lengths=lengths)
np.savez(out, prefill=pre["logits"].numpy(), cache=pre["cache"].numpy(),
         decode=dec["logits"].numpy(), generate=gen["tokens"].numpy(),
         default=default["tokens"].numpy())
print(json.dumps({"signatures": sorted(sig.keys()),
                  "project": [m for m in ("modeling_gpt2", "generation_gpt2") if m in sys.modules]}))
"""


def test_gpt2_savedmodel_in_a_fresh_process(tiny, tmp_path):
    folder, hf, model = tiny
    export = str(tmp_path / "export")
    argv = [folder, "--output_dir", export, "--input-len", str(INPUT_LEN), "--output-len",
            str(OUTPUT_LEN)]  # fmt: skip
    assert export_savedmodel.main(argv) == 0
    ids = np.zeros([len(PROMPTS), INPUT_LEN], np.int32)
    for i, p in enumerate(PROMPTS):
        ids[i, : len(p)] = p
    lengths = np.array([len(p) for p in PROMPTS], np.int32)
    np.savez(tmp_path / "inputs.npz", ids=ids, lengths=lengths)
    (tmp_path / "loader.py").write_text(_LOADER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "loader.py", export, "inputs.npz", "out.npz"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {
        "signatures": ["decode", "generate", "prefill", "serving_default"],
        "project": [],
    }
    got = np.load(tmp_path / "out.npz")
    # In memory: the same functions, XLA kernels and all.
    weights = G.inference_weights(model.params, tf.float32)
    slots = INPUT_LEN + OUTPUT_LEN
    logits, cache, mask = G.prefill(
        model.params, weights, model.config, ids, lengths, slots, tf.float32
    )
    np.testing.assert_allclose(got["prefill"], logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["cache"], G.stack_cache(cache).numpy(), atol=1e-5)
    token = tf.argmax(logits, axis=-1, output_type=tf.int32)
    step, _, _ = G.decode_step(
        model.params, weights, model.config, token, lengths, INPUT_LEN, cache, mask, tf.float32
    )
    np.testing.assert_allclose(got["decode"], step.numpy(), atol=1e-5)
    want = [_hf_greedy(hf, p, OUTPUT_LEN) for p in PROMPTS]
    assert got["generate"].tolist() == want and got["default"].tolist() == want
    info = json.loads((tmp_path / "export" / "assets" / "export_info.json").read_text())
    assert info["family"] == "gpt2" and info["cache_slots"] == slots
