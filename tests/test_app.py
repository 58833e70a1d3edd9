"""``reddiff app`` in a real browser (headless Chromium driven by Selenium): upload, paint a mask, run, watch frames
arrive, download the estimate; and the bad-input paths (a text file as the image, an oversized image, cancelling,
two sessions, a client that goes away), each a message in the page with nothing left on disk. Screenshots go to
``$REDDIFF_TEST_ARTIFACTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the app extra is part of the test extra")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from reddiff.app.server import Limits, create_app  # noqa: E402


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver)")
    return browser, driver


@pytest.fixture(scope="module")
def server(adm_fixtures):
    """The app with the tiny fixture prior on a free port; stopped (and its temporary files removed) at the end."""
    import uvicorn

    from reddiff import load_prior

    prior = load_prior(adm_fixtures / "tiny_a.pt", progress=False)
    app = create_app(prior, "cpu", Limits(max_side=64, queue=2, max_steps=1000))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    srv.url = f"http://127.0.0.1:{port}"
    srv.engine = app.state.engine
    yield srv
    srv.should_exit = True
    thread.join(timeout=60)
    assert not srv.engine.root.exists(), "the server's temporary folder is removed when it stops"


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("REDDIFF_TEST_ARTIFACTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def browsers():
    """A factory of headless Chromium sessions (each with its own cookies), all closed at the end."""
    binary, driver_path = _chromium()
    made = []

    def make():
        opts = webdriver.ChromeOptions()
        opts.binary_location = binary
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1000",
                    "--disable-gpu"):
            opts.add_argument(arg)
        d = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
        made.append(d)
        return d

    yield make
    for d in made:
        d.quit()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("pictures")
    Image.fromarray(np.ascontiguousarray(data.coffee()[100:196:2, 200:296:2])).save(d / "coffee.png")  # 48 x 48
    Image.fromarray(data.chelsea()[:192, :256]).save(d / "big.png")  # 256 x 192: above the 64 px limit
    (d / "notes.png").write_text("this is not an image")
    return d


def _wait(driver, what, timeout=120):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: what(d))


def _open(driver, server):
    driver.get(server.url)
    _wait(driver, lambda d: len(Select(d.find_element(By.ID, "task")).options) > 5 and
          d.find_element(By.ID, "field-steps"))


def _set(driver, element_id, value):
    el = driver.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(str(value))


def _fetch(driver, url):
    cookie = "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())
    req = urllib.request.Request(url, headers={"Cookie": cookie})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.read()


def _job_folders(server):
    return [p for p in server.engine.root.iterdir()] if server.engine.root.exists() else []


def test_upload_paint_run_watch_download(server, browsers, pictures, shots):
    d = browsers()
    _open(d, server)
    d.find_element(By.ID, "image-file").send_keys(str(pictures / "coffee.png"))
    _wait(d, lambda d: d.execute_script("return document.getElementById('editor').width") == 48)
    assert Select(d.find_element(By.ID, "task")).first_selected_option.text == "inpaint-mask"
    editor = d.find_element(By.ID, "editor")
    ActionChains(d).move_to_element_with_offset(editor, -60, -20).click_and_hold().move_by_offset(120, 30) \
        .move_by_offset(-40, 40).release().perform()
    assert d.execute_script("return state.painted") is True
    _set(d, "field-steps", 8)
    _set(d, "frames", 1)
    d.find_element(By.ID, "run").click()
    _wait(d, lambda d: d.find_element(By.ID, "results").get_attribute("data-done"))
    frames = int(d.find_element(By.ID, "live").get_attribute("data-frames"))
    assert frames == 8, "one frame per step was asked for"
    status = d.find_element(By.ID, "status").text
    assert status.startswith("done in") and "PSNR" in status, status
    assert d.find_element(By.ID, "error").text == ""
    d.save_screenshot(str(shots / "app_done.png"))
    href = d.find_element(By.ID, "dl-estimate").get_attribute("href")
    png = _fetch(d, href)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size == (48, 48)
    record = _fetch(d, d.find_element(By.ID, "dl-run").get_attribute("href"))
    import json

    run = json.loads(record)
    assert run["task"]["task"] == "inpaint-mask" and run["solver"]["steps"] == 8 and run["metrics"]["psnr"] > 5
    mask = Image.open(io.BytesIO(_fetch(d, href.replace("estimate.png", "mask.png"))))
    hole = 1 - np.asarray(mask.convert("L"), dtype=float) / 255
    assert 0.02 < hole.mean() < 0.9, "the painted stroke is the mask's hole"
    with pytest.raises(urllib.error.HTTPError) as info:  # another session (no cookie) cannot see it
        urllib.request.urlopen(href, timeout=30)
    assert info.value.code == 404


def test_bad_uploads_give_a_message_and_leave_nothing(server, browsers, pictures, shots):
    d = browsers()
    _open(d, server)
    before = _job_folders(server)
    d.find_element(By.ID, "image-file").send_keys(str(pictures / "notes.png"))
    Select(d.find_element(By.ID, "task")).select_by_visible_text("sr")
    d.find_element(By.ID, "run").click()
    _wait(d, lambda d: d.find_element(By.ID, "error").text)
    assert "could not be read as an image" in d.find_element(By.ID, "error").text
    d.save_screenshot(str(shots / "app_bad_image.png"))
    d.find_element(By.ID, "image-file").send_keys(str(pictures / "big.png"))
    _wait(d, lambda d: d.execute_script("return document.getElementById('editor').width") == 256)
    d.find_element(By.ID, "run").click()
    _wait(d, lambda d: "limit is 64 px" in d.find_element(By.ID, "error").text)
    assert "downscale" in d.find_element(By.ID, "error").text
    assert _job_folders(server) == before, "refused uploads are never written"
    # downscaling on request: the 256 x 192 picture is solved at 64 x 48
    d.find_element(By.ID, "downscale").click()
    _set(d, "field-steps", 3)
    d.find_element(By.ID, "run").click()
    _wait(d, lambda d: d.find_element(By.ID, "results").get_attribute("data-done"))
    png = _fetch(d, d.find_element(By.ID, "dl-estimate").get_attribute("href"))
    assert Image.open(io.BytesIO(png)).size == (64, 48)
    _set(d, "field-steps", "2.5")
    d.find_element(By.ID, "run").click()
    _wait(d, lambda d: "steps" in d.find_element(By.ID, "error").text)


def test_cancel_two_sessions_and_a_client_that_leaves(server, browsers, pictures, shots):
    a, b = browsers(), browsers()
    for d in (a, b):
        _open(d, server)
        d.find_element(By.ID, "image-file").send_keys(str(pictures / "coffee.png"))
        Select(d.find_element(By.ID, "task")).select_by_visible_text("sr")
    _set(a, "field-steps", 1000)
    _set(a, "frames", 1)
    _set(b, "field-steps", 4)
    a.find_element(By.ID, "run").click()
    _wait(a, lambda d: int(d.find_element(By.ID, "live").get_attribute("data-frames")) >= 1
          or d.find_element(By.ID, "error").text)
    assert a.find_element(By.ID, "error").text == ""
    b.find_element(By.ID, "run").click()
    _wait(b, lambda d: "queued: position 1" in d.find_element(By.ID, "status").text)
    b.save_screenshot(str(shots / "app_queued.png"))
    a.save_screenshot(str(shots / "app_running.png"))
    a.find_element(By.ID, "cancel").click()
    _wait(a, lambda d: d.find_element(By.ID, "status").text == "cancelled")
    _wait(b, lambda d: d.find_element(By.ID, "results").get_attribute("data-done"))  # the slot was freed
    job_b = b.find_element(By.ID, "results").get_attribute("data-done")
    with pytest.raises(urllib.error.HTTPError) as info:  # a's session cannot read b's files
        _fetch(a, f"{server.url}/api/jobs/{job_b}/files/estimate.png")
    assert info.value.code == 404
    # a client that goes away mid-run frees its slot: its job is cancelled
    a.find_element(By.ID, "run").click()
    _wait(a, lambda d: int(d.find_element(By.ID, "live").get_attribute("data-frames")) >= 1)
    running = next(j for j in server.engine.jobs.values() if j.status == "running")
    a.get("about:blank")
    deadline = time.time() + 30
    while time.time() < deadline and running.status != "cancelled":
        time.sleep(0.1)
    assert running.status == "cancelled" and running.folder is None  # nothing written for it


def test_app_command_without_the_extra_says_how_to_install(monkeypatch, capsys):
    import sys

    from reddiff.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the app extra were not installed
    code = main(["app", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'reddiff[app]'" in err and len(err.strip().splitlines()) == 1


def test_api_refuses_bad_requests_with_one_line(server):
    """The same checks without a browser: no session, unknown task and solver, a bad setting, a full queue."""
    import json

    def post(fields, cookie="s=1"):
        boundary = "xxBOUNDARYxx"
        body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in fields.items()) + f"--{boundary}--\r\n"
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if cookie:
            headers["Cookie"] = f"reddiff_session={cookie}"
        req = urllib.request.Request(f"{server.url}/api/run", data=body.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    base = {"sample": "astronaut", "task": "sr:4", "solver": "ddrm", "downscale": "1", "settings": '{"steps": "2"}'}
    assert post(base, cookie=None) == (403, {"error": "no session: reload the page"})
    for change, words in (({"task": "sr:x"}, "sr"), ({"solver": "magic"}, "unknown solver 'magic'"),
                          ({"settings": '{"eta": "lots"}'}, "--eta"), ({"sigma_y": "-1"}, "noise level"),
                          ({"sample": "nobody"}, "unknown sample"), ({"task": "deblur-motion"}, "DDRM cannot use")):
        code, body = post({**base, **change})
        assert code in (400, 503) and words in body["error"] and "\n" not in body["error"], (change, body)


def test_upload_checks():
    """Bytes, emptiness, decodability, a huge image refused before it is decoded, and the side limit."""
    from reddiff.app.server import MAX_PIXELS, decode_upload
    from reddiff.errors import ReddiffError

    def png(size, mode="RGB"):
        buf = io.BytesIO()
        Image.new(mode, size).save(buf, format="PNG")
        return buf.getvalue()

    limits = Limits(max_side=64, max_upload_mb=0.05)
    for data, words in ((b"", "empty"), (b"GIF89a not really", "could not be read"),
                        (b"x" * 60_000, "the limit is 0.05 MB"),
                        (png((9000, 5000), "1"), f"at most {MAX_PIXELS // 10**6} megapixels"),
                        (png((80, 40)), "limit is 64 px")):
        with pytest.raises(ReddiffError, match=words):
            decode_upload(data, "image", limits, downscale=False)
    assert decode_upload(png((80, 40)), "image", limits, downscale=True).shape == (1, 3, 32, 64)
    grey = decode_upload(png((64, 48), "L"), "mask", limits, downscale=False, channels=1)
    assert grey.shape == (1, 1, 48, 64) and grey.min() == -1


def test_finished_jobs_and_their_files_are_dropped_beyond_the_limits(adm_fixtures):
    from reddiff import load_prior
    from reddiff.app.server import AppJob, Engine

    engine = Engine(load_prior(adm_fixtures / "tiny_a.pt", progress=False), "cpu",
                    Limits(queue=10, jobs_per_session=1, jobs_kept=2))
    try:
        made = []
        for i in range(6):
            job = AppJob(f"job{i}", f"session{i % 2}", {})
            job.cancel.set()  # the worker finishes it without solving
            engine.submit(job)
            deadline = time.time() + 30
            while not job.finished and time.time() < deadline:
                time.sleep(0.01)
            job.folder = engine.root / job.id
            job.folder.mkdir()
            made.append(job)
        kept = set(engine.jobs)
        assert kept <= {"job3", "job4", "job5"} and "job5" in kept
        assert all((j.id in kept) == j.folder.exists() for j in made), "a dropped job's files go with it"
        assert all(len(mine) <= 2 for mine in engine.sessions.values())
    finally:
        engine.close()
    assert not engine.root.exists()
