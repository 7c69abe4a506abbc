"""The token views as HTML (no gradio): text that still reads as text, each token's colour as its background.

    pieces(tokenizer, ids)                  what is drawn as one unit: a token, or the byte tokens that only
                                            together make a character (shown as that character)
    tokens_html(tokenizer, ids, ...)        the Tokens tab's view (colour by probability or id, the probability on
                                            hover, a legend) and the Tokenizer tab's (each token with its id)
    alternatives_html(tokenizer, step, t)   the model's top alternatives at a step, with bars
    prob_color, id_color, prob_label        the colour scales

Every token carries data-i (its index in ids): a click is mapped back to a token by the page's script (VIEW_JS),
which sends it as a select event. Token text is user text: everything here is html.escape'd.
"""

from __future__ import annotations

import codecs
import colorsys
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

from llm.sample import Step
from llm.viz import show_whitespace, token_display, token_text

PROB_LOW = 1e-4  # probabilities at or below this get the "least likely" colour (log scale up to 1)
NO_COLOR = "#e5e7eb"  # tokens with nothing to colour by (the first prompt token has no probability)
BAR_PX = 120  # the likeliest alternative's bar
MAX_GROUP = 4  # a character is at most 4 bytes: byte tokens that make none in 4 tokens are drawn one by one


def _hex(h: float, s: float, light: float) -> str:
    r, g, b = colorsys.hls_to_rgb(h % 1.0, light, s)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def prob_color(p: float | None) -> str:
    """Red (unlikely) through yellow to green (likely), on a log scale from PROB_LOW to 1."""
    if p is None or math.isnan(p):
        return NO_COLOR
    x = (math.log10(max(p, PROB_LOW)) - math.log10(PROB_LOW)) / -math.log10(PROB_LOW)  # 0 .. 1
    return _hex(x / 3.0, 0.75, 0.72)  # hue 0 (red) .. 1/3 (green)


def id_color(token_id: int) -> str:
    """A pastel colour per id; neighbouring ids get distant hues (golden-angle steps)."""
    return _hex(token_id * 0.618033988749895, 0.65, 0.78)


def prob_label(p: float | None) -> str:
    if p is None:
        return "none (the first token has no context)"
    if p >= 0.995:
        return "100%"
    if p >= 0.01:
        return f"{p:.0%}"
    if p >= 0.001:
        return f"{p:.1%}"
    return "<0.1%"


# -----------------------------------------------------------------------------
# pieces: tokens as they are drawn


@dataclass
class Piece:
    first: int  # index of its first token in ids
    ids: list[int]  # one token, or the byte tokens that make one character (or more) only together
    text: str  # shown text: whitespace as glyphs (viz.show_whitespace), a newline's glyph followed by its break


def _decodes(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _may_decode(b: bytes) -> bool:
    """Whether more bytes could still make b valid UTF-8 (it ends inside a character, with no error before)."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(b, final=False)
        return True
    except UnicodeDecodeError:
        return False


def pieces(tokenizer, ids: Sequence[int]) -> list[Piece]:
    """The tokens of ids as drawn: a token whose bytes end inside a character is joined by the tokens after it
    until the character is whole (at most MAX_GROUP tokens), and the group is drawn as its text; bytes that make
    no character are drawn as <0xNN> (viz.token_text), one token at a time."""
    specials = set(tokenizer.special_tokens.values())
    out: list[Piece] = []
    group: list[tuple[int, int]] = []  # (index, id) of the tokens waiting for the rest of a character
    buf = b""

    def one_by_one():
        out.extend(Piece(i, [t], token_text(tokenizer.token_bytes(t))) for i, t in group)

    for i, t in enumerate(ids):
        if t in specials:
            one_by_one()
            group, buf = [], b""
            out.append(Piece(i, [t], token_display(tokenizer, t)))
            continue
        b = tokenizer.token_bytes(t)
        if not group and _decodes(b):
            out.append(Piece(i, [t], token_text(b)))
            continue
        group.append((i, t))
        buf += b
        if _decodes(buf):
            out.append(Piece(group[0][0], [x for _, x in group], show_whitespace(buf.decode("utf-8"))))
            group, buf = [], b""
        elif len(group) >= MAX_GROUP or not _may_decode(buf):
            one_by_one()
            group, buf = [], b""
    one_by_one()  # the text ends inside a character
    return out


# -----------------------------------------------------------------------------
# HTML


# the views' css_template (Gradio scopes it to each component)
STYLE = """
.tv{font-family:var(--font-mono,monospace);font-size:14px;line-height:1.9;white-space:pre-wrap;
    word-break:break-word;max-height:60vh;overflow-y:auto;padding:6px 2px}
.tv .t{color:#111;border-radius:3px;padding:1px 0;box-shadow:inset -1px 0 0 rgba(0,0,0,.3);cursor:pointer}
.tv .t:hover{outline:2px solid #6b7280}
.tv .t.chosen{outline:3px solid var(--body-text-color,#111);outline-offset:1px}
.tv .ws{opacity:.4}
.tv.ids{line-height:2.2}
.tv.ids .t{margin-right:4px}
.tv sub{font-size:10px;opacity:.75;margin-left:2px;vertical-align:baseline}
.cut{display:inline-block;width:2px;height:1.3em;vertical-align:middle;background:var(--body-text-color,#111);
    margin:0 3px}
.legend{font-size:12px;display:flex;flex-wrap:wrap;gap:4px 14px;align-items:center;margin-bottom:4px}
.legend .scale{display:inline-block;width:120px;height:10px;border-radius:2px;vertical-align:middle;margin:0 4px}
.alts{border-collapse:collapse;width:100%;font-size:13px}
.alts td,.alts th{padding:3px 6px;text-align:left;border-bottom:1px solid var(--border-color-primary,#ddd)}
.alts .bar{display:inline-block;height:10px;background:#2563eb;border-radius:2px;vertical-align:middle;
    margin-right:6px;min-width:1px}
.alts tr.chosen td{font-weight:bold}
"""

# the page's side: a click on a token (or on a part of a character drawn from several) -> a select event with
# the token's index; the token is outlined, and the details (DETAILS: an element id) are brought into view when
# they are off the screen (under the view, on a phone)
VIEW_JS = """
element.addEventListener('click', (e) => {
    const t = e.target.closest('[data-i]');
    if (!t) return;
    let i = +t.dataset.i;
    const n = +(t.dataset.n || 1);
    if (n > 1) {
        const r = t.getBoundingClientRect();
        i += Math.min(n - 1, Math.max(0, Math.floor((e.clientX - r.left) / r.width * n)));
    }
    element.querySelectorAll('.chosen').forEach((x) => x.classList.remove('chosen'));
    (t.closest('.t') || t).classList.add('chosen');
    trigger('select', {index: i, value: t.textContent});
    const d = document.getElementById('DETAILS');
    if (d) {
        const r = d.getBoundingClientRect();
        if (r.top > innerHeight - 80 || r.bottom < 0) d.scrollIntoView({block: 'nearest', behavior: 'smooth'});
    }
});
"""


def view_js(details: str) -> str:
    """VIEW_JS for a view whose details are in the element with id `details`."""
    return VIEW_JS.replace("DETAILS", details)


def _shown(text: str) -> str:
    """A piece's text as HTML: glyphs dimmed, a newline's break outside the token (one token stays one box)."""
    out = []
    for ch in text.replace("\n", ""):
        e = html.escape(ch)
        out.append(f'<span class="ws">{e}</span><wbr>' if ch in "·→↵␍" else e)  # <wbr>: lines break there
    return "".join(out)


def _bytes_hex(b: bytes) -> str:
    return " ".join(f"{x:02X}" for x in b)


def _title(tokenizer, piece: Piece, steps: Sequence[Step | None] | None, n_prompt: int | None) -> str:
    """The hover text: each token of the piece, its id and (where known) its probability."""
    lines = []
    if len(piece.ids) > 1:
        b = b"".join(tokenizer.token_bytes(t) for t in piece.ids)
        lines.append(f"{piece.text!r} is {len(piece.ids)} byte tokens: bytes {_bytes_hex(b)}")
    for k, t in enumerate(piece.ids):
        i = piece.first + k
        line = f"{token_display(tokenizer, t)!r} · id {t}"
        if len(piece.ids) > 1:
            line += f" · bytes {_bytes_hex(tokenizer.token_bytes(t))}"
        if steps is not None:
            line += f" · probability {prob_label(steps[i].prob if steps[i] is not None else None)}"
        if n_prompt is not None:
            line += f" · token {i} ({'prompt' if i < n_prompt else 'generated'})"
        lines.append(line)
    return "\n".join(lines)


def _background(colors: list[str]) -> str:
    """One colour, or bands of the colours of the tokens a character is drawn from."""
    if len(colors) == 1:
        return colors[0]
    w = 100 / len(colors)
    stops = ",".join(f"{c} {k * w:.1f}% {(k + 1) * w:.1f}%" for k, c in enumerate(colors))
    return f"linear-gradient(90deg,{stops})"


def empty_html(text: str) -> str:
    """A token view with nothing to show: a line saying what would fill it."""
    return f'<div class="tv"><i>{html.escape(text)}</i></div>'


def legend_html(color_by: str, prompt: bool = True) -> str:
    low, mid = prob_color(PROB_LOW), prob_color(0.01)
    if color_by == "probability":
        scale = (f'<span>how likely the model found each token: unlikely <span class="scale" style="background:'
                 f'linear-gradient(90deg,{low},{mid},{prob_color(1.0)})"></span> likely '
                 f'(0.01% · 1% · 100%, log scale); grey: no context yet</span>')
    else:
        scale = "<span>one colour per token id</span>"
    marks = '<span><span class="ws">·</span> a space</span><span><span class="ws">↵</span> a line break</span>'
    cut = '<span><span class="cut"></span> where the generated text starts</span>' if prompt else ""
    return f'<div class="legend">{scale}{marks}{cut}<span>hover a token for its details</span></div>'


def tokens_html(tokenizer, ids: Sequence[int], steps: Sequence[Step | None] | None = None,
                color_by: str = "probability", n_prompt: int | None = None, show_ids: bool = False,
                empty: str = "No tokens.") -> str:
    """The tokens as running text. color_by "probability" (needs steps, None where unknown) or "id"; n_prompt
    marks where generation starts (the Tokens tab); show_ids puts each token's id after it (the Tokenizer tab)."""
    if color_by not in ("probability", "id"):
        raise ValueError(f"color_by must be 'probability' or 'id', got {color_by!r}")
    if steps is not None and len(steps) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(steps)} steps")
    legend = legend_html(color_by, n_prompt is not None and n_prompt < len(ids)) if not show_ids else ""
    if not ids:
        return empty_html(empty)
    parts = []
    for piece in pieces(tokenizer, ids):
        idx = range(piece.first, piece.first + len(piece.ids))
        if n_prompt is not None and 0 < n_prompt < len(ids) and n_prompt in idx:
            parts.append('<span class="cut" title="the generated text starts here"></span>')
        colors = [id_color(t) if color_by == "id" else prob_color(steps[i].prob if steps and steps[i] else None)
                  for i, t in zip(idx, piece.ids)]
        title = html.escape(_title(tokenizer, piece, steps, n_prompt), quote=True)
        sub = ""
        if show_ids:
            sub = "<sub>" + " ".join(f'<b data-i="{i}">{t}</b>' for i, t in zip(idx, piece.ids)) + "</sub>"
        n = f' data-n="{len(piece.ids)}"' if len(piece.ids) > 1 else ""
        parts.append(f'<span class="t" data-i="{piece.first}"{n} title="{title}" '
                     f'style="background:{_background(colors)}">{_shown(piece.text)}{sub}</span>')
        parts.append("\n" * piece.text.count("\n"))
    return f'{legend}<div class="tv{" ids" if show_ids else ""}">{"".join(parts)}</div>'


def alternatives_html(tokenizer, step: Step, chosen: int) -> str:
    """The model's top alternatives at one step, each with a bar in proportion to its probability (the likeliest
    BAR_PX long); the token that was there is marked, and added at the end when it was not among them."""
    rows = list(enumerate(step.alternatives, 1))
    if chosen not in [t for t, _ in step.alternatives]:
        rows.append(("…", (chosen, step.prob)))
    body = []
    top = max(p for _, (_, p) in rows) or 1.0  # bars in proportion, the likeliest one full length
    for rank, (t, p) in rows:
        mark = " ◀ this token" if t == chosen else ""
        body.append(f'<tr class="{"chosen" if t == chosen else ""}"><td>{rank}</td>'
                    f"<td><code>{html.escape(token_display(tokenizer, t))}</code>{mark}</td><td>{t}</td>"
                    f'<td><span class="bar" style="width:{BAR_PX * p / top:.1f}px"></span>{p:.2%}</td></tr>')
    return (f'<table class="alts"><tr><th>#</th><th>token</th><th>id</th>'
            f'<th>probability</th></tr>{"".join(body)}</table>')
