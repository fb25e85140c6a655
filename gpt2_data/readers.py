"""GPT-2 training samples from the pickle, TFRecord and plain-text routes (REFERENCE_GPT2.md §5.3-5.5).

Every route gives samples of at most `max_len + 1` token ids: the model reads x[:-1] and predicts
x[1:], so it sees `max_len` positions (the reference's pickle samples had `max_len` ids and gave
`max_len - 1` positions, bug 5). The Megatron route is `gpt2_data.megatron.GPTSamples`. Readers are
deterministic; the caller shuffles, repeats and batches. TensorFlow is imported only by
`tfrecord_dataset`.
"""

import pickle

import numpy as np

from common import tfrecords
from common.errors import UserError
from gpt2_data import corpus


def article_windows(tokens, length, stride, tail, min_length):
    """Windows of one article.

    Windows of `length` ids start at 0, stride, 2*stride, ... while they fit. If the last of them
    ends before the article does, one more window covers the end:
      tail="full": the last `length` ids (it overlaps the previous window), or
      tail="rest": the ids from the next start on (shorter than `length`), when at least
        `min_length` of them.
    An article shorter than `length` gives itself as one window when it has at least
    max(min_length, 2) ids (a sample needs one target), else nothing.

    Args:
      tokens: 1-D int array, one article. length, stride, min_length: ints >= 1.
    Returns:
      list of 1-D arrays (views into `tokens`).
    """
    n = len(tokens)
    if n < length:
        return [tokens] if n >= max(min_length, 2) else []
    starts = range(0, n - length + 1, stride)
    out = [tokens[s : s + length] for s in starts]
    if starts[-1] + length < n:
        if tail == "full":
            out.append(tokens[n - length :])
        elif n - (starts[-1] + stride) >= max(min_length, 2):
            out.append(tokens[starts[-1] + stride :])
    return out


def _check_window(max_len, stride):
    if max_len < 1 or stride < 1:
        raise UserError(f"need max_len >= 1 and stride >= 1, got {max_len} and {stride}")


def pickle_samples(path, max_len, stride):
    """Samples from a `.pkl` of articles (`wikipedia_preprocess.py`'s output).

    Per article (in file order): windows of max_len + 1 ids every `stride`; then the last
    max_len + 1 ids if the windows stop before the article's end; an article of fewer than
    max_len + 1 ids (but at least max_len // 2, and 2) is one shorter sample, whole (the reference
    kept only its last max_len - n ids, bug 5).

    Args:
      path: str, a pickled list of lists of int token ids.
      max_len: int, model positions per sample. stride: int, ids between window starts.
    Returns:
      list of int32 arrays, each of max_len + 1 ids or (short articles) fewer.
    Raises:
      UserError: an unreadable file or one that is not a pickled list of id lists (one line).
    """
    _check_window(max_len, stride)
    try:
        with open(path, "rb") as f:
            articles = pickle.load(f)
    except OSError as err:
        raise UserError(f"cannot read pickle dataset {path}: {err.strerror}") from None
    except Exception as err:  # unpickling raises many kinds of errors on a corrupt file
        raise UserError(f"{path} is not a readable pickle ({type(err).__name__}: {err})") from None
    if not isinstance(articles, list):
        raise UserError(f"{path} holds a {type(articles).__name__}, not a list of token-id lists")
    samples = []
    for i, article in enumerate(articles):
        try:
            ids = np.asarray(article, np.int64)
        except (TypeError, ValueError, OverflowError):
            ids = np.zeros((0, 0))
        if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= 2**31)):
            raise UserError(f"{path}: article {i} is not a list of non-negative int token ids")
        windows = article_windows(ids.astype(np.int32), max_len + 1, stride, "full", max_len // 2)
        samples.extend(w.copy() for w in windows)
    return samples


def tfrecord_files(input_files):
    """The TFRecord files of `input_files`: a str of comma-separated globs, or a list of globs or
    paths. Returns the sorted expansion of each pattern, in pattern order, without repeats.

    Raises:
      UserError: a pattern that matches no file, named.
    """
    return corpus.expand_inputs(input_files, flag="--input-files")


def tfrecord_dataset(files, max_len, damage=None):
    """tf.data of the TFRecords' samples, in file order then record order (deterministic).

    Each record holds one variable-length Int64List `input_ids` (§5.5). It is cut to max_len + 1
    ids if longer (write TFRecords with --seq-length max_len + 1 to keep every id), and
    right-padded with 0 to max_len + 1.

    Args:
      files: list of TFRecord paths (see `tfrecord_files`). max_len: int, model positions.
      damage: common.tfrecords.DamageLog: a damaged file stops the dataset there (default) or
        loses the rest of that file, noted in the log.
    Returns:
      tf.data.Dataset of {"input_ids": int32 [max_len + 1], "mask": int32 [max_len + 1]}, mask 1
      on real ids and 0 on padding.
    """
    import tensorflow as tf

    _check_window(max_len, 1)
    width = max_len + 1
    spec = {"input_ids": tf.io.VarLenFeature(tf.int64)}

    def parse(record):
        ids = tf.sparse.to_dense(tf.io.parse_single_example(record, spec)["input_ids"])
        ids = tf.cast(ids[:width], tf.int32)
        pad = [[0, width - tf.shape(ids)[0]]]
        mask = tf.pad(tf.ones_like(ids), pad)
        return {
            "input_ids": tf.ensure_shape(tf.pad(ids, pad), [width]),
            "mask": tf.ensure_shape(mask, [width]),
        }

    log = damage if damage is not None else tfrecords.DamageLog()
    return tfrecords.records(files, log).map(parse)


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as err:
        raise UserError(f"cannot read text file {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"text file {path} is not UTF-8 (byte {err.start})") from None


def text_blocks(paths, tokenizer, block_size):
    """Blocks of block_size + 1 ids cut from plain-text files, for training or perplexity.

    Each file is encoded whole (no ids are added: no BOS, no EOD) and the files' ids are
    concatenated in order, as Hugging Face's run_clm concatenates its texts. Block i is ids
    [i * block_size, i * block_size + block_size]: consecutive blocks share one id, like
    Megatron's samples, so the model sees block_size positions per block and every id but the
    first is a target exactly once (run_clm's blocks of block_size ids give block_size - 1
    targets each and never predict a block's first id). The last ids that do not fill a block
    are dropped.

    Args:
      paths: str of comma-separated globs, or a list of globs/paths (sorted expansion).
      tokenizer: a `gpt2_data.tokenizer.GPT2Tokenizer` (anything with `encode(text)`).
      block_size: int >= 1, model positions per block.
    Returns:
      int32 [N, block_size + 1], N = (ids - 1) // block_size.
    Raises:
      UserError: no file matched, an unreadable file, or fewer than block_size + 1 ids.
    """
    _check_window(block_size, 1)
    files = corpus.expand_inputs(paths, flag="text files")
    ids = np.concatenate(
        [np.asarray(tokenizer.encode(_read_text(p)), np.int32) for p in files]
        + [np.zeros(0, np.int32)]
    )
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise UserError(
            f"{', '.join(files)}: {len(ids)} tokens, fewer than one block of {block_size + 1}"
        )
    rows = np.arange(n)[:, None] * block_size + np.arange(block_size + 1)
    return ids[rows]
