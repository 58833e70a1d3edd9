"""``reddiff app``: serve the browser page (the ``app`` extra: starlette, uvicorn, python-multipart)."""

from __future__ import annotations

import argparse

from ..errors import ReddiffError
from .common import NONNEG_INT, POS_INT, add_prior_args, device_from, load_cli_prior, number, say

NAME = "app"
RANK = 7
HELP = "restore images in the browser: draw a mask, pick a task, watch the estimate evolve"
DESCRIPTION = ("Serve a page on http://HOST:PORT (127.0.0.1 by default: only this machine can reach it) to upload "
               "an image or pick a sample, choose a task, noise and solver (RED-diff starts from the prior's preset), "
               "paint the region to fill for inpainting, run, watch the estimate, the loss and the PSNR evolve, "
               "cancel, and download the estimate and its run.json. One solve at a time with a bounded queue; every "
               "browser session sees only its own work; nothing is written outside a temporary folder removed when "
               "the server stops. Needs `pip install 'reddiff[app]'`.")
INTERRUPTED = "the server stopped; its temporary files were removed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 serves every network the machine is on (default: %(default)s)")
    p.add_argument("--port", type=NONNEG_INT, default=7860, help="port (0: any free one) (default: %(default)s)")
    p.add_argument("--max-size", type=POS_INT, default=256,
                   help="longest image side solved; larger uploads are refused unless the page asks to downscale "
                   "(default: %(default)s)")
    p.add_argument("--max-upload-mb", type=number(float, minimum=0.001, what="--max-upload-mb"), default=8.0,
                   help="largest upload in MB (default: %(default)s)")
    p.add_argument("--queue", type=POS_INT, default=4, help="jobs that may wait behind the running one "
                   "(default: %(default)s)")
    p.add_argument("--max-steps", type=POS_INT, default=1000, help="most solver steps a job may ask for "
                   "(default: %(default)s)")
    add_prior_args(p)
    p.add_argument("--no-progress", action="store_true", help="hide the prior's download progress")


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..app.server import Limits, create_app
    except ImportError as exc:
        raise ReddiffError(f"reddiff app needs the app extra ({exc.name} is missing): pip install 'reddiff[app]'"
                           ) from None
    device = device_from(args.device)
    prior = load_cli_prior(args, device)
    limits = Limits(max_side=args.max_size, max_upload_mb=args.max_upload_mb, queue=args.queue,
                    max_steps=args.max_steps)
    app = create_app(prior, device, limits)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    say(f"reddiff app: serving on http://{args.host}:{args.port} (prior {args.prior}); Ctrl-C stops it")
    try:
        server.run()
    except OSError as exc:
        raise ReddiffError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0
