"""The formats a model leaves in, chosen by the target's suffix (or ``--format``): ``.safetensors``
(the weights, with configs and vocabulary as metadata: ``store/checkpoint.py`` owns that format,
which ``sample``, ``eval`` and ``info`` read back), ``.onnx`` (a stateful step graph, checked
against torch with onnxruntime as it is written: ``onnx.py``) and ``.html`` (one page that
generates offline in a browser: ``page.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charlstm.choices import ExportFormat, Precision
from charlstm.errors import UserError
from charlstm.files import atomic_path, output_file
from charlstm.store.checkpoint import Checkpoint, export_safetensors

ONNX_INSTALL = "pip install 'charlstm[onnx]'"


@dataclass(frozen=True)
class Exported:
    """What ``export`` wrote; the ONNX fields are None for the other formats."""

    path: Path
    format: ExportFormat
    size: int  # bytes
    precision: Precision  # of the weights written
    opset: int | None = None
    steps_checked: int | None = None  # onnxruntime against torch, with the state carried
    max_logit_diff: float | None = None


def format_of(out: str | Path, given: str | None = None) -> ExportFormat:
    """The format ``given`` (``--format``), else the one ``out``'s suffix names; a suffix that names
    another format than ``given`` is refused (a reader would take the file for what it is not)."""
    names = ", ".join(f".{f}" for f in ExportFormat.values())
    suffix = Path(out).suffix.lstrip(".")
    if given is not None:
        if given not in ExportFormat.values():
            raise UserError(f"--format {given!r} is not a format; expected one of {', '.join(ExportFormat.values())}")
        if suffix in ExportFormat.values() and suffix != given:
            raise UserError(f"export target {str(out)!r} ends in .{suffix} but --format is {given}; name it .{given}")
        return ExportFormat(given)
    if suffix not in ExportFormat.values():
        shown = f"'.{suffix}'" if suffix else "no suffix"
        raise UserError(f"export target {str(out)!r} has {shown}; expected a file ending in {names} (or --format)")
    return ExportFormat(suffix)


def export(
    checkpoint: Checkpoint,
    out: str | Path,
    name: str,
    format: str | None = None,  # noqa: A002 - the option's name
    precision: str = Precision.FP32.value,
    overwrite: bool = False,
) -> Exported:
    """Write ``checkpoint``'s model (called ``name`` on a page) to ``out`` in ``format`` (by default,
    the one its suffix names), its weights in ``precision`` (fp32; bf16 halves a page's size); an
    existing ``out`` is replaced only with ``overwrite``."""
    kind = format_of(out, format)
    if precision not in (Precision.FP32.value, Precision.BF16.value):
        raise UserError(f"--precision {precision!r} is not a weights precision; expected fp32 or bf16")
    if precision == Precision.BF16.value and kind != ExportFormat.HTML:
        raise UserError(f"--precision bf16 is for .html pages; the {kind} export holds the fp32 weights")
    if kind == ExportFormat.SAFETENSORS:
        path = export_safetensors(checkpoint, out, overwrite)  # it keeps .safetensors: readers know it by that
        return Exported(path, kind, path.stat().st_size, Precision.FP32)
    if kind == ExportFormat.ONNX:
        try:
            from charlstm.export.onnx import write_onnx
        except ImportError as e:
            raise UserError(f"the ONNX export needs the onnx extra ({e.name} is missing): {ONNX_INSTALL}") from None
        path = output_file(out, overwrite, "export target", "the path of an .onnx file")
        with atomic_path(path) as tmp:
            check = write_onnx(checkpoint, tmp)
        return Exported(path, kind, path.stat().st_size, Precision.FP32, check.opset, check.steps, check.max_logit_diff)
    from charlstm.export.page import page_html

    path = output_file(out, overwrite, "export target", "the path of an .html file")
    html = page_html(checkpoint, Precision(precision), name)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return Exported(path, kind, path.stat().st_size, Precision(precision))
