"""Causal language modelling (GPT-2): the next-token loss and its chunked form.

Every data source gives samples of `max_len + 1` token ids with a mask (1 token, 0 padding): the
model reads ids[:, :-1] and predicts ids[:, 1:], so it sees `max_len` positions and padded targets
never count. The loss is the mean cross-entropy over a micro-batch's counted targets (Hugging
Face's GPT2LMHeadModel loss, the reference's CrossEntropyLoss(ignore_index=-100)); accumulated
micro-batches average their means, as the reference did. The accuracy is the reference's: argmax
== target over the counted targets.
"""

import numpy as np


def token_sums(logits, targets, weights, axis=None):
    """(CE sum, hit sum, count) of logits [B,S,V] against targets [B,S] over the positions where
    weights [B,S] are non-zero, in the logits' dtype: scalars (axis None; evaluation accumulates
    them), or per sequence [B] with axis=1."""
    import tensorflow as tf

    targets = tf.cast(targets, tf.int32)
    weights = tf.cast(tf.cast(weights, tf.bool), logits.dtype)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    hits = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), logits.dtype)
    return (
        tf.reduce_sum(ce * weights, axis),
        tf.reduce_sum(hits * weights, axis),
        tf.reduce_sum(weights, axis),
    )


def next_token_loss(logits, targets, weights):
    """Mean CE and accuracy of logits [B,S,V] against targets [B,S] where weights [B,S] are 1.

    Returns dict of scalars in the logits' dtype: "loss", "acc", "tokens" (counted targets);
    loss and acc are 0 without a counted target.
    """
    import tensorflow as tf

    ce, hits, count = token_sums(logits, targets, weights)
    return {
        "loss": tf.math.divide_no_nan(ce, count),
        "acc": tf.math.divide_no_nan(hits, count),
        "tokens": count,
    }


def causal_lm_loss(logits, input_ids, mask=None):
    """`next_token_loss` of logits [B,S,V] computed on input_ids [B,S] itself: position t predicts
    input_ids[:, t + 1], counted where mask[:, t + 1] is 1 (None = every token)."""
    import tensorflow as tf

    targets = input_ids[:, 1:]
    weights = tf.ones_like(targets) if mask is None else mask[:, 1:]
    return next_token_loss(logits[:, :-1], targets, weights)


def serialized_lm_loss(hidden, table, targets, weights, seq_chunk, vocab_chunks=1):
    """`next_token_loss` from the final hidden states, the LM head applied chunk by chunk.

    Each chunk of `seq_chunk` positions computes its logits [B,seq_chunk,V] (the matmul split into
    `vocab_chunks` pieces along the vocabulary), its CE and hit sums, and is recomputed in the
    backward pass, so at most one chunk's logits are alive. The result equals the unchunked loss
    up to float rounding (the sums are token-weighted over the whole micro-batch: the reference's
    chunks covered only its first sequence).

    Args:
      hidden: [B,S,E] after ln_f, in the compute dtype.
      table: [V,E] token embedding (the tied head), in the compute dtype.
      targets, weights: [B,S] next-token ids and their 0/1 weights.
      seq_chunk: positions per chunk; vocab_chunks: pieces of the vocabulary matmul.
    """
    import tensorflow as tf

    acc_dtype = tf.float64 if hidden.dtype == tf.float64 else tf.float32
    seq = hidden.shape[1]
    pieces = np.array_split(np.arange(table.shape[0]), vocab_chunks)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in pieces if len(p)]

    def chunk_sums(x, tab, t, w):
        logits = tf.concat([tf.einsum("bse,ve->bsv", x, tab[lo:hi]) for lo, hi in bounds], -1)
        ce, hits, _ = token_sums(tf.cast(logits, acc_dtype), t, w)
        return tf.stack([ce, hits])

    sums = []
    for start in range(0, seq, seq_chunk):
        end = min(seq, start + seq_chunk)
        t, w = targets[:, start:end], weights[:, start:end]
        # Both differentiated tensors are explicit inputs: recompute_grad gives no gradient to
        # tensors a function merely closes over.
        fn = tf.recompute_grad(lambda x, tab, t=t, w=w: chunk_sums(x, tab, t, w))
        sums.append(fn(hidden[:, start:end], table))
    total = tf.add_n(sums)
    count = tf.reduce_sum(tf.cast(tf.cast(weights, tf.bool), acc_dtype))
    return {
        "loss": tf.math.divide_no_nan(total[0], count),
        "acc": tf.math.divide_no_nan(total[1], count),
        "tokens": count,
    }


def score_sequences(model, ids, mask, batch_size, compute_dtype=None):
    """Per-row next-token scores of a whole evaluation set, batch by batch (no dropout).

    The LM head runs only at the K scored positions of each row (K = the largest number of counted
    targets in a row, e.g. 1 for LAMBADA's last token), gathered from the final hidden states: the
    same logits as the full head at those positions, a fraction of the cost. One `tf.function`
    trace with static shapes [batch_size, S + 1] and [batch_size, K]: the last batch is padded with
    rows whose weights are 0, and their results are discarded. No attention mask: padding only
    ever follows the real tokens, which causal attention keeps from seeing it.

    Args:
      model: a `modeling_gpt2.GPT2Model`.
      ids: int [N, S+1] rows; the model reads ids[:, :-1] and predicts ids[:, 1:].
      mask: [N, S] 0/1 over the targets ids[:, 1:]: which targets count.
      batch_size: rows per call.
      compute_dtype: tf.float32 (None), tf.bfloat16 or tf.float16; logits and CE are float32.
    Yields:
      per batch in row order, {"ce": float64 [b] summed CE (nats) of each row's counted targets,
      "hits": int [b] counted targets that are the argmax, "count": int [b] counted targets} for
      the b <= batch_size real rows of the batch.
    """
    import tensorflow as tf

    import modeling_ops

    compute_dtype = compute_dtype or tf.float32
    n, width = ids.shape
    counted = np.asarray(mask) != 0
    k = max(1, int(counted.sum(1).max(initial=0)))
    # Positions of each row's counted targets first (stable order), then filler positions.
    order = np.argsort(~counted, axis=1, kind="stable")[:, :k].astype(np.int32)  # [N,K]
    weights = np.take_along_axis(counted, order, 1).astype(np.float32)  # [N,K]
    signature = [
        tf.TensorSpec([batch_size, width], tf.int32),
        tf.TensorSpec([batch_size, k], tf.int32),
        tf.TensorSpec([batch_size, k], tf.float32),
    ]

    @tf.function(input_signature=signature, autograph=False)
    def sums(x, where, w):
        hidden = model(x[:, :-1], compute_dtype=compute_dtype, with_logits=False)["hidden_states"]
        h = tf.gather(hidden, where, batch_dims=1)  # [B,K,E]
        table = modeling_ops.weight(model.params, "transformer/wte/weight", h.dtype)  # [V,E]
        logits = tf.cast(tf.einsum("bke,ve->bkv", h, table), tf.float32)  # [B,K,V]
        targets = tf.gather(x[:, 1:], where, batch_dims=1)  # [B,K]
        return token_sums(logits, targets, w, axis=1)

    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        rows = np.r_[start : start + b, np.full(batch_size - b, start)]  # padding: weight 0
        w = weights[rows]
        w[b:] = 0.0
        got = sums(tf.constant(ids[rows], tf.int32), tf.constant(order[rows]), tf.constant(w))
        ce, hits, count = (t.numpy()[:b] for t in got)
        yield {
            "ce": ce.astype(np.float64),
            "hits": np.rint(hits).astype(np.int64),
            "count": np.rint(count).astype(np.int64),
        }
