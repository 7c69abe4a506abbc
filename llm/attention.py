"""The Model tab's views inside the model (no gradio): attention weights and their heatmap, and what each layer
would predict.

    attention_maps(model, ids)          a list over layers of (H, T, T) weights
    attention_html(labels, weights)     one head's (or the mean's) weights as a table of coloured cells
    attention_caption(...)              the line under it
    heads_html(att, chosen)             every head of a layer and their mean as small pictures, side by side
    layer_predictions(model, ids, k)    after each block, the k likeliest next tokens (the "logit lens")
"""

from __future__ import annotations

import base64
import html
import struct
import zlib
from collections.abc import Sequence

import torch


@torch.inference_mode()
def attention_maps(model, ids: Sequence[int]) -> list[torch.Tensor]:
    """Attention weights for one sequence: a list over layers of (H, T, T) float tensors on the CPU."""
    if not 0 < len(ids) <= model.config.block_size:
        raise ValueError(f"need 1 to {model.config.block_size} tokens, got {len(ids)}")
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], dtype=torch.long, device=device)
    _, attn = model.attention_maps(x)
    return [a[0].float().cpu() for a in attn]


MASKED = "repeating-linear-gradient(45deg,#9ca3af66 0 2px,transparent 2px 6px)"


def _rgb(w: float) -> tuple[int, int, int]:
    """White blended towards #2563eb by w in [0, 1], as an opaque colour."""
    w = min(1.0, max(0.0, w))
    return tuple(round(255 - w * (255 - c)) for c in (0x25, 0x63, 0xEB))


def _blue(w: float) -> str:
    return "#" + "".join(f"{c:02x}" for c in _rgb(w))


def attention_html(labels: Sequence[str], weights: Sequence[Sequence[float]], caption: str = "") -> str:
    """A heatmap table: row i = query token i, column j = key token j, from white (none) to blue (all of the
    row's attention). The cells are opaque, so they read the same on a light or a dark page; the cells a query
    cannot see (later keys) are hatched.

    Labels are user text: escaped here."""
    px = max(14, min(28, 720 // max(len(labels), 1)))  # a short text's cells larger: the map fills the width
    cell = f"width:{px}px;height:{px}px;padding:0;border:1px solid #fff;"
    esc = [html.escape(lab) for lab in labels]
    vertical = "writing-mode:vertical-rl;transform:rotate(180deg)"  # key tokens read bottom-up above their column
    head = "".join(f'<th title="{e}" style="{vertical};font-weight:normal;border:0;font-size:11px;padding:2px;'
                   f'white-space:nowrap;max-height:90px;overflow:hidden">{e}</th>' for e in esc)
    body = []
    for i, (e, row) in enumerate(zip(esc, weights)):
        tds = []
        for j, w in enumerate(row):
            w = float(w)
            if j > i:  # causal: a query never sees later keys
                tds.append(f'<td style="{cell}background:{MASKED}"></td>')
            else:
                tds.append(f'<td title="{e} → {esc[j]}: {w:.3f}" style="{cell}background:{_blue(w)}"></td>')
        body.append(f'<tr><th style="text-align:right;font-weight:normal;font-size:11px;padding:0 4px;border:0;'
                    f'white-space:pre">{e}</th>{"".join(tds)}</tr>')
    cap = f"<caption style='caption-side:bottom;font-size:12px'>{html.escape(caption)}</caption>" if caption else ""
    return (f'<div style="overflow:auto"><table style="border-collapse:collapse;font-family:monospace">{cap}'
            f'<tr><th style="border:0"></th>{head}</tr>{"".join(body)}</table></div>')


GREY = (0xD1, 0xD5, 0xDB)  # the small pictures' cells a query cannot see (a hatch does not fit in a pixel)


def png_uri(pixels: Sequence[Sequence[tuple[int, int, int]]]) -> str:
    """Rows of RGB pixels as a PNG data URI (8-bit RGB, no filter): a picture of T x T cells is a few hundred
    bytes, where a table of cells would be thousands of elements."""
    h, w = len(pixels), len(pixels[0])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def heads_html(att: torch.Tensor, chosen: str) -> str:
    """A layer's (H, T, T) weights: each head and their mean as a small picture (white to blue, grey where a
    query cannot see), the chosen one ("mean" or a head's number) outlined. Each carries data-head: a click on
    one picks it (the page's script)."""
    H, T, _ = att.shape
    maps = [(str(h), att[h]) for h in range(H)] + [("mean", att.mean(0))]
    size = max(96, min(160, 5 * T))
    out = []
    for name, w in maps:
        rows = w.tolist()
        pixels = [[_rgb(rows[i][j]) if j <= i else GREY for j in range(T)] for i in range(T)]
        ring = "outline:3px solid #2563eb;outline-offset:2px;" if name == chosen else ""
        label = "mean of the heads" if name == "mean" else f"head {name}"
        out.append(f'<figure data-head="{name}" title="{label}: click to see it large" style="margin:0;'
                   f'cursor:pointer;text-align:center"><img src="{png_uri(pixels)}" alt="{label}" width="{size}" '
                   f'height="{size}" style="image-rendering:pixelated;border:1px solid #9ca3af;{ring}">'
                   f'<figcaption style="font-size:12px;margin-top:6px">{label}</figcaption></figure>')
    return f'<div style="display:flex;flex-wrap:wrap;gap:12px;margin-bottom:12px">{"".join(out)}</div>'


# the page's side of heads_html: a click on a small picture -> a select event with its head
HEADS_JS = """
element.addEventListener('click', (e) => {
    const f = e.target.closest('[data-head]');
    if (f) trigger('select', {index: 0, value: f.dataset.head});
});
"""


def attention_caption(layer: int, head: str, shown: int, total: int) -> str:
    which = "mean over heads" if head == "mean" else f"head {head}"
    note = f" (the first {shown} of its {total} tokens)" if total > shown else ""
    return (f"layer {layer}, {which}{note}: row = query token, column = key token it attends to; "
            "white = none, blue = all of the row's attention; hatched = later tokens it cannot see")


@torch.inference_mode()
def layer_predictions(model, ids: Sequence[int], k: int = 3) -> list[list[tuple[int, float]]]:
    """For the token after `ids`: after each block, the k likeliest tokens and their probabilities, from the
    final norm and the output head applied to the residual stream there (the "logit lens"). The last row is the
    model's own prediction; the rows before it show the guess forming layer by layer."""
    if not 0 < len(ids) <= model.config.block_size:
        raise ValueError(f"need 1 to {model.config.block_size} tokens, got {len(ids)}")
    streams: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda module, args, out: streams.append(out)) for block in model.h]
    try:
        model(torch.tensor([list(ids)], dtype=torch.long, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for x in streams:
        last = x.reshape(-1, x.shape[-1])[-1]  # the last position's residual stream, (C,)
        probs = torch.softmax(model.head(last).float(), dim=-1)
        top = probs.topk(min(k, probs.numel()))
        rows.append(list(zip(top.indices.tolist(), top.values.tolist())))
    return rows
