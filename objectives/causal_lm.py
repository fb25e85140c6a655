"""Causal language modelling (GPT-2): the shifted next-token loss and accuracy, one function shared
by training and evaluation."""


def causal_lm_loss(logits, input_ids, mask=None):
    """Mean next-token cross-entropy and accuracy over the real targets of a micro-batch.

    Position t predicts input_ids[:, t + 1]; a target counts when mask[:, t + 1] is 1, so padded
    tokens are never targets. This is Hugging Face's GPT2LMHeadModel loss with labels = input_ids
    and -100 at padding, and the reference's CrossEntropyLoss(ignore_index=-100) on its shifted
    labels. The accuracy is the reference's `calculate_acc`: argmax(logits) == target over the
    counted targets, divided by their number.

    Args:
      logits: float32 (or float64) [B,S,V] from modeling_gpt2.GPT2Model.
      input_ids: int32 [B,S], the model's input.
      mask: optional [B,S] (1 token, 0 padding, any numeric or bool dtype); None = all tokens.
    Returns:
      dict of scalars in the logits' dtype: "loss" (mean CE), "acc" (token accuracy), and
      "tokens" (number of counted targets). With no counted target, loss and acc are 0.
    """
    import tensorflow as tf

    targets = tf.cast(input_ids[:, 1:], tf.int32)  # [B,S-1]
    predictions = logits[:, :-1]  # [B,S-1,V]
    if mask is None:
        weights = tf.ones_like(targets, logits.dtype)
    else:
        weights = tf.cast(tf.cast(mask[:, 1:], tf.bool), logits.dtype)  # [B,S-1]
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=predictions)
    hits = tf.cast(
        tf.equal(tf.argmax(predictions, -1, output_type=tf.int32), targets), logits.dtype
    )
    count = tf.reduce_sum(weights)
    return {
        "loss": tf.math.divide_no_nan(tf.reduce_sum(ce * weights), count),
        "acc": tf.math.divide_no_nan(tf.reduce_sum(hits * weights), count),
        "tokens": count,
    }
