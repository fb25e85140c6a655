"""GPT-2 data code: byte-level BPE, Megatron corpora, Wikipedia preprocessing, training readers. No model code."""
