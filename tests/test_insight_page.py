import html.parser
import json
import re

import numpy as np

from charlstm.insight import page

TEXT = 'a<b>&c\r\n</script><!-- "x" \x07\t😀\n'


class Reader(html.parser.HTMLParser):
    """The blocks' characters as the page shows them, the classes of their spans, and the scripts."""

    def __init__(self):
        super().__init__()
        self.blocks: list[list[str]] = []
        self.classes: list[list[str]] = []
        self.scripts: list[str] = []
        self.open: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "text":
            self.blocks.append([])
            self.classes.append([])
        elif tag == "span" and self.blocks and attrs.get("class", "").startswith("q") and self.open is None:
            self.open = "span"
            self.blocks[-1].append("")
            self.classes[-1].append(attrs["class"])
        elif tag == "script":
            self.open = "script"
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag in ("span", "script"):
            self.open = None

    def handle_data(self, data):
        if self.open == "span":
            self.blocks[-1][-1] += data
        elif self.open == "script":
            self.scripts[-1] += data


def sample_page(text: str = TEXT, cells: int = 2) -> tuple[page.PageData, str]:
    n = len(text)
    values = np.linspace(-1, 1, n)
    blocks = [page.Block(f"cell {k}", [("after a newline", 0.5 - k)], values * (-1) ** k) for k in range(cells)]
    labels = ["<", "&", "a", "\u21b5"]
    top_ids = np.tile(np.arange(4)[None, :3], (n, 1))
    top_probs = np.tile(np.array([[0.5, 0.25, 0.125]]), (n, 1))
    loss = np.append(np.linspace(0.5, 3, n - 1), np.nan)
    features = [("after a newline", "cell 0", 0.5), ("inside quotes", None, None)]
    data = page.PageData("a <title> & more", text, blocks, labels, top_ids, top_probs, loss, features)
    return data, page.build(data)


def test_one_span_per_character_per_block_with_the_text_escaped():
    _, built = sample_page()
    reader = Reader()
    reader.feed(built)
    assert len(reader.blocks) == 2
    for shown in reader.blocks:
        assert len(shown) == len(TEXT)
        assert "".join(shown) == 'a<b>&c\u240d\u21b5\n</script><!-- "x" \u2407\t😀\u21b5\n'
    assert reader.classes[0][0] == "q0" and reader.classes[0][-1] == f"q{page.LEVELS - 1}"
    assert reader.classes[1][0] == f"q{page.LEVELS - 1}"  # the second block's values run the other way
    assert "<title>a &lt;title&gt; &amp; more</title>" in built


def test_per_character_data_is_kept_once():
    data, built = sample_page(cells=3)
    reader = Reader()
    reader.feed(built)
    assert len(reader.scripts) == 2
    assert reader.scripts[0].startswith("const D=") and "<" not in reader.scripts[0]
    payload = json.loads(reader.scripts[0][len("const D=") : -1])
    n = len(TEXT)
    assert payload["labels"] == data.labels
    assert len(payload["top"]) == len(payload["prob"]) == 3 * n and payload["k"] == 3
    assert payload["prob"][:3] == [500, 250, 125]
    assert payload["loss"][0] == 500 and payload["loss"][-1] == -1
    assert built.count("data-cell=") == 3  # one attribute per block, none per character


def test_levels_cover_the_range_symmetrically():
    assert page.levels(np.array([-1.0, -0.026, 0.0, 0.024, 1.0, 7.0])).tolist() == [0, 19, 20, 20, 40, 40]


def test_page_is_self_contained():
    _, built = sample_page()
    assert not re.search(r"<(link|img|iframe)\b|src=|https?://|@import|url\(", built)


def test_a_cell_not_found_for_a_feature_says_so():
    data, _ = sample_page()
    data.blocks[1].found = False
    built = page.build(data)
    assert "<h2>cell 0: after a newline (r = +0.50)</h2>" in built
    assert "<h2>cell 1 (the feature it follows best: after a newline (r = -0.50))</h2>" in built
