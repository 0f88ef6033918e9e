"""``charlstm serve``: a trained model behind an OpenAI-compatible HTTP API. Declared as in
``models.py``: its options come from ``ServeConfig``, one library call serves."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from charlstm.cli import render
from charlstm.cli.app import CheckpointArg, _Command, app, err
from charlstm.cli.options import declares, with_default
from charlstm.config import ServeConfig
from charlstm.options import declared
from charlstm.training import words


@app.command(cls=_Command)
@declares(with_default(d) for d in declared(ServeConfig))
def serve(checkpoint: CheckpointArg, **options: Any) -> None:
    """Serve a model over OpenAI's completions API, with a playground page at / (needs the serve extra)."""
    from charlstm import api

    def started(url: str, card: dict[str, Any]) -> None:
        waiting.stop()
        loss = f", val loss {words.loss(card['val_loss'])}" if card["val_loss"] is not None else ""
        key = "API key required" if card["key_required"] else "no API key"
        err.print(
            f"serving [bold]{card['id']}[/bold] ({card['corpus']}, {card['cell']} {card['layers']}x{card['hidden']},"
            f" {card['params']:,} parameters{loss}) at [bold]{url}[/bold]; {key}; playground at {url}/",
            soft_wrap=True,
        )
        if not card["key_required"] and not loopback(url):
            err.print(
                f"[yellow]warning:[/yellow] listening on {options['host']} without an API key: anyone who can reach"
                " this machine can use the model; pass --api-key or set CHARLSTM_API_KEY",
                soft_wrap=True,
            )

    api.check_serve_extra()
    ServeConfig(**options)  # a bad value is said before the model loads
    with render.Waiting(err, "loading the model and its sampling kernels") as waiting:
        waiting.start()
        api.serve(checkpoint, on_start=started, **options)


def loopback(url: str) -> bool:
    """Whether the server at ``url`` reaches only this machine. Its host is the address it bound, an
    IP (binding resolved a name such as localhost, and one that does not resolve cannot be bound):
    127.0.0.0/8, ::1, and 127.x written as IPv6 are loopback; 0.0.0.0 and :: are every interface."""
    try:
        address = ipaddress.ip_address(urlsplit(url).hostname or "")
    except ValueError:  # not an address: not known to be loopback
        return False
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback
