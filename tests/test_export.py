"""``charlstm export``: the format by the target's suffix or --format, and its errors (one line, exit
2); the page's WebAssembly is what its committed source assembles to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from charlstm.files import UMASK
from tests.test_cli import assert_user_error, invoke

ROOT = Path(__file__).resolve().parent.parent


def test_an_unknown_suffix_lists_the_formats(shared_run, tmp_path):
    for target in ("model.bin", "model", "model.HTML"):
        result = invoke("export", shared_run, tmp_path / target)
        assert_user_error(result, ".safetensors, .onnx, .html", "--format")
    assert not list(tmp_path.iterdir())
    assert_user_error(invoke("export", shared_run, tmp_path / "m.html", "--format", "pdf"), "safetensors, onnx, html")
    assert_user_error(invoke("export", shared_run, tmp_path / "m.html", "--precision", "fp8"), "fp32 or bf16")
    assert_user_error(invoke("export", shared_run, tmp_path / "m.onnx", "--precision", "bf16"), ".html pages")
    refused = invoke("export", shared_run, tmp_path / "m.onnx", "--format", "html")
    assert_user_error(refused, "ends in .onnx", "name it .html")
    assert not list(tmp_path.iterdir())


def test_format_names_the_format_whatever_the_suffix(shared_run, tmp_path):
    result = invoke("export", shared_run, tmp_path / "page.htm", "--format", "html", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    page = tmp_path / "page.htm"
    assert "bf16 weights" in result.stderr and f"{page.stat().st_size:,} bytes" in result.stderr
    assert page.read_text("utf-8").startswith("<!doctype html>")
    assert_user_error(invoke("export", shared_run, page, "--format", "html"), "already exists", "--overwrite")


def test_every_format_is_written_for_others_to_read(shared_run, tmp_path):
    for name in ("m.safetensors", "m.onnx", "m.html"):  # safetensors replaces the file it is given: mode set again
        assert invoke("export", shared_run, tmp_path / name).exit_code == 0
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~UMASK, name


def test_without_the_onnx_extra_export_says_how_to_install_it(shared_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError, as where it is not installed
    monkeypatch.delitem(sys.modules, "charlstm.export.onnx", raising=False)
    assert_user_error(invoke("export", shared_run, tmp_path / "m.onnx"), "pip install 'charlstm[onnx]'")
    assert not (tmp_path / "m.onnx").exists()


def test_the_shipped_webassembly_is_built_from_its_source():
    script = ROOT / "scripts" / "build_wasm.py"
    check = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_page_escapes_the_models_name(run_copy, tmp_path):
    named = run_copy.rename(run_copy.parent / 'a<img src=x onerror=alert(1)>&"b')
    page = tmp_path / "page.html"
    assert invoke("export", named, page).exit_code == 0
    html = page.read_text("utf-8")
    assert "<img" not in html and "<h1>charlstm: a&lt;img src=x onerror=alert(1)&gt;&amp;&quot;b</h1>" in html
