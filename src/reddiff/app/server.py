"""The web app: one solve at a time per worker with a bounded queue, every session seeing only its own work.

Requests (all JSON errors are ``{"error": one line}`` with a 4xx status, shown in the page):

- ``GET /``: the page (sets the session cookie); ``GET /static/...``: its script and style.
- ``GET /api/options``: tasks, solvers with their fields, samples, limits; ``GET /api/preset?task=&sigma_y=``: the
  prior's RED-diff preset for a task.
- ``POST /api/run`` (multipart): ``image`` (a file) or ``sample`` (a name), optional ``mask`` (PNG, white =
  observed) and ``downscale``, ``task``, ``sigma_y`` (0..1 units), ``solver``, ``settings`` (JSON: field -> text),
  ``seed``, ``frames`` (a frame every this many steps; 0: automatic). Returns ``{"job", "position"}``.
- ``GET /api/jobs/ID/events``: server-sent events (``queued``, ``started``, ``measurement``, ``frame``, ``done``,
  ``error``, ``cancelled``); a client that goes away cancels its job and frees its slot.
- ``POST /api/jobs/ID/cancel``; ``GET /api/jobs/ID/files/NAME``: ``estimate.png``, ``measurement.png``, ``grid.png``,
  ``run.json`` (and ``mask.png`` for inpainting).

Uploads are checked (size in bytes, decodable as an image, side limit unless downscaling is asked for) and kept in
memory; results are written by the CLI's own :func:`reddiff.experiment.write_outputs` into a temporary folder per
job, removed when the session's later jobs push it out and, with everything else, when the server stops.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import queue
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ReddiffError

__all__ = ["Limits", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "reddiff_session"
#: The most pixels an upload may have before it is decoded (downscaling happens after decoding).
MAX_PIXELS = 40_000_000
#: Files a finished job offers for download.
FILES = ("estimate.png", "measurement.png", "grid.png", "run.json", "mask.png")


@dataclass(frozen=True)
class Limits:
    """What the server accepts.

    Attributes:
        max_side: the longest image side solved (larger uploads are refused, or downscaled on request).
        max_upload_mb: the largest upload.
        queue: jobs waiting at most (beyond the one running).
        max_steps: the most solver steps a job may ask for.
        jobs_per_session: finished jobs kept per session (older ones and their files are removed).
        jobs_kept: finished jobs kept in all (the oldest go first, whichever session they belong to).
    """

    max_side: int = 256
    max_upload_mb: float = 8.0
    queue: int = 4
    max_steps: int = 1000
    jobs_per_session: int = 3
    jobs_kept: int = 64


@dataclass
class AppJob:
    """One restoration asked for by one session."""

    id: str
    session: str
    request: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    status: str = "queued"
    cancel: threading.Event = field(default_factory=threading.Event)
    folder: Path | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def emit(self, kind: str, **data: Any) -> None:
        with self.lock:
            self.events.append({"type": kind, **data})

    @property
    def finished(self) -> bool:
        return self.status in ("done", "error", "cancelled")


class _Cancelled(Exception):
    """Raised inside the solver's callback when the job was cancelled."""


def _png_data_url(x: torch.Tensor) -> str:
    from PIL import Image

    from ..io import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(x[0] if x.dim() == 4 else x)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def decode_upload(data: bytes, what: str, limits: Limits, downscale: bool, channels: int = 3) -> torch.Tensor:
    """An uploaded image as ``[1, C, H, W]`` in [-1, 1], checked: size in bytes, decodable, side limit.

    Raises:
        ReddiffError: one line naming what was wrong and what is accepted.
    """
    from PIL import Image, UnidentifiedImageError

    from ..io import from_unit

    if len(data) > limits.max_upload_mb * 1e6:
        raise ReddiffError(f"the {what} is {len(data) / 1e6:.1f} MB; the limit is {limits.max_upload_mb:g} MB")
    if not data:
        raise ReddiffError(f"the {what} is empty")
    huge = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:  # refused before decoding: a small file can hold a huge image
                huge = im.size
            else:
                im.load()
                im = im.convert("RGB" if channels == 3 else "L")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise ReddiffError(f"the {what} could not be read as an image; use PNG, JPEG, BMP or TIFF") from None
    if huge is not None:
        raise ReddiffError(f"the {what} is {huge[0]}x{huge[1]}; at most {MAX_PIXELS // 10**6} megapixels are read")
    if max(im.size) > limits.max_side:
        if not downscale:
            raise ReddiffError(f"the {what} is {im.width}x{im.height}; the limit is {limits.max_side} px on the "
                               "longest side (tick 'downscale' to shrink it)")
        scale = limits.max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                       Image.Resampling.BICUBIC if channels == 3 else Image.Resampling.NEAREST)
    import numpy as np

    arr = np.asarray(im, dtype=np.float32) / 255.0
    t = torch.from_numpy(arr).permute(2, 0, 1) if channels == 3 else torch.from_numpy(arr)[None]
    return from_unit(t).unsqueeze(0)


class Engine:
    """The prior, the worker thread and the sessions' jobs."""

    def __init__(self, prior: Any, device: torch.device, limits: Limits) -> None:
        self.prior, self.device, self.limits = prior, device, limits
        self.root = Path(tempfile.mkdtemp(prefix="reddiff-app-"))
        self.jobs: dict[str, AppJob] = {}
        self.sessions: dict[str, OrderedDict[str, AppJob]] = {}
        self.pending: list[AppJob] = []
        self.queue: queue.Queue[AppJob | None] = queue.Queue()
        self.guard = threading.Lock()
        self.worker = threading.Thread(target=self._work, name="reddiff-app-worker", daemon=True)
        self.worker.start()

    # -- queue -------------------------------------------------------------------------------------------------
    def submit(self, job: AppJob) -> int:
        with self.guard:
            if len(self.pending) >= self.limits.queue:
                raise ReddiffError(f"the queue is full ({len(self.pending)} waiting); try again in a moment")
            self.pending.append(job)
            self.jobs[job.id] = job
            mine = self.sessions.setdefault(job.session, OrderedDict())
            mine[job.id] = job
            self._forget_old(mine)
            position = len(self.pending)
        self.queue.put(job)
        return position

    def position(self, job: AppJob) -> int:
        """0 while running, else its place in the queue (1 = next)."""
        with self.guard:
            return self.pending.index(job) + 1 if job in self.pending else 0

    def _forget_old(self, mine: OrderedDict[str, AppJob]) -> None:
        """Drop finished jobs (and their files) beyond the per-session and the overall limits, oldest first."""
        def drop(job: AppJob) -> None:
            self.jobs.pop(job.id, None)
            owner = self.sessions.get(job.session)
            if owner is not None:
                owner.pop(job.id, None)
                if not owner:
                    self.sessions.pop(job.session, None)
            if job.folder is not None:
                shutil.rmtree(job.folder, ignore_errors=True)

        finished = [j for j in mine.values() if j.finished]
        while len(mine) > self.limits.jobs_per_session + 1 and finished:
            drop(finished.pop(0))
        finished = [j for j in self.jobs.values() if j.finished]
        while len(finished) > self.limits.jobs_kept:
            drop(finished.pop(0))

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            with self.guard:
                if job in self.pending:
                    self.pending.remove(job)
            if job.cancel.is_set():
                job.status = "cancelled"
                job.emit("cancelled", message="cancelled before it started")
                continue
            job.status = "running"
            try:
                self._run(job)
            except _Cancelled:
                job.status = "cancelled"
                job.emit("cancelled", message="cancelled")
            except ReddiffError as exc:
                job.status = "error"
                job.emit("error", message=" ".join(str(exc).split()))
            except Exception as exc:  # noqa: BLE001 - any failure is reported in the page, the server goes on
                job.status = "error"
                job.emit("error", message=f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel.set()
        self.queue.put(None)
        self.worker.join(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- one job -----------------------------------------------------------------------------------------------
    def _run(self, job: AppJob) -> None:
        from ..experiment import Job, Seeds, operator_for, solve_jobs, write_outputs
        from ..metrics import psnr
        from ..noise import GaussianNoise

        r = job.request
        x, mask, solver, sigma_y = r["image"], r["mask"], r["solver"], r["sigma_y"]
        noise = GaussianNoise(2.0 * sigma_y)
        seeds = Seeds.from_seed(r["seed"])
        op, gen = operator_for(r["task"], tuple(x.shape[1:]), seeds.operator, mask)
        with torch.no_grad():
            y = noise.sample(op.A(x), gen)
        job.emit("started", steps=solver.steps, label=solver.label, settings=solver.to_dict(),
                 preset=r.get("preset") or None)
        job.emit("measurement", image=_png_data_url(op.y_to_image(y).clamp(-1, 1)),
                 clean=_png_data_url(x.clamp(-1, 1)))
        every = r["frames"] or max(1, solver.steps // 30)
        clean01 = ((x + 1) / 2).double()

        def on_step(info: Any) -> None:
            if job.cancel.is_set():
                raise _Cancelled()
            last = info.step == info.num_steps - 1
            if info.step % every and not last:
                return
            est = info.x.detach().cpu()[:1].clamp(-1, 1)
            value = float(psnr(((est + 1) / 2).double(), clean01)) if est.shape == x.shape else None
            job.emit("frame", step=info.step + 1, num_steps=info.num_steps, t=float(info.t),
                     losses={k: float(v) for k, v in info.losses.items()}, psnr=value, image=_png_data_url(est))

        run = Job("image", op, y, seeds, clean=x, source=Path(r["name"]))
        run.settings = {"input": r["name"], "input_sha256": r["sha256"], "kind": "clean", "task": op.task,
                        "sigma_y": sigma_y, "seed": r["seed"],
                        "solver": solver.to_dict(), "app": True}
        (outcome,) = solve_jobs(solver, self.prior, [run], self.device, noise, callback=on_step)
        job.folder = Path(tempfile.mkdtemp(prefix=f"job-{job.id[:8]}-", dir=self.root))
        record = write_outputs(outcome, job.folder, solver=solver, prior=self.prior, noise=noise,
                               preset=r.get("preset"), base_seed=r["seed"], sigma_y_pixel=sigma_y,
                               device=str(self.device), label=solver.label)
        job.status = "done"
        job.emit("done", psnr=record.get("psnr"), ssim=record.get("ssim"), seconds=record.get("seconds"),
                 network_evals=record.get("network_evals"), estimate=_png_data_url(outcome.estimate.clamp(-1, 1)),
                 files=[f for f in FILES if (job.folder / "image" / f).is_file()], notes=outcome.notes)


# -- the request rules -------------------------------------------------------------------------------------------
def samples() -> dict[str, Any]:
    """Sample pictures offered in the page: the bundled held-out picture, and scikit-image's held-out ones when it is
    installed (none of them was trained on)."""
    from ..cli.demo import demo_image_path

    out: dict[str, Any] = {"astronaut": lambda: demo_image_path().read_bytes()}
    try:
        from skimage import data as skd
    except ImportError:
        return out

    def crop(name: str, box: tuple[int, int, int, int]) -> Any:
        def make() -> bytes:
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(getattr(skd, name)()[box[0]:box[1], box[2]:box[3]]).save(buf, format="PNG")
            return buf.getvalue()

        return make

    out["chelsea"] = crop("chelsea", (20, 276, 100, 356))
    out["coffee"] = crop("coffee", (50, 306, 150, 406))
    return out


def options(engine: Engine) -> dict[str, Any]:
    from ..latent import LatentPrior
    from ..operators import TASKS
    from ..solvers import SOLVERS

    latent = isinstance(engine.prior, LatentPrior)
    solvers = {}
    for name, cls in SOLVERS.items():
        if name == "ddim" or (latent and not cls.latent_capable):
            continue  # DDIM ignores the measurement: nothing to restore with; the others need a pixel prior
        fields = []
        for q in cls.hyperparams():
            default = q.default
            fields.append({"name": q.name, "flag": q.flag, "kind": q.kind, "help": q.help, "accepted": q.accepted(),
                           "default": list(default) if isinstance(default, tuple) else default})
        solvers[name] = {"label": cls.label, "fields": fields}
    return {"tasks": [{"name": k, "doc": v} for k, v in TASKS.items()], "solvers": solvers,
            "samples": list(samples()), "prior": engine.prior.info.get("name"),
            "limits": {"max_side": engine.limits.max_side, "max_upload_mb": engine.limits.max_upload_mb,
                       "queue": engine.limits.queue, "max_steps": engine.limits.max_steps}}


def build_solver(engine: Engine, name: str, task: str, sigma_y: float, settings: dict[str, str]) -> tuple[Any, dict]:
    """The solver as the page asks for it: RED-diff starts from the prior's preset for the task (as the CLI does);
    every field given is parsed by the same declarations the CLI flags come from."""
    from ..params import parse_text
    from ..solvers import SOLVERS
    from ..tools.presets import preset_for_prior

    if name not in SOLVERS or name == "ddim":
        raise ReddiffError(f"unknown solver {name!r}; accepted: {', '.join(n for n in SOLVERS if n != 'ddim')}")
    cls = SOLVERS[name]
    params = {q.name: q for q in cls.hyperparams()}
    preset = preset_for_prior(engine.prior, task, 2.0 * sigma_y) if name == "reddiff" else {}
    kwargs: dict[str, Any] = dict(preset)
    for key, text in settings.items():
        if key not in params:
            raise ReddiffError(f"{cls.label} has no setting {key!r}; accepted: {', '.join(params)}")
        if str(text).strip() == "":
            continue
        try:
            kwargs[key] = parse_text(params[key], str(text))
        except ValueError as exc:
            raise ReddiffError(f"{params[key].flag}: {exc}") from None
    solver = cls(**kwargs)
    if solver.steps > engine.limits.max_steps:
        raise ReddiffError(f"{solver.steps} steps asked; this server allows at most {engine.limits.max_steps}")
    return solver, preset


def _number(text: str, what: str, lo: float, hi: float, kind: type = float) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise ReddiffError(f"{what} must be a number, got {text!r}") from None
    if not (lo <= value <= hi):
        raise ReddiffError(f"{what} must be between {lo:g} and {hi:g}, got {text}")
    return value


async def parse_run(engine: Engine, form: Any) -> dict[str, Any]:
    """Check a run request and turn it into what the worker needs (one line per problem)."""
    from ..experiment import operator_for
    from ..operators import parse_task

    limits = engine.limits
    downscale = str(form.get("downscale", "")).lower() in ("1", "true", "on", "yes")
    upload = form.get("image")
    if upload is not None and hasattr(upload, "read") and getattr(upload, "filename", ""):
        data = await upload.read()
        name = Path(upload.filename).name or "upload"
    elif form.get("sample"):
        make = samples().get(str(form["sample"]))
        if make is None:
            raise ReddiffError(f"unknown sample {form['sample']!r}; accepted: {', '.join(samples())}")
        data, name = make(), f"{form['sample']}.png"
    else:
        raise ReddiffError("choose an image: upload one or pick a sample")
    x = decode_upload(data, f"image {name}", limits, downscale)
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    task = str(form.get("task") or "").strip()
    if not task:
        raise ReddiffError("choose a task")
    sigma_y = _number(form.get("sigma_y", "0"), "the noise level", 0.0, 0.5)
    seed = _number(form.get("seed", "0"), "the seed", 0, 2**31 - 1, int)
    frames = _number(form.get("frames", "0"), "the frame interval", 0, 10_000, int)
    mask = None
    mask_upload = form.get("mask")
    if mask_upload is not None and hasattr(mask_upload, "read"):
        mask_data = await mask_upload.read()
        if mask_data:
            m = decode_upload(mask_data, "mask", Limits(max_side=10_000, max_upload_mb=limits.max_upload_mb),
                              False, channels=1)
            if m.shape[-2:] != x.shape[-2:]:
                m = torch.nn.functional.interpolate(m, size=x.shape[-2:], mode="nearest")
            mask = ((m + 1) / 2 > 0.5).to(torch.float32)[0, 0]
    parsed = parse_task(task)
    if parsed.composite and mask is not None:
        raise ReddiffError("a drawn mask goes with an inpainting task, not a composite one")
    if mask is not None and not parsed.parts[0].name.startswith("inpaint"):
        raise ReddiffError(f"a drawn mask is for inpainting tasks, not {task!r}; clear it or pick inpainting")
    if task.startswith("inpaint-mask") and mask is None:
        raise ReddiffError("inpaint-mask needs a mask: paint the region to fill on the image, or upload a mask")
    if mask is not None and float(mask.mean()) > 0.999:
        raise ReddiffError("the mask leaves nothing to fill: paint the region to restore on the image")
    op, _ = operator_for(task, tuple(x.shape[1:]), 0, mask)  # a task the image cannot take fails here, not queued
    try:
        settings = json.loads(form.get("settings") or "{}")
    except json.JSONDecodeError:
        raise ReddiffError("settings must be a JSON object of field -> value") from None
    if not isinstance(settings, dict):
        raise ReddiffError("settings must be a JSON object of field -> value")
    solver, preset = build_solver(engine, str(form.get("solver") or "reddiff"), task, sigma_y, settings)
    solver.check_prior(engine.prior)
    solver.check_operator(op)  # e.g. DDRM needs an SVD: said now, not after waiting in the queue
    return {"image": x, "mask": mask, "task": task, "sigma_y": sigma_y, "seed": seed, "frames": frames,
            "solver": solver, "preset": preset, "name": name, "sha256": digest}


# -- the ASGI application ----------------------------------------------------------------------------------------
def create_app(prior: Any, device: torch.device | str = "cpu", limits: Limits | None = None) -> Any:
    """The Starlette application serving the page for ``prior``; ``app.state.engine.close()`` stops its worker and
    removes its temporary files (done on shutdown)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    engine = Engine(prior, torch.device(device), limits or Limits())

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)

    def session_of(request: Request) -> str | None:
        return request.cookies.get(COOKIE)

    def own_job(request: Request) -> AppJob | None:
        job = engine.jobs.get(request.path_params["job"])
        sid = session_of(request)
        return job if job is not None and sid and secrets.compare_digest(job.session, sid) else None

    async def index(request: Request) -> Response:
        response = FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        if not session_of(request):
            response.set_cookie(COOKIE, secrets.token_urlsafe(24), httponly=True, samesite="strict")
        return response

    async def api_options(request: Request) -> Response:
        return JSONResponse(options(engine))

    async def api_preset(request: Request) -> Response:
        try:
            task = request.query_params.get("task", "")
            sigma_y = _number(request.query_params.get("sigma_y", "0"), "the noise level", 0.0, 0.5)
            from ..operators import parse_task
            from ..tools.presets import preset_for_prior

            parse_task(task)
            return JSONResponse({"preset": preset_for_prior(engine.prior, task, 2.0 * sigma_y)})
        except ReddiffError as exc:
            return error(str(exc))

    async def api_sample(request: Request) -> Response:
        make = samples().get(request.path_params["name"])
        if make is None:
            return error("no such sample", 404)
        return Response(make(), media_type="image/png")

    async def api_run(request: Request) -> Response:
        sid = session_of(request)
        if not sid:
            return error("no session: reload the page", 403)
        try:
            async with request.form(max_files=2, max_fields=50, max_part_size=int(engine.limits.max_upload_mb * 1e6)
                                    + 1) as form:
                req = await parse_run(engine, form)
        except ReddiffError as exc:
            return error(str(exc))
        except Exception as exc:  # noqa: BLE001 - a malformed upload: one line in the page
            return error(f"the upload could not be read: {' '.join(str(exc).split())[:200]}")
        job = AppJob(secrets.token_urlsafe(12), sid, req)
        try:
            position = engine.submit(job)
        except ReddiffError as exc:
            return error(str(exc), 503)
        return JSONResponse({"job": job.id, "position": position})

    async def api_events(request: Request) -> Response:
        job = own_job(request)
        if job is None:
            return error("no such job in this session", 404)

        async def stream() -> Any:
            sent, last_position = 0, None
            try:
                while True:
                    if await request.is_disconnected():
                        break
                    if job.status == "queued":
                        pos = engine.position(job)
                        if pos != last_position:
                            last_position = pos
                            yield f"data: {json.dumps({'type': 'queued', 'position': pos})}\n\n"
                    with job.lock:
                        new = job.events[sent:]
                    for event in new:
                        yield f"data: {json.dumps(event)}\n\n"
                    sent += len(new)
                    if job.finished and sent >= len(job.events):
                        return
                    await asyncio.sleep(0.1)
            finally:
                if not job.finished:  # the client went away: its job frees the worker
                    job.cancel.set()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def api_cancel(request: Request) -> Response:
        job = own_job(request)
        if job is None:
            return error("no such job in this session", 404)
        job.cancel.set()
        return JSONResponse({"cancelled": not job.finished or job.status == "cancelled"})

    async def api_file(request: Request) -> Response:
        job = own_job(request)
        name = request.path_params["name"]
        if job is None or name not in FILES:
            return error("no such file in this session", 404)
        if job.status != "done" or job.folder is None or not (job.folder / "image" / name).is_file():
            return error("not ready", 404)
        download = f"reddiff-{job.request['task'].replace(':', '')}-{name}"
        return FileResponse(job.folder / "image" / name, filename=download)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await asyncio.get_running_loop().run_in_executor(None, engine.close)

    app = Starlette(routes=[
        Route("/", index),
        Route("/api/options", api_options),
        Route("/api/preset", api_preset),
        Route("/api/sample/{name}", api_sample),
        Route("/api/run", api_run, methods=["POST"]),
        Route("/api/jobs/{job}/events", api_events),
        Route("/api/jobs/{job}/cancel", api_cancel, methods=["POST"]),
        Route("/api/jobs/{job}/files/{name}", api_file),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ], lifespan=lifespan)
    app.state.engine = engine
    return app
