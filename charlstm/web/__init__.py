"""The page's files, one copy shared by the server's playground and the exported one-file page:
``page.html`` (markup and style), ``page.js`` (the controls and the text painted as it streams in),
and the source of the text, ``playground.js`` (the server's API) or ``local.js`` (the model itself,
stepped in the browser by ``step.wasm``, assembled from ``step.wat``). :func:`page` puts one
together; everything else here is package data."""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any


def read(name: str) -> str:
    return resources.files("charlstm.web").joinpath(name).read_text("utf-8")


def read_bytes(name: str) -> bytes:
    return resources.files("charlstm.web").joinpath(name).read_bytes()


def script_json(value: Any) -> str:
    """``value`` as JSON that cannot end the script element it is written into."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page(title: str, model: dict[str, Any], source: str, blocks: dict[str, str] | None = None) -> str:
    """The page titled ``title`` with every script inlined: ``model`` (its facts, as ``MODEL``), the
    source of its text (``source``: a file name here), then ``page.js``. ``blocks`` become inert
    ``<script type="text/plain">`` elements by id (base64 payloads a script reads: no quoting)."""
    scripts = f"const MODEL = {script_json(model)};\n{read(source)}\n{read('page.js')}"
    data = "".join(f'<script type="text/plain" id="{name}">{text}</script>\n' for name, text in (blocks or {}).items())
    text = read("page.html").replace("/*TITLE*/", html.escape(title))
    return text.replace("<script>\n", data + "<script>\n", 1).replace("/*SCRIPTS*/", scripts, 1)
