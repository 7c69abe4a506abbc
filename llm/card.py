"""The model card and the loss curve of a run, made from what the checkpoint directory already holds.

    loss_curve_svg(rows)                       metrics.jsonl rows -> a small hand-written SVG (no matplotlib)
    render_card(config, meta, rows, ...)       -> README.md text: YAML front matter, then the tables, the curve,
                                                  a sample, limitations and how to load it

Pure functions of dicts and strings: no file or network I/O here (llm/hub.py gathers the inputs and writes the
files), so the card can be tested from made-up figures.
"""

from __future__ import annotations

import math
import re
from html import escape

from huggingface_hub import ModelCardData

from llm.checkpoint import corpus_names, metric_points, metric_rows

LOSS_CURVE = "loss_curve.svg"
# corpora the Hub also hosts as datasets, so the card can link them (front matter `datasets:`)
KNOWN_DATASETS = {"tiny_shakespeare": "karpathy/tiny_shakespeare"}
_HF_DATASET_URL = re.compile(r"^https?://huggingface\.co/datasets/([\w.-]+/[\w.-]+)")


# -----------------------------------------------------------------------------
# the loss curve

def _nice_step(span: float, n: int = 5) -> float:
    """A 1-2-5 tick spacing giving about n ticks over span."""
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _ticks(lo: float, hi: float, n: int = 5, min_step: float = 0.0) -> list[float]:
    step = max(_nice_step(hi - lo, n), min_step)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt_tick(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{round(v, 6):g}"


def _bucket_means(points: list[tuple[float, float]], n: int) -> list[tuple[float, float]]:
    """At most n points: consecutive points averaged, so 20k logged steps stay a few KB of SVG."""
    if len(points) <= n:
        return points
    size = len(points) / n
    out = []
    for i in range(n):
        chunk = points[int(i * size):int((i + 1) * size)] or points[-1:]
        out.append((sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk)))
    return out


def _series(rows: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """(step, loss) per curve: train from the per-step log rows (else from the evals), val from the evals."""
    train = metric_points(rows, "train", "loss") or metric_points(rows, "eval", "train_loss")
    return {"train": _bucket_means(train, 400), "val": metric_points(rows, "eval", "val_loss")}


def loss_curve_svg(rows: list[dict], width: int = 640, height: int = 320, title: str = "Loss",
                   empty: str = "no metrics recorded", fit: bool = False) -> str:
    """Train and validation loss against step, as a self-contained SVG document. `fit`: as wide as its container
    (up to `width`), for a page."""
    return curves_svg(_series(rows), {"train": "#7aa6d8", "val": "#d9534f"}, title, "step", "loss (nats/token)",
                      width, height, empty, fit)


def curves_svg(series: dict[str, list[tuple[float, float]]], colors: dict[str, str], title: str, xlabel: str,
               ylabel: str, width: int = 640, height: int = 320, empty: str = "no points", fit: bool = False) -> str:
    """Lines of (x, y) points as a self-contained SVG document, a legend with each line's last value. A series
    named "train" is drawn thinner; one of at most 60 points gets dots."""
    left, right, top, bottom = 56, 16, 30, 42  # margins: room for tick labels and the legend
    pw, ph = width - left - right, height - top - bottom
    size = (f'width="100%" style="max-width:{width}px;height:auto"' if fit else f'width="{width}" height="{height}"')
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" {size} '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(title)}</text>']
    pts = [p for s in series.values() for p in s]
    if not pts:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#666">'
                   f'{escape(empty)}</text></svg>')
        return "\n".join(out) + "\n"

    x0, x1 = min(0.0, min(p[0] for p in pts)), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 <= x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.05 or max(abs(y1) * 0.05, 0.05)
    y0, y1 = y0 - pad, y1 + pad

    def sx(x: float) -> float:
        return round(left + (x - x0) / (x1 - x0) * pw, 1)

    def sy(y: float) -> float:
        return round(top + (y1 - y) / (y1 - y0) * ph, 1)

    # grid and tick labels
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" y1="{sy(t)}" x2="{left + pw}" y2="{sy(t)}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{sy(t) + 4}" text-anchor="end" fill="#444">{_fmt_tick(t)}</text>')
    for t in _ticks(x0, x1, min_step=1):  # steps are whole numbers
        out.append(f'<line x1="{sx(t)}" y1="{top + ph}" x2="{sx(t)}" y2="{top + ph + 4}" stroke="#444"/>')
        out.append(f'<text x="{sx(t)}" y="{top + ph + 16}" text-anchor="middle" fill="#444">{_fmt_tick(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">{escape(ylabel)}</text>')

    # the curves, then a legend in the top right corner
    legend_x = left + pw - max(150, 7 * max(len(n) for n in series) + 90)
    for i, (name, points) in enumerate(s for s in series.items() if s[1]):
        path = " ".join(f"{sx(x)},{sy(y)}" for x, y in points)
        width_ = 1.5 if name == "train" else 2
        out.append(f'<polyline points="{path}" fill="none" stroke="{colors[name]}" stroke-width="{width_}" '
                   f'stroke-linejoin="round"/>')
        if name != "train" and len(points) <= 60 or len(points) == 1:
            out += [f'<circle cx="{sx(x)}" cy="{sy(y)}" r="2.5" fill="{colors[name]}"/>' for x, y in points]
        ly = top + 14 + 16 * i
        label = f"{name} (last {points[-1][1]:.3f})"
        out.append(f'<line x1="{legend_x}" y1="{ly - 4}" x2="{legend_x + 18}" y2="{ly - 4}" '
                   f'stroke="{colors[name]}" stroke-width="2"/>')
        out.append(f'<text x="{legend_x + 24}" y="{ly}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -----------------------------------------------------------------------------
# the model card

def dataset_ids(corpus: list[str] | tuple[str, ...] | str | None) -> list[str]:
    """Hub dataset ids for the corpora known to be on the Hub (front matter `datasets:`)."""
    if isinstance(corpus, str):
        corpus = [corpus]
    ids = []
    for c in corpus or ():
        m = _HF_DATASET_URL.match(str(c))
        ds = KNOWN_DATASETS.get(str(c)) or (m.group(1) if m else None)
        if ds and ds not in ids:
            ids.append(ds)
    return ids


def fmt_duration(seconds: float | None) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _num(v, fmt: str = ".4f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def _int(v) -> str:
    return f"{v:,}" if isinstance(v, int) else "n/a"


def _cell(s) -> str:
    s = {True: "yes", False: "no"}.get(s, s) if isinstance(s, bool) else s
    return str(s).replace("|", "\\|").replace("\n", " ")


def _table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows])


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks inside the text."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def card_data(config: dict, meta: dict, license: str = "mit", datasets: list[str] | None = None,
              tags: list[str] | None = None) -> ModelCardData:
    """The YAML front matter: what the Hub indexes (library, task, license, tags, datasets)."""
    tok = (config.get("train") or {}).get("tokenizer", "bpe")
    model = config.get("model") or {}
    base_tags = ["scratchgpt", "gpt", "from-scratch", "pytorch", "safetensors", f"{tok}-tokenizer"]
    base_tags += [t for t in (model.get("pos"), model.get("mlp"), model.get("norm")) if t]
    ds = datasets if datasets is not None else dataset_ids(meta.get("corpus"))
    return ModelCardData(library_name="scratchgpt", license=license, pipeline_tag="text-generation",
                         tags=list(dict.fromkeys(base_tags + list(tags or []))), datasets=ds or None)


def _architecture(model: dict, meta: dict, tok_kind: str) -> str:
    multiple = model.get("vocab_multiple") or 1
    padded = [("token table rows", f"rounded up to a multiple of {multiple} (for a GPU)")] if multiple > 1 else []
    return _table([
        ("parameters", _int(meta.get("params"))),
        ("layers (n_layer)", _int(model.get("n_layer"))),
        ("heads (n_head)", _int(model.get("n_head"))),
        ("embedding (n_embd)", _int(model.get("n_embd"))),
        ("context (block_size)", f"{_int(model.get('block_size'))} tokens"),
        ("vocabulary", f"{_int(model.get('vocab_size'))} ({'byte-level BPE' if tok_kind == 'bpe' else 'characters'})"),
        ("positions", model.get("pos", "n/a")),
        ("normalization", model.get("norm", "n/a")),
        ("MLP", model.get("mlp", "n/a")),
        ("tied embeddings", model.get("tie_embeddings", "n/a")),
        ("value embeddings", model.get("value_embed", False)),
        ("dropout", model.get("dropout", "n/a")),
        ("bias", model.get("bias", "n/a")),
    ] + [(name, model[key]) for name, key in (("QK-norm", "qk_norm"), ("logit soft-cap", "logit_softcap"),
                                              ("embeddings mixed into each block", "x0_mix"),
                                              ("U-net skips", "unet"),
                                              ("n-gram embedding rows", "ngram_embed"),
                                              ("attention dropout", "attn_dropout")) if model.get(key)] + padded)


def _corpus_size(data: dict) -> tuple[str, str]:
    """data.json -> (token counts, ' (size)' of the corpus), 'n/a' and '' where unknown."""
    tokens, size = "n/a", ""
    if isinstance(data.get("train_tokens"), int) and isinstance(data.get("val_tokens"), int):
        tokens = (f"{data['train_tokens'] + data['val_tokens']:,} ({data['train_tokens']:,} train / "
                  f"{data['val_tokens']:,} val)")
    if isinstance(data.get("train_bytes"), int) and isinstance(data.get("val_bytes"), int):
        size = f" ({fmt_bytes(data['train_bytes'] + data['val_bytes'])})"
    return tokens, size


def _training(model: dict, train: dict, meta: dict, data: dict, final: dict, corpus: str) -> str:
    corpus_tokens, corpus_size = _corpus_size(data)
    seen = meta.get("tokens_seen")
    epochs = (f" ({seen / data['train_tokens']:.1f} epochs)"
              if isinstance(seen, int) and isinstance(data.get("train_tokens"), int) and data["train_tokens"] else "")
    batch = train.get("batch_size"), train.get("grad_accum", 1), model.get("block_size")
    per_step = (f"{batch[0]} x {batch[1]} x {batch[2]} = {batch[0] * batch[1] * batch[2]:,} tokens"
                if all(isinstance(b, int) for b in batch) else "n/a")
    versions = meta.get("versions") or {}
    return _table([
        ("corpus", corpus + corpus_size),
        ("corpus tokens", corpus_tokens),
        ("tokens seen", _int(seen) + epochs),
        ("steps", _int(meta.get("step"))),
        ("batch per step", per_step),
        ("optimizer", f"{train.get('optimizer', 'n/a')} (lr {train.get('lr', 'n/a')}, "
                      f"{train.get('warmup_steps', 'n/a')} warmup steps, cosine to {train.get('min_lr', 'n/a')})"),
        ("weights saved", f"an average of the weights over the last steps (decay {train['ema']} per step)"
         if train.get("ema") else "as trained"),
        ("training time", f"{fmt_duration(meta.get('train_time'))} (wall clock {fmt_duration(meta.get('wall_time'))})"),
        ("hardware", meta.get("hardware") or meta.get("device") or "n/a"),
        ("final train loss", f"{_num(final.get('train_loss'))} (step {final.get('step', 'n/a')})"),
        ("final val loss", f"{_num(final.get('val_loss'))} (step {final.get('step', 'n/a')})"),
        ("this checkpoint's val loss", f"{_num(meta.get('val_loss'))} (step {meta.get('step', 'n/a')})"),
        ("bits per byte (val)", _num(meta.get("bits_per_byte"), ".3f")),
        ("software", ", ".join(f"{k} {v}" for k, v in versions.items()) or "n/a"),
    ])


def _limitations_and_usage(corpus: str, model: dict, ref: str) -> list[str]:
    return [
        "## Limitations",
        "\n".join([
            f"- A small model trained on one corpus ({corpus}): it imitates that text's style and vocabulary; "
            "it knows no facts beyond it and is often incoherent.",
            "- No instruction tuning and no safety filtering: it continues text, it does not follow requests, "
            "and it can reproduce passages of its training data.",
            f"- It sees at most {_int(model.get('block_size'))} tokens of context.",
            "- Made for learning and play, not for any use where the output matters.",
        ]),
        "## How to use",
        "With the scratchgpt code (`pip install -r requirements.txt` in its repository):",
        "```python\nfrom llm import SampleConfig, generate, load_checkpoint\n\n"
        f'model, tokenizer, meta = load_checkpoint("{ref}")  # downloads through the Hugging Face cache\n'
        'for event in generate(model, tokenizer, "\\n", SampleConfig(max_new_tokens=200)):\n'
        '    print(event.text, end="", flush=True)\n```',
        f"```bash\n# the playground\npython app.py --checkpoint {ref}\n"
        f"# the same, the way a Space passes it\nSCRATCHGPT_CHECKPOINT={ref} python app.py\n"
        f'# text on the command line\npython -m llm.generate --checkpoint {ref} --prompt "The"\n```',
        "Append `@REVISION` to the id (a branch, tag or commit) to load another revision. "
        "`HF_HUB_OFFLINE=1` loads from the local cache only.",
        "Files: `model.safetensors` (weights), `config.json` (model and training settings), `tokenizer.json`, "
        "`meta.json` (step, losses, versions), `metrics.jsonl` (the training log).",
    ]


def render_card(config: dict, meta: dict, rows: list[dict], repo_id: str | None = None,
                data: dict | None = None, sample: str | None = None, sample_settings: str = "",
                license: str = "mit", datasets: list[str] | None = None, image: str | None = LOSS_CURVE) -> str:
    """README.md for a model repo, from config.json, meta.json, metrics.jsonl rows and data.json (token counts).

    `sample` is text generated by this checkpoint; `image` the loss-curve file beside the card (None: no image).
    """
    model, train = config.get("model") or {}, config.get("train") or {}
    evals = [r for r in metric_rows(rows, "eval") if "val_loss" in r]
    name = repo_id.split("/")[-1] if repo_id else "scratchgpt model"
    corpus = ", ".join(corpus_names(meta.get("corpus") or train.get("corpus"))) or "unknown"
    corpus_size = _corpus_size(data or {})[1]
    parts = [
        f"# {name}",
        f"A {_int(meta.get('params'))}-parameter GPT trained from scratch with scratchgpt on {corpus}{corpus_size}. "
        "It continues text in the style of its corpus.",
        "## Architecture", _architecture(model, meta, train.get("tokenizer", "bpe")),
        "## Training", _training(model, train, meta, data or {}, evals[-1] if evals else {}, corpus),
    ]
    if image:
        parts += ["## Loss curve", f"![train and validation loss against step]({image})"]
    if sample:
        fence = _fence(sample)
        parts += ["## Sample", (f"Unconditional, {sample_settings}:" if sample_settings else "Unconditional:"),
                  f"{fence}text\n{sample.rstrip()}\n{fence}"]
    parts += _limitations_and_usage(corpus, model, repo_id or "path/to/checkpoint")
    body = "\n\n".join(parts) + "\n"
    return f"---\n{card_data(config, meta, license, datasets).to_yaml()}\n---\n\n{body}"
