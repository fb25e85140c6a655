"""Data code: text -> examples, TFRecord read/write with Google's feature names. No model code."""
