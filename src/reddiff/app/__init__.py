"""``reddiff app``: restore images in the browser. A small page of our own (``static/``) served by Starlette on
uvicorn (the ``app`` extra), driving the library's one experiment module. See :mod:`reddiff.app.server`."""

from __future__ import annotations

__all__ = ["Limits", "create_app"]


def __getattr__(name: str):  # noqa: ANN202 - the server imports starlette, an optional extra
    if name in __all__:
        from . import server

        return getattr(server, name)
    raise AttributeError(name)
