"""murmur3's 32-bit finalizer on TensorFlow uint32 tensors: the hash behind the stateless dropout
masks of the models and the dynamic masking of the MLM data pipeline."""

FMIX32_MULTIPLIERS = (0x85EBCA6B, 0xC2B2AE35)


def fmix32(h):
    """murmur3's fmix32 on a uint32 tensor: a bijection in which every input bit flips each output
    bit with probability about 1/2 (h ^= h >> 16; h *= m1; h ^= h >> 13; h *= m2; h ^= h >> 16)."""
    import tensorflow as tf

    for multiplier, shift in zip(FMIX32_MULTIPLIERS, (16, 13)):
        h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(shift, tf.uint32)))
        h = h * tf.constant(multiplier, tf.uint32)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, tf.constant(16, tf.uint32)))
