"""View-model helpers for the playground: what the app shows, as plain data and page text. No gradio here.

    token_text, token_display, show_whitespace   a token as readable text: glyphs for whitespace, <0xNN> for
                                                 bytes that are not valid UTF-8 on their own, special names
    TokenRun, score_ids, perplexity              the Tokens tab's state; the model's probability, top alternatives
                                                 and entropy per position (sample.next_token_stats)
    step_markdown                                the line shown for a chosen token (tokenview draws the rest)
    header_markdown, progress_line, stats_markdown, tokens_summary, counts_markdown, vocab_count_line
                                                 the page's lines of text
    chunk_highlight, text_counts                 the tokenizer explorer: pre-split chunks, counts
    merge_tree, merge_tree_text                  how a BPE token was built from bytes
    search_vocab, special_rows, token_kind       the vocabulary browser
    config_rows, summary_rows, fit_note, format_count
                                                 the model tab's tables, words and note

Token text is user text: whatever is built into HTML or Markdown here is escaped (html.escape, escape_markdown).
"""

from __future__ import annotations

import math
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from llm.checkpoint import corpus_names, metric_rows
from llm.sample import Step, next_token_stats

GLYPHS = {" ": "·", "\t": "→", "\n": "↵\n", "\r": "␍"}  # the newline glyph keeps its line break


# -----------------------------------------------------------------------------
# text of a token


def show_whitespace(text: str) -> str:
    """Spaces, tabs and newlines as visible glyphs; other control characters as <0xNN> / <U+NNNN>."""
    out = []
    for ch in text:
        if ch in GLYPHS:
            out.append(GLYPHS[ch])
        elif unicodedata.category(ch) == "Cc":
            out.append(f"<0x{ord(ch):02X}>" if ord(ch) < 256 else f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    return "".join(out)


def token_text(b: bytes) -> str:
    """Readable text of a token's bytes: valid UTF-8 with whitespace glyphs, other bytes as <0xNN>.

    A token can be a piece of a multi-byte character (BPE merges bytes, not characters): those bytes are shown
    as hex, so b" \\xe2\\x80" reads "·<0xE2><0x80>"."""
    parts = []
    while b:
        try:
            parts.append(show_whitespace(b.decode("utf-8")))
            break
        except UnicodeDecodeError as e:
            parts.append(show_whitespace(b[: e.start].decode("utf-8")))
            parts.append("".join(f"<0x{x:02X}>" for x in b[e.start : e.end]))
            b = b[e.end :]
    return "".join(parts)


def token_display(tokenizer, token_id: int) -> str:
    """token_text of one id; special tokens show their name."""
    if token_id in tokenizer.special_tokens.values():
        return next(s for s, i in tokenizer.special_tokens.items() if i == token_id)
    return token_text(tokenizer.token_bytes(token_id))


def escape_markdown(text: str) -> str:
    """Text safe inside Markdown and HTML: every ASCII punctuation character becomes a numeric entity, so no
    markup (Markdown or HTML) can come from it; newlines become spaces."""
    return "".join(f"&#{ord(c)};" if c in string.punctuation else c for c in text.replace("\n", " "))


# -----------------------------------------------------------------------------
# the model's view of a sequence


@torch.inference_mode()
def score_ids(model, ids: Sequence[int], num_alternatives: int = 10,
              vocab_size: int | None = None) -> list[Step | None]:
    """Step for every position of ids (one forward pass): the model's distribution given the tokens before.

    The first position has no context, so it is None. ids must fit the model's block_size."""
    T = len(ids)
    if T > model.config.block_size:
        raise ValueError(f"{T} tokens do not fit block_size {model.config.block_size}")
    if T < 2:
        return [None] * T
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)  # (1, T)
    V = min(vocab_size or model.config.vocab_size, model.config.vocab_size)
    logits = model(x)[0][0, :-1, :V]  # (T-1, V): position t predicts token t+1
    rows = zip(*next_token_stats(logits, x[0, 1:], num_alternatives))
    return [None] + [Step(p, list(zip(ai, ap)), h) for p, ai, ap, h in rows]


@dataclass
class TokenRun:
    """The Tokens tab's state: a prompt's ids and the tokens generated after it, with what the model thought at
    each position (None where nothing is known: the first token, or a prompt not yet scored)."""

    ids: list[int]
    n_prompt: int
    steps: list[Step | None]
    scored: bool = False  # the prompt's steps are filled in

    @classmethod
    def of_prompt(cls, ids: Sequence[int]) -> TokenRun:
        return cls(list(ids), len(ids), [None] * len(ids))

    def add(self, token_id: int, step: Step) -> None:
        self.ids.append(token_id)
        self.steps.append(step)

    def score_prompt(self, model, vocab_size: int | None = None) -> None:
        if not self.scored:
            self.steps[: self.n_prompt] = score_ids(model, self.ids[: self.n_prompt], 10, vocab_size)
            self.scored = True

    def shown(self) -> tuple[list[int], list[Step | None]]:
        """ids and steps paired: a run still streaming grows in another thread, one list before the other."""
        T = min(len(self.ids), len(self.steps))
        return self.ids[:T], self.steps[:T]


def step_markdown(tokenizer, token_id: int, step: Step | None, index: int, source: str) -> str:
    """One line about a chosen token: what it is, its probability and the entropy at that step."""
    tok = escape_markdown(token_display(tokenizer, token_id))
    head = f"Token {index} ({source}): <code>{tok}</code>, id {token_id}"
    if step is None:
        return head + ". It is the first token: there is no context to predict it from."
    return (f"{head}, probability **{step.prob:.2%}**. Entropy at this step: **{step.entropy:.2f} nats** "
            f"({step.entropy / math.log(2):.2f} bits, as uncertain as a fair choice among "
            f"{math.exp(step.entropy):.1f} tokens).")


def perplexity(steps: Iterable[Step | None]) -> float | None:
    """exp(mean negative log-probability) over the steps that have one."""
    nll = [-math.log(max(s.prob, 1e-12)) for s in steps if s is not None]
    return math.exp(sum(nll) / len(nll)) if nll else None


# -----------------------------------------------------------------------------
# tokenizer explorer


def chunk_highlight(chunks: Sequence[str]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Pre-split chunks with alternating colours, labelled by position (1, 2, ...)."""
    value = [(show_whitespace(c), str(i)) for i, c in enumerate(chunks, 1)]
    colors = {str(i): ("#bfdbfe" if i % 2 else "#fde68a") for i in range(1, len(chunks) + 1)}
    return value, colors


def text_counts(text: str, ids: Sequence[int], n_chunks: int) -> dict[str, float | int]:
    n_bytes = len(text.encode("utf-8", errors="replace"))
    return {"characters": len(text), "bytes": n_bytes, "chunks": n_chunks, "tokens": len(ids),
            "bytes per token": round(n_bytes / len(ids), 2) if ids else 0.0}


def token_kind(tokenizer, token_id: int) -> str:
    """"special", "byte" (ids 0..255 of a BPE tokenizer), "merge" or "char"."""
    if token_id in tokenizer.special_tokens.values():
        return "special"
    if tokenizer.type == "char":
        return "char"
    return "byte" if token_id < 256 else "merge"


@dataclass
class MergeNode:
    id: int
    text: str
    children: list[MergeNode] = field(default_factory=list)  # two for a merge, none for a leaf


def _parents(tokenizer) -> dict[int, tuple[int, int]]:
    return {idx: pair for pair, idx in tokenizer.merges.items()}


def merge_tree(tokenizer, token_id: int) -> MergeNode:
    """How token_id was built: a merge's two parts, recursively down to single bytes (or a char or special)."""
    tokenizer.token_bytes(token_id)  # ValueError naming the id when out of range
    parents = _parents(tokenizer)

    def build(t: int) -> MergeNode:
        node = MergeNode(t, token_display(tokenizer, t))
        if t in parents:
            node.children = [build(parents[t][0]), build(parents[t][1])]
        return node

    return build(token_id)


def merge_tree_text(tokenizer, token_id: int) -> str:
    """merge_tree as indented text lines (plain text, for a monospace box)."""
    root = merge_tree(tokenizer, token_id)
    kind = token_kind(tokenizer, token_id)
    notes = {"special": "a special token: added by name, never merged",
             "char": "a character token: this tokenizer has no merges",
             "byte": "a single byte: where every merge starts"}
    if kind == "merge":
        note = f"{len(tokenizer.token_bytes(token_id))} bytes, merge {token_id - 255} of {len(tokenizer.merges)}"
    else:
        note = notes[kind]
    lines = [f"{token_id}  {root.text!r}  ({note})"]

    def walk(node: MergeNode, prefix: str) -> None:
        for i, child in enumerate(node.children):
            last = i == len(node.children) - 1
            lines.append(f"{prefix}{'└─ ' if last else '├─ '}{child.id}  {child.text!r}")
            walk(child, prefix + ("   " if last else "│  "))

    walk(root, "")
    return "\n".join(lines)


VOCAB_HEADERS = ["id", "token", "bytes", "kind"]


def vocab_row(tokenizer, token_id: int) -> list:
    return [token_id, token_display(tokenizer, token_id), len(tokenizer.token_bytes(token_id)),
            token_kind(tokenizer, token_id)]


def search_vocab(tokenizer, query: str, limit: int = 100) -> tuple[list[list], int]:
    """Vocabulary rows matching query, and how many matched in all (rows are the first `limit` by id).

    A number matches that id; text matches tokens containing it, in raw form (" the") or shown form ("·the").
    An empty query lists the longest tokens, the ones the merges built last."""
    query = query or ""
    n = tokenizer.vocab_size
    if not query:
        ids = sorted(range(n), key=lambda t: (-len(tokenizer.token_bytes(t)), t))
        return [vocab_row(tokenizer, t) for t in ids[:limit]], n
    matches = []
    if query.strip().isdigit() and int(query) < n:
        matches.append(int(query))
    for t in range(n):
        b = tokenizer.token_bytes(t)
        if query in b.decode("utf-8", errors="replace") or query in token_display(tokenizer, t):
            if t not in matches:
                matches.append(t)
    return [vocab_row(tokenizer, t) for t in matches[:limit]], len(matches)


def special_rows(tokenizer) -> list[list]:
    return [[i, s] for s, i in sorted(tokenizer.special_tokens.items(), key=lambda kv: kv[1])]


# -----------------------------------------------------------------------------
# model tab


def format_count(n: float) -> str:
    """1234 -> '1.23K', 26080 -> '26.1K', 12_345_678 -> '12.3M'."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    return str(v)


# what each row of the Model tab's tables means, in words
CONFIG_WORDS = {
    "vocab_size": "how many different tokens the model knows (its tokenizer's vocabulary)",
    "block_size": "context: the most tokens the model sees at once; it predicts each from those before it",
    "n_layer": "transformer blocks stacked; each one reads the sequence (attention) and then thinks per token (MLP)",
    "n_head": "attention heads per block: each looks back over the context for a different pattern",
    "n_embd": "width: how many numbers stand for each token as it passes through the blocks",
    "dropout": "share of activations dropped at random while training (0 = none); it fights overfitting",
    "attn_dropout": "share of attention weights dropped at random while training (0 = none)",
    "bias": "whether the linear layers add a learned offset",
    "pos": "how the model knows token order: rope rotates queries and keys by position",
    "norm": "the normalization before each sub-layer, which keeps the numbers in range",
    "mlp": "the per-token feed-forward layer: swiglu is a gated one (as in Llama), gelu the GPT-2 one, relu2 "
           "squares a ReLU",
    "tie_embeddings": "whether the output layer reuses the input embedding table (fewer parameters)",
    "rope_theta": "rope's base: larger values let positions far apart still be told apart",
    "qk_norm": "whether queries and keys are normalized per head, which keeps attention from saturating",
    "logit_softcap": "the output logits squashed to within +-this value (0 = off), which keeps predictions from "
                     "getting overconfident",
    "value_embed": "whether each block adds a learned vector per token to what attention passes on (its values)",
    "x0_mix": "whether each block mixes the token embeddings back into its input, by learned weights",
    "unet": "whether the last blocks take the first blocks' outputs too (U-net skips), by learned weights",
    "ngram_embed": "rows of a table that gives each run of 2, 3 and 4 tokens a learned vector, added to the last "
                   "token's (0 = none): the last few tokens at once, without attention",
    "vocab_multiple": "the token table's rows rounded up to a multiple of this (64 on a GPU: faster matrices); the "
                      "extra rows are never used",
}
SUMMARY_WORDS = {
    "steps": "optimizer updates the run made",
    "tokens seen": "tokens read in training (steps × batch size × context), repeats counted",
    "val loss (best)": "the lowest loss on held-out text, in nats per token: lower is better (this model is saved)",
    "bits per byte": "that loss per byte of text, in bits: compares models with different tokenizers",
    "training time (s)": "seconds spent training",
    "trained on": "the device it trained on",
    "train loss (last eval)": "loss on text it trained on, at the last evaluation; far below val loss = overfitting",
    "corpus": "the text it learned from",
    "tokenizer": "bpe merges byte pairs into tokens; char uses one token per character",
    "vocab size": "tokens in the tokenizer's vocabulary",
    "optimizer": "how the weights were updated (muon: orthogonalized steps for the blocks' matrices)",
    "lr": "learning rate: the size of each update",
    "batch size": "sequences per training step",
    "seed": "the random seed: the same seed and settings give the same run",
    "step limit": "the run stopped after this many steps",
    "time budget (s)": "the run stopped after this many seconds",
}


def config_rows(config) -> list[list[str]]:
    """[field, value, what it means] for each field of a ModelConfig."""
    return [[k, str(v), CONFIG_WORDS.get(k, "")] for k, v in vars(config).items()]


def summary_rows(meta: dict, train: dict | None = None, metrics: Sequence[dict] = ()) -> list[list[str]]:
    """[name, value, what it means] rows of the training summary: from meta.json, the train config and the
    metrics."""
    rows = []
    for key, name in (("step", "steps"), ("tokens_seen", "tokens seen"), ("val_loss", "val loss (best)"),
                      ("bits_per_byte", "bits per byte"), ("train_time", "training time (s)"),
                      ("device", "trained on")):
        if meta.get(key) is not None:
            rows.append([name, _fmt(meta[key])])
    evals = metric_rows(list(metrics), "eval")
    if evals and evals[-1].get("train_loss") is not None:
        rows.append(["train loss (last eval)", _fmt(evals[-1]["train_loss"])])
    for key in ("corpus", "tokenizer", "vocab_size", "optimizer", "lr", "batch_size", "seed"):
        if train and train.get(key) is not None:  # the corpus by name: an older checkpoint may hold its path
            rows.append([key.replace("_", " "), _fmt(corpus_names(train[key]) if key == "corpus" else train[key])])
    if train:  # what ended the run: its step limit or its time budget (the trainer's 5 minutes when neither)
        steps, budget = train.get("max_steps") or 0, train.get("time_budget") or 0
        rows.append(["step limit", _fmt(steps)] if steps else ["time budget (s)", _fmt(budget or 300.0)])
    return [row + [SUMMARY_WORDS.get(row[0], "")] for row in rows]


def fit_note(metrics: Sequence[dict]) -> str:
    """A line under the loss curves on how the model fits its text: the gap between training and validation loss
    at the last evaluation, and what it means when the model has begun to memorize (overfit)."""
    evals = [r for r in metric_rows(list(metrics), "eval")
             if isinstance(r.get("val_loss"), (int, float)) and isinstance(r.get("train_loss"), (int, float))]
    if not evals:
        return ""
    last, best = evals[-1], min(evals, key=lambda r: r["val_loss"])
    gap = last["val_loss"] - last["train_loss"]
    rising = last["val_loss"] > best["val_loss"] + 0.02 and last is not best
    if gap < 0.1 and not rising:
        return (f"Training and validation loss are close ({last['train_loss']:.3f} and {last['val_loss']:.3f}): "
                "the model does as well on text it never saw as on its training text, so more training, a bigger "
                "model or more text should still help.")
    where = (f"; validation loss was lowest at step {best.get('step', '?'):,} ({best['val_loss']:.3f}) and has "
             "risen since (the checkpoint saved is that best one)") if rising else ""
    return (f"**Overfitting**: training loss ({last['train_loss']:.3f}) is {gap:.2f} below validation loss "
            f"({last['val_loss']:.3f}){where}. The model has begun to memorize its training text rather than learn "
            "what carries over to new text. More text, dropout (`--dropout 0.1`), a smaller model or fewer steps "
            "narrow the gap.")


# -----------------------------------------------------------------------------
# lines of text for the page (Markdown; user text escaped)


WELCOME = ("Train a GPT on your own text in the **Train** tab, or try the one loaded here: write a prompt, press "
           "**Generate**, then open **Tokens** to see how likely the model found each token.")


def header_markdown(name: str, num_params: int, meta: dict, config, device: str) -> str:
    """The title, what to try first, and the loaded model in parts: its name, size, training and where it runs."""
    number = lambda key: isinstance(meta.get(key), (int, float)) and not isinstance(meta.get(key), bool)
    c = config
    size = (f"{format_count(num_params)} parameters, {c.n_layer} layer{'s' * (c.n_layer != 1)} × {c.n_embd} dims, "
            f"context {c.block_size} tokens")
    trained = []  # meta.json is a file anyone may have edited: show only what reads as numbers
    if number("step"):
        trained.append(f"{meta['step']:,} steps")
    if number("val_loss"):
        trained.append(f"val loss {meta['val_loss']:.3f}")
    if number("bits_per_byte"):
        trained.append(f"{meta['bits_per_byte']:.3f} bits per byte")
    parts = [f"**Model** {escape_markdown(name)}", f"**Size** {size}"]
    parts += [f"**Trained** {', '.join(trained)}"] if trained else []
    return f"# scratchgpt studio\n{WELCOME}\n\n" + " · ".join(parts + [f"**Runs on** {device}"])


def progress_line(n: int, seconds: float) -> str:
    return f"{n} tokens so far · {n / seconds:.1f} tokens/s · generating…"


STOP_REASONS = {"length": "max new tokens", "eos": "end of text", "stop": "a stop string", "halt": "your Stop"}


def stats_markdown(n: int, seconds: float, first: float | None, reason: str, cropped: int = 0,
                   seed: int | None = None) -> str:
    """The line after a generation: tokens, speed, time to the first token, why it stopped, and the seed that
    gives the same text again. `reason` is a TokenEvent's finish_reason or, for a limit of the app's, its own
    words."""
    note = f" · the prompt's first {cropped:,} tokens did not fit the context and were dropped" if cropped else ""
    note += f" · seed **{seed}** (the same seed and settings give this text again)" if seed is not None else ""
    return (f"**{n} token{'s' * (n != 1)}** in {seconds:.2f} s · **{n / seconds:.1f} tokens/s** · first token "
            f"after {1000 * (first or seconds):.0f} ms · stopped at {STOP_REASONS.get(reason, reason)}{note}")


def tokens_summary(run: TokenRun) -> str:
    """The Tokens tab's line: how many tokens of each kind and their perplexity."""
    ids, steps = run.shown()
    n_gen = len(ids) - run.n_prompt
    ppl = perplexity(steps[run.n_prompt:]) if n_gen else perplexity(steps)
    return (f"{run.n_prompt} prompt tokens, {n_gen} generated"
            + (f" · perplexity of the {'generated' if n_gen else 'prompt'} tokens {ppl:.2f}" if ppl else "")
            + " · click a token for the model's alternatives there")


def counts_markdown(counts: dict[str, float | int]) -> str:
    """text_counts as one line: **29** characters · **32** bytes · ...; an empty text says so."""
    if not counts.get("characters"):
        return "No text yet: type or paste some above."
    return " · ".join(f"**{v:,}** {k}" if isinstance(v, int) else f"**{v:.2f}** {k}" for k, v in counts.items())


def vocab_count_line(shown: int, total: int, query: str) -> str:
    if query and not total:
        return f"No token contains <code>{escape_markdown(query)}</code> (or has it as its id)."
    return f"{shown} of {total:,} tokens" + (" matching" if query else " (longest first)")
