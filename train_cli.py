"""Train a tokenizer and a GPT on any text file: python train_cli.py --corpus input.txt

Settings come from, in increasing priority: the defaults (sized for about 5 minutes on a laptop CPU), --preset,
--config FILE (JSON or YAML: flat keys, or a model: and a train: or training: section, as in a checkpoint's
config.json; read_config_file), and the flags themselves. With --resume they are checked against the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import json
import sys
from pathlib import Path

from tqdm import tqdm

from llm.cli import ArgumentParser, as_flags, flag
from llm.config import FIELD, from_dict, to_dict
from llm.dist import Dist, RankLost
from llm.model import MLP_CHOICES, NORM_CHOICES, POSITIONS, ModelConfig
from llm.run import CHOICES, PRESETS, TrainConfig, TrainingError
from llm.runtime import pick_device
from llm.train import train

# each setting's flag: its group, argparse keywords, and a line of help (the default is added from the configs)
SETTING_FLAGS = {
    "data": [
        ("tokenizer", {"choices": CHOICES["tokenizer"]}, ("bpe: byte-level BPE (GPT-4 split); char: one token "
                                                            "per character")),
        ("vocab_size", {"type": int}, "BPE's vocabulary, in tokens (256 bytes + merges + end-of-text)"),
        ("val_frac", {"type": float}, "the end of the text held out for validation, a fraction"),
        ("encoding_errors", {"choices": CHOICES["encoding_errors"]}, ("bytes that are not UTF-8: strict refuses "
                                                                       "the corpus, replace swaps in U+FFFD")),
    ],
    "model": [
        ("n_layer", {"type": int}, "transformer blocks"),
        ("n_head", {"type": int}, "attention heads per block (divides --n-embd)"),
        ("n_embd", {"type": int}, "width: the size of each token's vector"),
        ("block_size", {"type": int}, "context length, in tokens"),
        ("dropout", {"type": float}, "dropout on the residual stream while training (embeddings, block outputs)"),
        ("attn_dropout", {"type": float}, "dropout on the attention weights while training"),
        ("bias", {"action": argparse.BooleanOptionalAction}, "biases in linear layers and norms"),
        ("pos", {"choices": list(POSITIONS)}, "position encoding"),
        ("norm", {"choices": NORM_CHOICES}, "normalization layer"),
        ("mlp", {"choices": MLP_CHOICES}, "feed-forward block"),
        ("tie_embeddings", {"action": argparse.BooleanOptionalAction}, "share the input embedding and output head"),
        ("qk_norm", {"action": argparse.BooleanOptionalAction}, "normalize queries and keys per head (QK-norm)"),
        ("logit_softcap", {"type": float}, "squash the output logits into +-this by cap*tanh(x/cap); 0 = off"),
        ("value_embed", {"action": argparse.BooleanOptionalAction}, "value embeddings: a table per block added to "
                                                                     "the attention values"),
        ("x0_mix", {"action": argparse.BooleanOptionalAction}, "mix the embeddings into every block's input, "
                                                                 "learned"),
        ("unet", {"action": argparse.BooleanOptionalAction}, ("U-net skips: the last blocks take the first blocks' "
                                                                "outputs, by learned weights")),
        ("ngram_embed", {"type": int}, ("hashed n-gram embeddings: rows of a table for the 2, 3 and 4 tokens that "
                                        "end at each position; 0 = off")),
        ("vocab_multiple", {"type": int}, ("round the token table's rows up to a multiple of this (default: 64 on "
                                           "CUDA, 1 elsewhere); the extra ids are never produced")),
    ],
    "optimisation": [
        ("optimizer", {"choices": CHOICES["optimizer"]}, "muon: Muon for block matrices, AdamW for the rest"),
        ("lr", {"type": float}, "AdamW's peak learning rate"),
        ("muon_lr", {"type": float}, "Muon's peak learning rate"),
        ("min_lr", {"type": float}, ("AdamW's learning rate at the end of the cosine (default: a tenth of --lr; "
                                     "Muon's ends by the same ratio)")),
        ("warmup_steps", {"type": int}, "steps of linear warmup"),
        ("weight_decay", {"type": float}, "decoupled weight decay (AdamW's matrices and embeddings, Muon's)"),
        ("ema", {"type": float}, "evaluate and save an average of the weights with this decay per step; 0 = off"),
        ("shuffle", {"action": argparse.BooleanOptionalAction}, "read the text in epochs of windows in a random "
                                                                 "order (--no-shuffle: windows drawn at random)"),
        ("grad_clip", {"type": float}, "clip the gradient norm to this; 0 = off"),
        ("batch_size", {"type": int}, "sequences per micro-batch"),
        ("grad_accum", {"type": int}, "micro-batches per step"),
    ],
    "run": [
        ("max_steps", {"type": int}, "stop after this many steps; 0 = no step limit"),
        ("time_budget", {"type": float}, "stop after this many seconds of training; 0 = none (neither set: 300)"),
        ("eval_interval", {"type": int}, "steps between evaluations (each saves last/, and best/ if better)"),
        ("eval_iters", {"type": int}, "batches per split in an evaluation"),
        ("log_interval", {"type": int}, "steps between rows of metrics.jsonl"),
        ("sample_tokens", {"type": int}, "tokens of the sample printed at each evaluation; 0 = none"),
        ("seed", {"type": int}, "the same seed and settings give the same run"),
        ("device", {"choices": CHOICES["device"]}, "auto: CUDA, else MPS, else CPU"),
        ("dtype", {"choices": CHOICES["dtype"]}, "auto: bf16 autocast on GPUs, fp32 on CPU"),
        ("compile", {"action": argparse.BooleanOptionalAction}, "torch.compile (default: on CUDA only)"),
    ],
}


def build_parser() -> argparse.ArgumentParser:
    # every default is None so that the flags a user actually typed can be told apart (presets, --resume); the
    # help shows the configs' defaults
    p = ArgumentParser(prog="train_cli.py", description="Train a byte-level BPE tokenizer and a GPT on a text corpus.",
                       argument_default=None)
    defaults = {**to_dict(ModelConfig()), **to_dict(TrainConfig())}
    for group, settings in SETTING_FLAGS.items():
        g = p.add_argument_group(group)
        if group == "data":
            g.add_argument("--corpus", nargs="+", help=("text files (.gz too), directories, globs, http(s) URLs, "
                                                        "hf:USER/NAME (a Hub dataset), or tiny_shakespeare"))
        for name, kw, text in settings:
            shown = "" if name in ("compile", "min_lr") or defaults.get(name) is None else f" (default {defaults[name]:g})" \
                if isinstance(defaults[name], float) else f" (default {defaults[name]})"
            g.add_argument(flag(name), help=text + shown, **kw)
        if group == "run":
            g.add_argument("--config", help="JSON or YAML file of settings; flags override it")
            g.add_argument("--preset", choices=sorted(PRESETS), help="a named set of settings; flags override it")
            g.add_argument("--resume", action="store_true", help="continue the run in --out from its last/ save")
            g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("output")
    g.add_argument("--out", help="the run's directory (default checkpoints/<corpus name>)")
    g.add_argument("--overwrite", action="store_true", help="replace the checkpoints already in --out")
    g.add_argument("--push-to-hub", metavar="USER/NAME", help="upload OUT/best with a model card when training ends")
    g.add_argument("--hub-private", action="store_true", help="create that repo private")
    return p


MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)} - {"vocab_size"}  # the tokenizer gives vocab_size
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
SECTIONS = {"model": MODEL_FIELDS | {"vocab_size"}, "train": TRAIN_FIELDS, "training": TRAIN_FIELDS}


def parse_config_file(path: str) -> object:
    """The JSON or YAML document of a --config file."""
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith((".yaml", ".yml")):
        import yaml  # PyYAML comes with gradio

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


# what a checkpoint's config.json (it has a "version") records of its run that is no setting for a new one
RECORDED = {("model", "vocab_size"): "the vocabulary its tokenizer came out at",
            ("train", "out"): "where that run was written"}


def read_config_file(path: str) -> dict:
    """Flat settings from a --config file, in one of two layouts (README, "Settings files"): flat keys, or a
    `model:` section and a `train:` (or `training:`) section. A checkpoint's config.json is the second layout
    with a "version": that, and what RECORDED names, is passed over. Every other key is used or refused:
    ValueError naming it."""
    d = parse_config_file(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    d = {str(k).replace("-", "_"): v for k, v in d.items()}
    if not set(d) & set(SECTIONS):
        return d  # flat: split_settings refuses what is no setting
    checkpoint = "version" in d
    if stray := [k for k in d if k not in SECTIONS and k != "version"]:
        raise ValueError(f"{path}: {', '.join(stray)} beside the model/train sections: put each setting inside one")
    if "train" in d and "training" in d:
        raise ValueError(f"{path}: both a train and a training section: use one")
    flat: dict = {}
    for section, fields in SECTIONS.items():
        body = d.get(section) or {}  # an empty YAML section is None
        if not isinstance(body, dict):
            raise ValueError(f"{path}: {section}: expected a mapping of settings")
        for key, value in body.items():
            name = str(key).replace("-", "_")
            if checkpoint and (section, name) in RECORDED:
                continue
            if name not in fields:
                kind = ("a training setting" if name in TRAIN_FIELDS else "a model setting" if name in MODEL_FIELDS
                        else "no setting")
                raise ValueError(f"{path}: {section}.{key} is {kind}")
            if name in flat and flat[name] != value:
                raise ValueError(f"{path}: {name} is {flat[name]!r} in one section and {value!r} in another")
            flat[name] = value
    return flat


def split_settings(settings: dict) -> tuple[dict, dict]:
    """Route flat settings to ModelConfig and TrainConfig fields; unknown names are an error."""
    unknown = sorted(set(settings) - MODEL_FIELDS - TRAIN_FIELDS)
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    return ({k: v for k, v in settings.items() if k in MODEL_FIELDS},
            {k: v for k, v in settings.items() if k in TRAIN_FIELDS})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dist = Dist.from_env()  # under torchrun: this process's rank among the run's
    try:
        settings, model_given, train_given = gather_settings(args)
    except (ValueError, OSError) as e:  # the same on every rank: rank 0 says it
        if dist.main:
            print(f"train_cli.py: error: {as_flags(e)}", file=sys.stderr)
        return 1
    try:
        dist.start(pick_device(settings.get("device") or _saved(settings["out"], "device", args.resume)).type)
        if args.resume:  # the configs come from OUT/last; train() checks what was given against them
            model_cfg, train_cfg = None, TrainConfig(out=settings["out"])
        else:  # what was given is checked first; then the rule fills in the rest (rank 0's choice for all)
            model_kw, train_kw = split_settings(dist.share(auto_fill(settings, dist.world) if dist.main else None))
            model_cfg, train_cfg = from_dict(ModelConfig, model_kw), from_dict(TrainConfig, train_kw)
        summary = train(model_cfg, train_cfg, resume=args.resume, model_overrides=model_given,
                        train_overrides=train_given, overwrite=args.overwrite, progress=not args.no_progress,
                        log=lambda line: tqdm.write(FIELD.sub(lambda m: flag(m[1]), line)),  # `dropout` -> --dropout
                        dist=dist)
    except (ValueError, TrainingError, OSError, RankLost) as e:
        if dist.main or not isinstance(e, RankLost):  # a rank that lost its peers: rank 0 says so for all
            where = f"(rank {dist.rank}) " if dist.active and not dist.main else ""
            print(f"train_cli.py: error: {where}{as_flags(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if dist.main:
            print("train_cli.py: interrupted; last/ holds the most recent saved checkpoint", file=sys.stderr)
        return 130
    finally:
        dist.stop()
    return report(summary, args) if dist.main else 0


def gather_settings(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Presets, --config and the flags, merged in that order and checked -> (all of them, the model settings
    given, the training settings given). On --resume what was given is checked against the checkpoint later."""
    meta_flags = {"config", "preset", "resume", "overwrite", "no_progress", "push_to_hub", "hub_private"}
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in meta_flags}
    if "corpus" in flags:
        flags["corpus"] = tuple(flags["corpus"])
    settings = dict(PRESETS.get(args.preset, {}))
    if args.config:
        settings.update(read_config_file(args.config))
    settings.update(flags)
    if isinstance(settings.get("corpus"), str):
        settings["corpus"] = (settings["corpus"],)
    if not settings.get("corpus") and not (args.resume and settings.get("out")):
        raise ValueError("--corpus is required (text files, directories, globs, URLs, hf:USER/NAME, or "
                         "tiny_shakespeare)")
    model_given, train_given = split_settings(settings)
    if "out" not in settings:
        settings["out"] = str(Path("checkpoints") / _corpus_name(settings["corpus"][0]))
    if args.push_to_hub:  # fail before training, not after it
        from llm.hub import check_can_push

        check_can_push(args.push_to_hub)
    if not args.resume:
        from_dict(ModelConfig, model_given), from_dict(TrainConfig, train_given)
    return settings, model_given, train_given


def report(summary: dict, args: argparse.Namespace) -> int:
    """What the run did, where its checkpoints are, and the push to the Hub when asked -> the exit status."""
    out = summary["out"]
    if summary["interrupted"]:
        print(f"stopped at step {summary['step']}; saved {out}/last. Continue with: "
              f"python train_cli.py --out {out} --resume")
        return 130 if summary["interrupted"] == 2 else 0  # SIGINT is signal 2
    if summary["best_val_loss"] is not None:
        print(f"best val loss {summary['best_val_loss']:.4f}, {summary['best_bits_per_byte']:.3f} bits per byte "
              f"({summary['step']} steps, {summary['train_time']:.0f} s of training, {summary['params']:,} params)")
    print(f"checkpoints: {out}/best and {out}/last")
    print(f"open it in the playground: python app.py --checkpoint {out}")
    if args.push_to_hub:
        from llm.hub import push_checkpoint

        try:
            url = push_checkpoint(out, args.push_to_hub, private=args.hub_private)
        except (ValueError, OSError) as e:
            print(f"train_cli.py: error: {as_flags(e)} (checkpoints are saved; retry: python -m llm.hub push {out} "
                  f"{args.push_to_hub})", file=sys.stderr)
            return 1
        print(f"pushed to {url}; open it with: python app.py --checkpoint {args.push_to_hub}")
    return 0


def auto_fill(settings: dict, world: int = 1) -> dict:
    """The settings with what the rule of llm/auto.py picks for those not given (README, "Settings chosen for
    you"), said in one line; `world` processes train together (torchrun)."""
    from llm.auto import auto_settings, measure_flops
    from llm.corpus import open_corpus

    size = open_corpus(settings["corpus"], settings.get("encoding_errors", "strict")).nbytes()
    timed = settings.get("time_budget") or not settings.get("max_steps")
    flops = measure_flops(pick_device(settings.get("device", "auto"))) if timed else None
    chosen, why = auto_settings(settings, size, flops, world)
    if chosen:
        print(f"settings for {why}: " + " ".join(f"{flag(k)} {v:g}" if isinstance(v, float) else f"{flag(k)} {v}"
                                                 for k, v in chosen.items()) + " (a flag of yours overrides any)")
    return {**chosen, **settings}


def _saved(out: str, key: str, resume: bool, default: str = "auto") -> str:
    """A training setting of the run in OUT/last, when resuming it (before anything else reads it)."""
    if not resume:
        return default
    from llm.checkpoint import CheckpointError, read_config

    try:
        return read_config(Path(out) / "last")[1].get(key, default)
    except (CheckpointError, OSError):
        return default  # (train() says what is wrong with it)


def _corpus_name(spec: str) -> str:
    """The run's default name: the corpus's file or directory name (of a glob, the part before its wildcards)."""
    spec = spec.split("?")[0].rstrip("/")
    if glob.has_magic(spec):
        spec = "/".join(itertools.takewhile(lambda part: not glob.has_magic(part), spec.split("/")))
    return Path(spec).stem or "corpus"


if __name__ == "__main__":
    sys.exit(main())
