"""The page of ``charlstm explain``: one self-contained HTML file (no network, no external script
or font), in the manner of Karpathy's pictures of LSTM cells.

Each block is the text once more, one ``<span>`` per character, its background the value of one
cell, in LEVELS steps from blue (-1) through white (0) to red (+1), set by a class so that the page
needs no script to show colours. What belongs to a character whatever the block (the likeliest
next tokens and the loss on the actual next character) is kept once, in compact arrays of one
script, and one delegated listener shows it on hover; a span's position among its siblings is its
character's index. Pure: it knows nothing of models.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass

import numpy as np

LEVELS = 41  # colour steps over [-1, 1]: 0.05 apart
NEGATIVE, POSITIVE = (33, 102, 172), (178, 24, 43)  # the ends of the scale, blue and red (ColorBrewer RdBu)


@dataclass
class Block:
    """One cell over the text."""

    name: str  # "cell 37"
    follows: list[tuple[str, float]]  # (feature, Pearson r): those it was found for, else the closest one
    values: np.ndarray  # (N,) in [-1, 1]
    found: bool = True  # whether the search found it for those features (else chosen by hand or for its spread)


@dataclass
class PageData:
    title: str
    text: str  # N characters
    blocks: list[Block]
    labels: list[str]  # how each token id shows (V,)
    top_ids: np.ndarray  # (N, TOP) likeliest next tokens
    top_probs: np.ndarray  # (N, TOP) their probabilities
    next_loss: np.ndarray  # (N,) nats on the actual next character, nan after the last
    features: list[tuple[str, str | None, float | None]]  # (feature, cell name, r); None where absent


def build(data: PageData) -> str:
    """The whole page as one string."""
    shown = [_shown(c) for c in data.text]  # each character as the page writes it, escaped
    blocks = "\n".join(_block(b, shown) for b in data.blocks)
    return _TEMPLATE.format(
        title=html.escape(data.title),
        style=_STYLE + _level_rules(),
        features=_feature_table(data.features),
        scale="".join(f"<span class=q{k}></span>" for k in range(LEVELS)),
        blocks=blocks,
        data=_script_data(data),
        script=_SCRIPT,
    )


def levels(values: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] (N,) -> colour classes 0..LEVELS-1 (N,), LEVELS // 2 for 0."""
    return np.clip(np.rint((values + 1) / 2 * (LEVELS - 1)), 0, LEVELS - 1).astype(np.int64)


def _shown(c: str) -> str:
    """A newline shows as a mark and then breaks the line; other control characters as their
    Unicode pictures (the HTML parser would turn a carriage return into a line break)."""
    if c == "\n":
        return "\u21b5\n"
    if c != "\t" and (ord(c) < 0x20 or ord(c) == 0x7F):
        return chr(0x2400 + ord(c)) if ord(c) < 0x20 else "\u2421"
    return html.escape(c, quote=False)


def _block(block: Block, shown: list[str]) -> str:
    follows = ", ".join(f"{html.escape(f)} (r = {r:+.2f})" for f, r in block.follows)
    spans = "".join(f"<span class=q{k}>{c}</span>" for k, c in zip(levels(block.values), shown, strict=True))
    name = html.escape(block.name)
    heading = f"{name}: {follows}" if block.found else f"{name} (the feature it follows best: {follows})"
    return f'<section><h2>{heading}</h2><div class=text data-cell="{name}">{spans}</div></section>'


def _feature_table(features: list[tuple[str, str | None, float | None]]) -> str:
    rows = []
    for feature, cell, r in features:
        found = f"<td>{html.escape(cell)}</td><td>{r:+.2f}</td>" if cell is not None and r is not None else ""
        rows.append(f"<tr><td>{html.escape(feature)}</td>{found or '<td colspan=2>not in this text</td>'}</tr>")
    return "<table><tr><th>feature</th><th>cell</th><th>r</th></tr>" + "".join(rows) + "</table>"


def _level_rules() -> str:
    """One CSS rule per colour class: white mixed with the end colour by |value|."""
    rules = []
    for k in range(LEVELS):
        v = 2 * k / (LEVELS - 1) - 1
        end = POSITIVE if v > 0 else NEGATIVE
        rgb = ",".join(str(round(255 + (e - 255) * abs(v))) for e in end)
        ink = ";color:#fff" if abs(v) > 0.6 else ""
        rules.append(f".q{k}{{background:rgb({rgb}){ink}}}")
    return "\n".join(rules)


def _script_data(data: PageData) -> str:
    """Per-character data once, as flat integer arrays: top ids (N*TOP), their probabilities in
    thousandths (N*TOP), the next character's loss in thousandths of a nat (N, -1 for none)."""
    loss = np.where(np.isnan(data.next_loss), -1, np.rint(np.nan_to_num(data.next_loss) * 1000)).astype(np.int64)
    payload = {
        "labels": data.labels,
        "top": data.top_ids.astype(np.int64).ravel().tolist(),
        "prob": np.rint(data.top_probs * 1000).astype(np.int64).ravel().tolist(),
        "loss": loss.tolist(),
        "k": data.top_ids.shape[1],
        "levels": LEVELS,
    }
    # "<" escaped, so that no "</script>" or "<!--" inside the data can end the script
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=True).replace("<", "\\u003c")


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:72em}
h1{font-size:1.2em}h2{font-size:1em;margin:1.4em 0 .3em}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.1em .8em;text-align:left}
th{border-bottom:1px solid #aaa}
.text{font:13px/1.55 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
word-break:break-all;border:1px solid #ddd;padding:.5em;max-height:32em;overflow-y:auto;
content-visibility:auto;contain-intrinsic-size:auto 32em}  /* off-screen blocks skip layout */
.scale span{display:inline-block;width:10px;height:14px;vertical-align:middle;border:solid #bbb;border-width:1px 0}
#tip{position:fixed;display:none;background:#fff;color:#222;border:1px solid #888;padding:.4em .6em;
font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;pointer-events:none;box-shadow:2px 2px 6px #0003;white-space:pre}
"""

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style></head>
<body>
<h1>What the cells follow: {title}</h1>
<p>Each block is the text coloured by one cell's value after reading each character. Hover over a
character to see the model's likeliest next characters and its loss on the actual next one.</p>
{features}
<p class=scale>-1 {scale} +1</p>
{blocks}
<div id=tip></div>
<script>const D={data};</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = """
(function () {
  var tip = document.getElementById("tip");
  function esc(s) { return s.replace(/[&<>]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;"}[c]; }); }
  function label(span) {
    var c = span ? span.textContent.replace("\\n", "") : "";
    return c === " " ? "\u2423" : c;
  }
  function describe(span, i) {
    var level = parseInt(span.className.slice(1), 10), value = 2 * level / (D.levels - 1) - 1;
    var lines = ["'" + label(span) + "'  character " + i, span.parentNode.dataset.cell + ": \u2248 " +
                 (value >= 0 ? "+" : "") + value.toFixed(2), "likeliest next:"];
    for (var j = 0; j < D.k; j++) {
      var at = i * D.k + j;
      lines.push("  " + D.labels[D.top[at]] + "  " + (D.prob[at] / 10).toFixed(1) + "%");
    }
    var loss = D.loss[i];
    if (loss >= 0) {
      lines.push("actual next '" + label(span.nextElementSibling) + "': loss " + (loss / 1000).toFixed(2) +
                 " nats (p = " + (100 * Math.exp(-loss / 1000)).toFixed(1) + "%)");
    }
    return esc(lines.join("\\n"));
  }
  document.addEventListener("mouseover", function (e) {
    var span = e.target, box = span.parentNode;
    if (span.tagName !== "SPAN" || !box.classList || !box.classList.contains("text")) {
      tip.style.display = "none";
      return;
    }
    tip.innerHTML = describe(span, Array.prototype.indexOf.call(box.children, span));
    tip.style.display = "block";
    var x = Math.min(e.clientX + 14, window.innerWidth - tip.offsetWidth - 4);
    var y = e.clientY + 18 + tip.offsetHeight > window.innerHeight ? e.clientY - tip.offsetHeight - 8 : e.clientY + 18;
    tip.style.left = Math.max(x, 0) + "px"; tip.style.top = Math.max(y, 0) + "px";
  });
})();
"""
