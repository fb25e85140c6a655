"""An independent plain-Python implementation of Google BERT's data algorithms, used as the reference.

Written for this project from the published description of google-research/bert's `tokenization.py`
(BasicTokenizer + WordPiece) and `create_pretraining_data.py` (documents, A/B segments, truncation,
80/10/10 masking), with the reference app's `num_to_predict` change. It is deliberately slow and simple:
tests compare our fast implementation against it, and `benchmarks/datagen.py` times it.
"""

import collections
import random
import unicodedata

# ---------------------------------------------------------------------------------------------
# Tokenization


def _is_whitespace(ch):
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class ReferenceTokenizer:
    """Google's BasicTokenizer followed by greedy longest-match-first WordPiece."""

    def __init__(self, vocab_file, do_lower_case):
        self.vocab = {}
        with open(vocab_file, encoding="utf-8") as f:
            for index, line in enumerate(f):
                self.vocab[line.strip()] = index
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.do_lower_case = do_lower_case

    def basic_tokenize(self, text):
        cleaned = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            cleaned.append(" " if _is_whitespace(ch) else ch)
        spaced = []
        for ch in cleaned:
            if _is_cjk(ord(ch)):
                spaced.extend((" ", ch, " "))
            else:
                spaced.append(ch)
        words = "".join(spaced).strip().split()
        out = []
        for word in words:
            if self.do_lower_case:
                word = word.lower()
                word = "".join(
                    c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
                )
            current = []
            for ch in word:
                if _is_punctuation(ch):
                    if current:
                        out.append("".join(current))
                        current = []
                    out.append(ch)
                else:
                    current.append(ch)
            if current:
                out.append("".join(current))
        return [w for w in " ".join(out).strip().split()]

    def wordpiece(self, word, max_chars=200):
        if len(word) > max_chars:
            return ["[UNK]"]
        pieces = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end]
                if start > 0:
                    piece = "##" + piece
                if piece in self.vocab:
                    found = piece
                    break
                end -= 1
            if found is None:
                return ["[UNK]"]
            pieces.append(found)
            start = end
        return pieces

    def tokenize(self, text):
        return [p for w in self.basic_tokenize(text) for p in self.wordpiece(w)]


# ---------------------------------------------------------------------------------------------
# Instance creation (Google's algorithm, reference app's num_to_predict rule)

Instance = collections.namedtuple(
    "Instance", "tokens segment_ids is_random_next masked_lm_positions masked_lm_labels"
)


def read_documents(paths, tokenizer):
    """One sentence per line, blank lines separate documents; empty documents dropped."""
    documents = [[]]
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    documents.append([])
                    continue
                tokens = tokenizer.tokenize(line)
                if tokens:
                    documents[-1].append(tokens)
    return [d for d in documents if d]


def _truncate_pair(tokens_a, tokens_b, max_num_tokens, rng):
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()


def _mask(tokens, seq_length, mask_tokens, mlm_prob, vocab_words, rng):
    candidates = [i for i, t in enumerate(tokens) if t not in ("[CLS]", "[SEP]")]
    rng.shuffle(candidates)
    output = list(tokens)
    num_to_predict = min(mask_tokens, max(1, int(round(len(tokens) * mlm_prob))))
    num_to_predict = max(num_to_predict, len(tokens) - seq_length + mask_tokens)
    masked = []
    for index in candidates[:num_to_predict]:
        if rng.random() < 0.8:
            replacement = "[MASK]"
        elif rng.random() < 0.5:
            replacement = tokens[index]
        else:
            replacement = vocab_words[rng.randint(0, len(vocab_words) - 1)]
        output[index] = replacement
        masked.append((index, tokens[index]))
    masked.sort()
    return output, [p for p, _ in masked], [t for _, t in masked]


def instances_from_document(documents, index, seq_length, short_seq_prob, rng):
    """Google's A/B segment procedure for one document (no masking yet)."""
    document = documents[index]
    max_num_tokens = seq_length - 3
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    out = []
    chunk, length, i = [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            if chunk:
                a_end = 1
                if len(chunk) >= 2:
                    a_end = rng.randint(1, len(chunk) - 1)
                tokens_a = [t for seg in chunk[:a_end] for t in seg]
                tokens_b = []
                is_random_next = False
                if len(chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b = target - len(tokens_a)
                    other = index
                    for _ in range(10):
                        other = rng.randint(0, len(documents) - 1)
                        if other != index:
                            break
                    random_doc = documents[other]
                    start = rng.randint(0, len(random_doc) - 1)
                    for j in range(start, len(random_doc)):
                        tokens_b.extend(random_doc[j])
                        if len(tokens_b) >= target_b:
                            break
                    i -= len(chunk) - a_end
                else:
                    for seg in chunk[a_end:]:
                        tokens_b.extend(seg)
                _truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
                if tokens_a and tokens_b:
                    out.append((tokens_a, tokens_b, is_random_next))
            chunk, length = [], 0
        i += 1
    return out


def create_instances(
    documents,
    vocab_words,
    seq_length=128,
    mask_tokens=20,
    duplication_factor=5,
    mlm_prob=0.15,
    short_seq_prob=0.1,
    seed=12345,
):
    """All instances for the corpus, shuffled, as `Instance` tuples."""
    rng = random.Random(seed)
    documents = list(documents)
    rng.shuffle(documents)
    instances = []
    for _ in range(duplication_factor):
        for index in range(len(documents)):
            for tokens_a, tokens_b, is_random_next in instances_from_document(
                documents, index, seq_length, short_seq_prob, rng
            ):
                tokens = ["[CLS]", *tokens_a, "[SEP]", *tokens_b, "[SEP]"]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                masked, positions, labels = _mask(
                    tokens, seq_length, mask_tokens, mlm_prob, vocab_words, rng
                )
                instances.append(Instance(masked, segment_ids, is_random_next, positions, labels))
    rng.shuffle(instances)
    return instances
