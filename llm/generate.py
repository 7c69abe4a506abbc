"""Generate text from a checkpoint, streamed to stdout.

    python -m llm.generate --checkpoint out/run --prompt "ROMEO:" --max-new-tokens 200 --temperature 0.8
    python -m llm.generate --checkpoint out/run --interactive
    python -m llm.generate --prompt "ROMEO:"          # the model app.py would open

Bad input (a missing checkpoint, a setting out of range) prints one line on stderr and exits non-zero.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from llm import load_checkpoint
from llm.hub import find_checkpoint
from llm.cli import ArgumentParser, as_flags, flag
from llm.runtime import pick_device
from llm.sample import KNOBS, SampleConfig, generate, parse_stop


def build_parser() -> ArgumentParser:
    d = SampleConfig()
    p = ArgumentParser(prog="python -m llm.generate", description="Sample text from a trained checkpoint.")
    p.add_argument("--checkpoint", help="OUT/best, OUT/last, OUT (= OUT/best), or a Hub repo id; default: what "
                   "app.py opens ($SCRATCHGPT_CHECKPOINT, else the newest checkpoints/*/best here, else the bundled "
                   "model)")
    p.add_argument("--prompt", default=None, help="text to continue (required unless --interactive)")
    p.add_argument("--interactive", action="store_true",
                   help="read prompts in a loop; Ctrl-C stops an answer, an empty line or Ctrl-D quits")
    for knob in KNOBS:
        note = f" ({knob.note})" if knob.note else ""
        p.add_argument(flag(knob.name), type=int if knob.integer else float, default=getattr(d, knob.name),
                       help=f"{knob.help}{note}; default %(default)s")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help=r"stop before this text (repeatable; \n and \t are understood)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=d.num_samples)
    p.add_argument("--no-kv-cache", action="store_true", help="recompute the whole context every token")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="where the model runs; auto: CUDA, else MPS, else the CPU; default %(default)s")
    return p


def run_prompt(model, tokenizer, prompt: str, config: SampleConfig) -> None:
    """Write prompt + continuation to stdout. One sample streams as it comes; several are printed one after
    another, each when it finishes."""
    out = sys.stdout
    texts = [""] * config.num_samples
    if config.num_samples == 1:
        out.write(prompt)
    for event in generate(model, tokenizer, prompt, config):
        if event.prompt_cropped and event.index == 0 and event.sample == 0:
            print(f"note: the prompt is longer than block_size; its first {event.prompt_cropped} tokens were "
                  "dropped", file=sys.stderr)
        if config.num_samples == 1:
            out.write(event.text)
            out.flush()
        else:
            texts[event.sample] += event.text
            if event.finish_reason is not None:
                out.write(f"--- sample {event.sample + 1} ---\n{prompt}{texts[event.sample]}\n")
                out.flush()
    if config.num_samples == 1:
        out.write("\n")


# what one command may ask for: more is no use on a terminal, and its buffers would not fit in memory
LIMITS = {"max_new_tokens": (None, 100_000), "num_samples": (None, 64)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.prompt is None and not args.interactive:
        print("error: give --prompt TEXT or --interactive (see --help)", file=sys.stderr)
        return 2
    if sys.stdout is None or sys.stdout.closed:  # started with its output closed (`>&-`): nowhere to write
        print("error: standard output is closed: nowhere to write the text", file=sys.stderr)
        return 1
    try:
        config = SampleConfig(**{k.name: getattr(args, k.name) for k in KNOBS}, seed=args.seed,
                              stop=tuple(parse_stop(s, separator=None)[0] for s in args.stop),
                              num_samples=args.num_samples, use_kv_cache=not args.no_kv_cache, ranges=LIMITS)
        device = pick_device(args.device)
    except ValueError as e:
        print(f"error: {as_flags(e)}", file=sys.stderr)
        return 2

    try:
        model, tokenizer, _ = load_checkpoint(find_checkpoint(args.checkpoint), device=device)
        if args.prompt is not None:
            run_prompt(model, tokenizer, args.prompt, config)
        while args.interactive:
            try:
                prompt = input("> ")
            except EOFError:
                print()
                break
            if not prompt:
                break
            try:
                run_prompt(model, tokenizer, prompt, config)
            except KeyboardInterrupt:  # stops this answer, not the loop
                print()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # piped into `head`: stop quietly, and keep Python's exit-time flush quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
