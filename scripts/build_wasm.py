"""Assemble charlstm/web/step.wat into step.wasm, which the exported page embeds.

Run it after changing step.wat (``python3 scripts/build_wasm.py``); ``--check`` exits 1 if the
shipped step.wasm is not what the source assembles to (the test suite checks the same). Needs
wasmtime (the test extra), the Bytecode Alliance's runtime, for its WebAssembly text assembler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

WEB = Path(__file__).resolve().parent.parent / "charlstm" / "web"


def assemble() -> bytes:
    import wasmtime

    return wasmtime.wat2wasm((WEB / "step.wat").read_text("utf-8"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that step.wasm is built from step.wat")
    built, shipped = assemble(), WEB / "step.wasm"
    if parser.parse_args().check:
        same = shipped.exists() and shipped.read_bytes() == built
        print("step.wasm is built from step.wat" if same else "step.wasm is stale: run scripts/build_wasm.py")
        return 0 if same else 1
    shipped.write_bytes(built)
    print(f"wrote {shipped} ({len(built):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
