"""tasks/evaluate_wiki.py and tasks/evaluate_lambada.py against an independent implementation
written here: transformers' GPT2LMHeadModel (PyTorch) and GPT2TokenizerFast on a tiny random GPT-2
folder, with the windows and LAMBADA items built in plain Python from REFERENCE_GPT2.md §6.2/§6.3.
Also: the detokenizer rules written out, the window invariant, and bad input as one-line errors."""

import concurrent.futures
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gpt2_data import evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared data sit beside the repository (../shared/data); SHARED_DATA overrides that.
DATA = os.environ.get("SHARED_DATA", os.path.join(os.path.dirname(ROOT), "shared", "data"))
VOCAB = os.path.join(DATA, "vocab", "gpt2", "encoder.json")
MERGES = os.path.join(DATA, "vocab", "gpt2", "vocab.bpe")
WIKI_RAW = os.path.join(DATA, "wikitext-2", "wiki.test.raw")
WIKI_TOKENS = os.path.join(DATA, "wikitext-2", "test.txt")
LAMBADA = os.path.join(DATA, "lambada", "lambada_test.jsonl")
needs_data = pytest.mark.skipif(
    not all(map(os.path.isfile, [VOCAB, MERGES, WIKI_RAW, WIKI_TOKENS, LAMBADA])),
    reason=f"{DATA} (GPT-2 encoder.json/vocab.bpe, WikiText-2, LAMBADA) is not present "
    "(set SHARED_DATA)",
)
N_POSITIONS = 128


# ----------------------------------------------------------------------------- pure data logic

DETOKENIZER_CASES = [  # (rule, input, expected)
    ("s '", "the players ' union", "the players' union"),
    ("/' [0-9]/ is literal", "it ' 90s", "it ' 90s"),
    (" @-@ ", "state @-@ of @-@ the @-@ art", "state-of-the-art"),
    (" @,@ ", "1 @,@ 000", "1,000"),
    (" @.@ ", "3 @.@ 5", "3.5"),
    (" : ", "a : b", "a: b"),
    (" ; ", "a ; b", "a; b"),
    (" . ", "end . Next", "end. Next"),
    (" ! ", "wow ! yes", "wow! yes"),
    (" ? ", "why ? because", "why? because"),
    (" , ", "a , b", "a, b"),
    ("( x )", "a ( b c ) d", "a (b c) d"),
    ("[ x ]", "a [ b ] d", "a [b] d"),
    ("{ x }", "a { b } d", "a {b} d"),
    ('" x "', 'he said " hi there " ok', 'he said "hi there" ok'),
    ("' x '", "a ' b ' c", "a 'b' c"),
    ("= = = =", "= = = = H = = = =", "==== H ===="),
    ("= = =", "= = = H = = =", "=== H ==="),
    ("= =", "= = H = =", "== H =="),
    (" ° ", "20 ° C", "20°C"),
    (" \\n", "a \nb", "a\nb"),
    ("\\n ", "a\n b", "a\nb"),
    (" N ", "x N y", "x 1 y"),
    (" 's", "John 's car", "John's car"),
    # Order: " , " goes before the quote rule, and "s '" before the quote pair rule.
    # Order matters: "s '" first, then " , ", then the quote pair spans the possessive's quote.
    ("order", "the boys ' ball , ' he said '", "the boys'ball,' he said '"),
]


@pytest.mark.parametrize(
    "rule,text,expected", DETOKENIZER_CASES, ids=[c[0] for c in DETOKENIZER_CASES]
)
def test_wikitext_detokenizer_rules(rule, text, expected):
    assert evaluation.wikitext_detokenizer(text) == expected


def test_ptb_and_identity_detokenizers_and_the_choice_by_path():
    ptb = evaluation.ptb_detokenizer
    assert ptb("it 's") == "it's" and ptb("do n't") == "don't" and ptb("a \n b") == "a\nb"
    assert ptb("x N y") == "x1 y" and ptb("$ 1") == "$1" and ptb("# 1") == "#1"
    assert evaluation.DETOKENIZERS["lambada"]("a ( b ) ,") == "a ( b ) ,"
    by_path = evaluation.detokenizer_for_path
    assert by_path("/d/ptb/wiki.test.txt") == "ptb"  # the first of ptb, wiki, lambada
    assert by_path("/d/wikitext-103/wiki.test.tokens") == "wikitext"
    assert by_path("/d/lambada_test.jsonl") == "lambada"
    assert by_path("/d/test.txt") is None


def test_word_count_is_a_split_on_single_spaces():
    assert evaluation.num_original_tokens(" a  b\nc d \n") == 4  # "a", "", "b\nc", "d"


@pytest.mark.parametrize("n", [1, 2, 5, 64, 65, 100, 129, 1000])
@pytest.mark.parametrize("seq,o", [(64, 64), (64, 16), (64, 1), (7, 3), (8, 8)])
def test_windows_score_each_target_once_with_enough_context(n, seq, o):
    tokens = np.arange(n) + 1000
    ids, mask = evaluation.wiki_windows(tokens, seq, o, pad_id=7)
    assert ids.shape == (len(ids), seq + 1) and mask.shape == (len(ids), seq)
    assert mask.sum() == n - 1  # the invariant: one mask value per target
    scored = []  # global index of each scored target, and its context length
    for i in range(len(ids)):
        for t in np.flatnonzero(mask[i]):
            assert ids[i, t + 1] == tokens[i * o + t + 1]
            scored.append(i * o + t + 1)
            assert i == 0 or t + 1 >= seq - o + 1
    assert sorted(scored) == list(range(1, n))


# ----------------------------------------------------------------------------- the tiny model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, torch GPT2LMHeadModel, transformers tokenizer): a random 2-block GPT-2 saved as a
    Hugging Face folder with GPT-2's vocab.json/merges.txt."""
    if not os.path.isfile(VOCAB):
        pytest.skip(f"{DATA} is not present (set SHARED_DATA)")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=36, n_head=3, vocab_size=50257, n_positions=N_POSITIONS
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = str(tmp_path_factory.mktemp("model"))
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copy(VOCAB, os.path.join(folder, "vocab.json"))
    shutil.copy(MERGES, os.path.join(folder, "merges.txt"))
    with open(VOCAB, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(MERGES, encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
    tok = transformers.GPT2Tokenizer(vocab=vocab, merges=merges)
    assert tok.encode("Hello world") == [15496, 995]
    return folder, model, tok


def log_probs(model, ids):
    """float64 [len(ids), V] log-softmax of the torch model over one unpadded sequence."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1).numpy()


def run(main, argv, capsys):
    """(stdout lines, the final JSON) of an in-process run."""
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, json.loads(lines[-1])


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-5)


def reference_wiki(model, tok, text, seq, o):
    """§6.2 written out: every target scored once, from the window the reference assigns it to."""
    words = len(text.strip().split(" "))
    tokens = tok.encode(evaluation.wikitext_detokenizer(text))
    total, last = 0.0, len(tokens) - 1
    i = 0
    while True:
        first = 1 if i == 0 else seq - o + 1  # first scored position of window i
        if i > 0 and i * o + first > last:
            break
        window = tokens[i * o : i * o + seq + 1]
        lp = log_probs(model, window[:-1]) if len(window) > 1 else None
        for j in range(first, len(window)):  # position j holds target window[j]
            total -= lp[j - 1, window[j]]
        i += 1
    loss = total / (len(tokens) - 1)
    ratio = (len(tokens) - 1) / (words - 1)
    return {"avg_loss": loss, "ppl": math.exp(min(20, loss)),
            "adjusted_ppl": math.exp(min(20, loss * ratio)), "token_ratio": ratio,
            "num_original_tokens": words, "num_tokenized_tokens": len(tokens)}  # fmt: skip


@pytest.fixture(scope="module")
def wiki_sample(tmp_path_factory):
    """The first lines of wiki.test.raw (380 tokens), in a path naming no detokenizer."""
    with open(WIKI_RAW, encoding="utf-8") as f:
        text = "".join(f.readlines()[:8])
    path = str(tmp_path_factory.mktemp("data") / "sample.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path, text


@needs_data
@pytest.mark.parametrize("o,batches", [(64, (1,)), (16, (1, 3))])
def test_wiki_matches_the_independent_implementation(tiny, wiki_sample, capsys, o, batches):
    from tasks import evaluate_wiki

    folder, model, tok = tiny
    path, text = wiki_sample
    expected = reference_wiki(model, tok, text, 64, o)
    results = []
    for batch in batches:
        argv = ["--valid-data", path, "--checkpoint-input-dir", folder, "--seq-length", "64",
                "--overlapping-eval", str(o), "--batch-size", str(batch),
                "--detokenizer", "wikitext", "--log-interval", "5"]  # fmt: skip
        lines, got = run(evaluate_wiki.main, argv, capsys)
        assert got["task"] == "WIKITEXT103"
        for key in ("num_original_tokens", "num_tokenized_tokens"):
            assert got[key] == expected[key], key
        for key in ("avg_loss", "ppl", "adjusted_ppl", "token_ratio"):
            assert close(got[key], expected[key]), (key, got[key], expected[key])
        n, m = expected["num_original_tokens"], expected["num_tokenized_tokens"]
        assert f" > number of original tokens: {n}, number of detokenized tokens: {m}" in lines
        assert lines[-2] == (
            f"avg loss: {got['avg_loss']:.4E}, ppl: {got['ppl']:.4E}, "
            f"adjusted ppl: {got['adjusted_ppl']:.4E}, token ratio: {got['token_ratio']}"
        )
        assert any(line.startswith("> working on iteration: 5, loss: ") for line in lines)
        results.append(got)
    assert all(close(r["avg_loss"], results[0]["avg_loss"]) for r in results)


def reference_lambada(model, tok, passages, seq, strict):
    """§6.3 written out, each kept passage run unpadded; over-long passages are skipped."""
    correct = kept = targets = skipped = 0
    nll = 0.0
    for text in passages:
        if strict:
            word = text.split()[-1]
            context = tok.encode(text[: text.rfind(word)].strip())
            target = tok.encode(" " + word)
        else:
            ids = tok.encode(text)
            context, target = ids[:-1], ids[-1:]
        if not context or len(context) + len(target) > seq + 1:
            skipped += 1
            continue
        ids = context + target
        lp = log_probs(model, ids[:-1])
        rows = lp[len(context) - 1 :]  # the rows predicting the target tokens
        correct += all(int(r.argmax()) == t for r, t in zip(rows, target))
        nll -= sum(r[t] for r, t in zip(rows, target))
        kept, targets = kept + 1, targets + len(target)
    return {"correct": correct, "total": kept, "accuracy": correct / kept,
            "ppl": math.exp(nll / targets), "word_ppl": math.exp(nll / kept),
            "skipped": skipped}  # fmt: skip


@pytest.fixture(scope="module")
def lambada_sample(tiny, tmp_path_factory):
    """24 LAMBADA passages plus 6 whose ending is the tiny model's greedy continuation (so that some
    are correct), as JSON lines."""
    _, model, tok = tiny
    with open(LAMBADA, encoding="utf-8") as f:
        passages = [json.loads(line)["text"] for line in f.readlines()[:30]]
    made = []
    for text in passages[24:]:
        ids = tok.encode(" ".join(text.split()[:30]))
        for _ in range(3):
            ids.append(int(log_probs(model, ids)[-1].argmax()))
        made.append(tok.decode(ids))
    texts = passages[:24] + made
    path = str(tmp_path_factory.mktemp("data") / "passages.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    return path, texts


@needs_data
@pytest.mark.parametrize("strict,batches", [(False, (1,)), (True, (1, 3))])
def test_lambada_matches_the_independent_implementation(
    tiny, lambada_sample, capsys, strict, batches
):
    from tasks import evaluate_lambada

    folder, model, tok = tiny
    path, texts = lambada_sample
    expected = reference_lambada(model, tok, texts, 96, strict)
    assert expected["skipped"] > 0 and expected["total"] > 10
    if not strict:
        assert expected["correct"] > 0  # the greedy endings
    for batch in batches:
        argv = ["--valid-data", path, "--pretrained-checkpoint", folder,
                "--seq-length", "96", "--batch-size", str(batch),
                "--strict-lambada", str(strict).lower()]  # fmt: skip
        lines, got = run(evaluate_lambada.main, argv, capsys)
        assert got["task"] == "LAMBADA"
        for key in ("correct", "total", "skipped"):
            assert got[key] == expected[key], key
        for key in ("accuracy", "ppl", "word_ppl"):
            assert close(got[key], expected[key]), (key, got[key], expected[key])
        assert lines[-2] == (
            f"number correct: {got['correct']:.4E}, total examples: {got['total']:.4E}, "
            f"avg accuracy: {got['accuracy']:.4E}"
        )
        assert any(
            line.startswith(f"skipped {expected['skipped']} passage(s) longer") for line in lines
        )


# ----------------------------------------------------------------------------- bad input


# TensorFlow's C++ logging (absl: "I0000 ...", and its preamble) ignores TF_CPP_MIN_LOG_LEVEL for
# some start-up lines; they are not the script's.
TF_LOG = re.compile(
    r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following)"
)


def _run(command, **env_vars):
    """(return code, the stderr lines that are not TensorFlow's C++ logging)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="", **env_vars)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.strip().splitlines() if not TF_LOG.match(line)]
    return done.returncode, lines


@needs_data
def test_bad_input_is_one_line_and_nonzero_exit(tiny, tmp_path):
    folder = tiny[0]
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "notext.jsonl").write_text('{"txt": "a b c"}\n')
    shutil.copy(WIKI_TOKENS, tmp_path / "plain.txt")
    wiki = [sys.executable, "tasks/evaluate_wiki.py", "--checkpoint-input-dir", folder]
    lmbd = [sys.executable, "tasks/evaluate_lambada.py", "--checkpoint-input-dir", folder]
    cases = [  # (command, words the line must hold)
        (wiki + ["--valid-data", str(tmp_path / "missing.txt")], "no such file"),
        (wiki + ["--valid-data", LAMBADA], "JSON lines, not WikiText"),
        (wiki + ["--valid-data", str(tmp_path / "empty.txt")], "is empty"),
        (wiki + ["--valid-data", str(tmp_path / "plain.txt")], "--detokenizer"),
        (lmbd + ["--valid-data", WIKI_RAW], "is not JSON"),
        (lmbd + ["--valid-data", str(tmp_path / "notext.jsonl")], '"text"'),
        (lmbd + ["--valid-data", LAMBADA, "--seq-length", str(N_POSITIONS + 1)], "n_positions"),
        (
            [
                sys.executable,
                "tasks/evaluate_lambada.py",
                "--valid-data",
                LAMBADA,
                "--pretrained-checkpoint",
                str(bert),
            ],
            "not 'gpt2'",
        ),  # fmt: skip
        (lmbd + ["--valid-data", LAMBADA, "--fp16", "--bf16"], "one of --fp16 and --bf16"),
        (wiki + ["--valid-data", WIKI_RAW, "--overlapping-eval", "200"], "exceeds --seq-length"),
        (wiki + ["--valid-data", WIKI_RAW, "--task", "LAMBADA"], "evaluates WIKITEXT103"),
        (wiki + ["--valid-data", WIKI_RAW, WIKI_TOKENS], "exactly one --valid-data"),
        (wiki[:2] + ["--valid-data", WIKI_RAW], "--checkpoint-input-dir"),
        (["tasks/run_evaluate.sh", "wikitext"], "Dataset should be 'wiki' or 'lmbd'"),
        (["tasks/run_evaluate.sh"], "Dataset should be 'wiki' or 'lmbd'"),
        # The run script reads its paths from the environment and passes extra flags on.
        (["tasks/run_evaluate.sh", "lmbd", "--fp16", "--bf16"], "one of --fp16 and --bf16"),
        (["tasks/run_evaluate.sh", "wiki"], "JSON lines, not WikiText"),
    ]
    env = {"CHECKPOINT_PATH": folder, "WIKI_DATA": LAMBADA, "LAMBADA_DATA": LAMBADA}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: _run(c, **env), [c for c, _ in cases]))
    for (command, words), (code, lines) in zip(cases, results):
        assert code != 0, command
        assert len(lines) == 1 and words in lines[0], (command, lines)


def test_ipu_flags_give_one_warning_line(tmp_path):
    command = [sys.executable, "tasks/evaluate_wiki.py", "--valid-data", str(tmp_path / "x.txt"),
               "--pretrained-checkpoint", str(tmp_path), "--layers-per-ipu", "7", "8", "8", "1",
               "--matmul-proportion", "0.4", "0.4", "0.4", "0.2", "--device-iterations", "1",
               "--executable-cache-dir", "cache", "--eod-mask-loss", "--tokenizer-type", "1"]  # fmt: skip
    _, lines = _run(command)
    assert lines[0] == ("warning: IPU-only flags have no effect on CPU/GPU: layers_per_ipu, "
                        "device_iterations, matmul_proportion, executable_cache_dir")  # fmt: skip
    assert lines[1] == "warning: flags with no effect here: eod_mask_loss"
    assert lines[2].startswith("error: WikiText file") and len(lines) == 3
