#!/usr/bin/env python3
"""Generate text with a GPT-2 model: one prompt, a file of prompts, or interactively.

    python3 text_generate_gpt2.py --model-name-or-path RUN/hf --prompt "My name is" --greedy
    python3 text_generate_gpt2.py --model-name-or-path RUN --input-file prompts.txt --batch-size 8
    python3 text_generate_gpt2.py --model-name-or-path RUN/hf          # Input: prompts from stdin

The model is a Hugging Face GPT-2 folder, one of our train_gpt2.py runs or a checkpoint prefix;
the tokenizer is the folder's vocab.json + merges.txt (train_gpt2.py copies them into RUN/hf) or
--vocab-file/--merges-file. Nothing is downloaded: `gpt2` must be a local folder.

Flags are the reference's (text_generate_gpt2.py of Graphcore's GPT-2 application) with what it
declared but never used now working: --temperature and --repetition-penalty apply, --topk keeps
the k most likely tokens and one token per row is drawn from their softmax (the reference picked
one of the k uniformly, the same for every row); ours add --topp, --greedy, --seed, --bf16 and
--input-file (one prompt per line, several different prompts per batch). Generation stops per row
at --stop-token (when it is one token) or after --output-len tokens; the printed text is cut just
before the stop token. Shapes are static: prompts are padded to --input-len and the whole
generation (prefill and decode loop over a key/value cache of input-len + output-len slots) is
one compiled graph per run, traced once. IPU-only flags are accepted with a warning.

Output per batch: the reference's latency lines (`latency avg per sentence`, `Per-token latency
avg`, `Batch size: ...; Input length ...; Output length ..., throughput: ... samples/sec`) with
tokens/s, then each row's prompt and continuation.
"""

import datetime
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from common.cli import Option, parse_tool_args, warn_ipu_only
from common.errors import UserError, cli_main

PROG = "text_generate_gpt2.py"
O = Option  # noqa: E741
OPTIONS = [
    O("model_name_or_path", "str", "gpt2", "Hugging Face GPT-2 folder, train_gpt2.py run "
      "directory or checkpoint prefix (local: nothing is downloaded)"),
    O("tokenizer_type", "int", 0, "0 or 1: both are GPT-2's BPE from the model folder or "
      "--vocab-file/--merges-file", choices=(0, 1), metavar="{0,1}"),
    O("vocab_file", "str", None, "GPT-2 vocab.json / encoder.json (default: the model folder's)"),
    O("merges_file", "str", None, "GPT-2 merges.txt / vocab.bpe (default: the model folder's)"),
    O("temperature", "float", 1.2, "divide the logits by this before sampling"),
    O("repetition_penalty", "float", 2.0, "CTRL penalty on tokens already in the prompt or "
      "output (1.0: off)"),
    O("topk", "int", 4, "sample among the k most likely tokens (0: all)"),
    O("topp", "float", 1.0, "then keep the smallest set of top tokens whose probability "
      "reaches p (1.0: off)"),
    O("greedy", "bool", False, "take the most likely token (after the repetition penalty)"),
    O("seed", "int", None, "sampling seed (default: random, printed)"),
    O("save_samples_path", "str", None, "directory; appends each input and output to "
      "samples.txt there"),
    O("prompt", "str", None, "one prompt, generated for once (repeated --batch-size times)"),
    O("input_file", "str", None, "a text file with one prompt per line, batched"),
    O("input_len", "int", 64, "longest prompt in tokens (static shape)"),
    O("output_len", "int", 128, "tokens to generate per row (static shape)"),
    O("batch_size", "int", 1, "rows per generation call"),
    O("fp16", "bool", False, "float16 compute (float32 LayerNorm, softmax and logits)"),
    O("bf16", "bool", False, "bfloat16 compute (float32 LayerNorm, softmax and logits)"),
    O("stop_token", "str", "<|endoftext|>", "stop a row at this token; the text is cut before "
      "it"),
    O("xla", "bool", None, "compile the generation loop with XLA (auto: on for float32, off "
      "for 16-bit, which measured faster here without it)"),
    O("device_iterations", "int", 1, "IPU only", ipu_only=True),
    O("single_ipu", "bool", False, "IPU only", ipu_only=True),
    O("layers_per_ipu", "int", 3, "IPU only", ipu_only=True, nargs="+"),
    O("matmul_proportion", "float", None, "IPU only", ipu_only=True, nargs="+"),
    O("poptorch_loop", "bool", False, "IPU only (the whole generation is one graph here)",
      ipu_only=True),
]  # fmt: skip


class Session:
    """A loaded model and tokenizer with one compiled generator."""

    def __init__(self, args):
        import tensorflow as tf

        import generation_gpt2
        import interop_gpt2
        from gpt2_data import tokenizer

        if args.fp16 and args.bf16:
            raise UserError("give at most one of --fp16 and --bf16")
        dtype = tf.float16 if args.fp16 else tf.bfloat16 if args.bf16 else tf.float32
        self.args = args
        self.model, notes = interop_gpt2.load_model(args.model_name_or_path)
        for note in notes:
            print(note)
        self.tok = tokenizer.for_checkpoint(
            args.model_name_or_path, args.vocab_file, args.merges_file
        )
        if self.tok.vocab_size > self.model.config.vocab_size:
            raise UserError(
                f"the tokenizer has {self.tok.vocab_size} tokens, more than the model's "
                f"vocab_size {self.model.config.vocab_size}"
            )
        stop = self.tok.encode(args.stop_token, special_tokens=True) if args.stop_token else []
        self.stop_id = stop[0] if len(stop) == 1 else -1
        try:
            sampling = generation_gpt2.Sampling(
                greedy=args.greedy,
                temperature=args.temperature,
                top_k=args.topk,
                top_p=args.topp,
                repetition_penalty=args.repetition_penalty,
            )
        except ValueError as err:
            raise UserError(
                f"{err} (--temperature, --topk, --topp, --repetition-penalty)"
            ) from None
        try:
            self.generator = generation_gpt2.Generator(
                self.model,
                batch=args.batch_size,
                input_len=args.input_len,
                output_len=args.output_len,
                sampling=sampling,
                dtype=dtype,
                stop_id=self.stop_id,
                xla=args.xla if args.xla is not None else dtype == tf.float32,
            )
        except ValueError as err:
            raise UserError(f"{err} (--input-len, --output-len, --batch-size)") from None

    def compile(self):
        start = time.perf_counter()
        self.generator([[self.tok.eod]], seed=0)  # trace and compile once
        print(f"compiled in {time.perf_counter() - start:.1f} s")

    def encode(self, prompt):
        """Ids of a prompt; UserError when it is empty or longer than --input-len."""
        ids = self.tok.encode(prompt)
        if not ids:
            raise UserError("empty prompt: give at least one character of text")
        if len(ids) > self.args.input_len:
            raise UserError(
                f"Input text length {len(ids)} larger than limit {self.args.input_len} "
                "(--input-len)"
            )
        return ids

    def cut(self, tokens):
        return cut_at_stop(self.tok.decode(tokens), self.args.stop_token)

    def run(self, prompts, seed):
        """Generate for a list of up to --batch-size prompt strings; print and return outputs."""
        ids = [self.encode(p) for p in prompts]
        start = time.perf_counter()
        tokens, steps = self.generator(ids, seed=seed)
        latency = time.perf_counter() - start
        b, made = self.args.batch_size, steps
        print(f"latency avg per sentence: {latency * 1000:.2f} ms/sentence_({made})")
        print(f"Per-token latency avg: {latency * 1000 / made:.2f} ms/token")
        print(
            f"Batch size: {b}; Input length {max(map(len, ids))}; Output length {made}, "
            f"throughput: {b / latency:.2f} samples/sec, tokens/s: {b * made / latency:.1f}"
        )
        outputs = [self.cut(row) for row in tokens]
        for prompt, output in zip(prompts, outputs):
            print(f"Input: {prompt}\nOutput: {prompt}{output}")
        return outputs


def cut_at_stop(text, stop):
    """text up to (not including) the first `stop`; all of it when `stop` is absent or empty
    (the reference's cut dropped the last character then)."""
    end = text.find(stop) if stop else -1
    return text if end < 0 else text[:end]


def _save(path, prompts, outputs):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "samples.txt"), "a", encoding="utf-8") as f:
        f.write(f"Text generator record{datetime.datetime.now()}:\n")
        for prompt, output in zip(prompts, outputs):
            f.write(f"Input: {prompt}\nOutput: {prompt}{output}\n")


def _prompt_batches(args):
    """Lists of prompt strings, or None for interactive input."""
    if args.prompt is not None and args.input_file:
        raise UserError("give --prompt or --input-file, not both")
    if args.prompt is not None:
        return [[args.prompt] * args.batch_size]
    if not args.input_file:
        return None
    try:
        with open(args.input_file, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except OSError as err:
        raise UserError(f"cannot read --input-file {args.input_file}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"--input-file {args.input_file} is not UTF-8: {err}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise UserError(f"{args.input_file}:{number}: empty prompt line")
    if not lines:
        raise UserError(f"--input-file {args.input_file} has no prompts")
    b = args.batch_size
    return [lines[i : i + b] for i in range(0, len(lines), b)]


@cli_main
def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_tool_args(OPTIONS, argv, PROG, __doc__.split("\n\n")[0])
    if args.prompt is None and any(a == "--prompt" or a.startswith("--prompt=") for a in argv):
        raise UserError("empty prompt: give at least one character of text")  # parsed as None
    warn_ipu_only(OPTIONS, args, PROG)
    batches = _prompt_batches(args)
    session = Session(args)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    if args.seed is None and not args.greedy:
        print(f"seed: {seed}")
    for prompt in (p for prompts in batches or [] for p in prompts):
        session.encode(prompt)  # every prompt is checked before anything is compiled
    session.compile()
    if batches is not None:
        for i, prompts in enumerate(batches):
            outputs = session.run(prompts, seed + i)
            if args.save_samples_path:
                _save(args.save_samples_path, prompts, outputs)
        return 0
    i = 0
    try:
        while True:
            try:
                prompt = input("Input: ")
            except EOFError:
                return 0
            try:
                outputs = session.run([prompt] * args.batch_size, seed + i)
            except UserError as err:
                print(err, file=sys.stderr)  # interactive: say it and ask again
                continue
            i += 1
            if args.save_samples_path:
                _save(args.save_samples_path, [prompt], outputs[:1])
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
