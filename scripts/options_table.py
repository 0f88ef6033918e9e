"""Write docs/options.md, the reference of every command's options, from their declarations (the
config fields' metadata), so that the docs cannot drift from the code.

    python scripts/options_table.py           # write docs/options.md
    python scripts/options_table.py --check   # exit 1 if docs/options.md differs (CI runs this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charlstm.cli.options import shown_default
from charlstm.config import EvalConfig, ExplainConfig, SampleConfig, ServeConfig, train_options
from charlstm.options import Declared, declared

OUT = Path(__file__).resolve().parent.parent / "docs" / "options.md"
HEADER = """# Options

Every option of the commands that take many, generated from their declarations in
`charlstm/config/` by `python scripts/options_table.py` (CI checks that this page is current).
The same names are the keywords of the Python API (`charlstm.train(max_time=120, hidden=256)`)
and the keys of a settings file (`max-time = 120`).
"""


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(options: tuple[Declared, ...], training: bool) -> list[str]:
    if training:
        head = ["| option | panel | default | resume may change it | a preset sizes it | what it does |"]
        head.append("|---|---|---|---|---|---|")
    else:
        head = ["| option | default | what it does |", "|---|---|---|"]
    rows = []
    for d in options:
        shown = shown_default(d) if d.default != "" else "empty"
        default = f"`{shown}`" if shown is not None else ("required" if d.default is not None else "none")
        if training:
            panel = d.option.panel.value if d.option.panel else ""
            marks = ["yes" if d.option.resumable else "", "yes" if d.option.sized else ""]
            rows.append(f"| `{d.flag}` | {panel} | {cell(default)} | {' | '.join(marks)} | {cell(d.help)} |")
        else:
            rows.append(f"| `{d.flag}` | {cell(default)} | {cell(d.help)} |")
    return head + rows


def page() -> str:
    parts = [HEADER]
    sections = [
        ("charlstm train", train_options(), True),
        ("charlstm sample", declared(SampleConfig), False),
        ("charlstm eval", declared(EvalConfig), False),
        ("charlstm explain", declared(ExplainConfig), False),
        ("charlstm serve", declared(ServeConfig), False),
    ]
    for title, options, training in sections:
        parts.append(f"## `{title}`\n")
        if training:
            parts.append(
                "Besides these, `--config FILE` reads a settings file first (options given on the "
                "command line win over it). A default given as *by --preset* is what the chosen "
                "preset sets; see [sizing](sizing.md).\n"
            )
        parts.append("\n".join(table(options, training)) + "\n")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    text = page()
    if args.check:
        if not OUT.is_file() or OUT.read_text(encoding="utf-8") != text:
            sys.exit(f"{OUT} is out of date: run python scripts/options_table.py")
        return
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
