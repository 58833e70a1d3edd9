"""The README's picture of ``reddiff app``: the page mid-run with the bundled prior (a brush stroke painted over the
astronaut sample, RED-diff with the prior's preset), taken in headless Chromium. Not a timed test.

    python benchmarks/app_pictures.py --out docs/app.png
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time

from common import add_overwrite, refuse_existing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/app.png")
    parser.add_argument("--at", type=float, default=0.5, help="fraction of the run at which to take the picture")
    add_overwrite(parser)
    args = parser.parse_args(argv)
    refuse_existing(args, args.out)

    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from reddiff import load_prior
    from reddiff.app.server import create_app

    app = create_app(load_prior("bundled", progress=False), "cpu")
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1180,900"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        d.get(url)
        WebDriverWait(d, 60).until(lambda d: d.execute_script("return state.image !== null && "
                                                              "document.getElementById('task').options.length > 5"))
        Select(d.find_element(By.ID, "task")).select_by_visible_text("inpaint-mask")
        WebDriverWait(d, 30).until(lambda d: d.find_element(By.ID, "field-steps"))
        editor = d.find_element(By.ID, "editor")
        d.find_element(By.ID, "brush").send_keys("\ue014" * 10)  # a wider brush
        chain = ActionChains(d).move_to_element_with_offset(editor, -90, -60).click_and_hold()
        for dx, dy in ((40, 25), (40, 20), (30, 40), (-20, 40), (40, 10)):
            chain = chain.move_by_offset(dx, dy)
        chain.release().perform()
        el = d.find_element(By.ID, "frames")
        el.clear()
        el.send_keys("2")
        d.find_element(By.ID, "run").click()
        steps = int(d.find_element(By.ID, "field-steps").get_attribute("value"))
        WebDriverWait(d, 900, poll_frequency=0.2).until(
            lambda d: int(d.find_element(By.ID, "live").get_attribute("data-frames")) * 2 >= args.at * steps)
        d.execute_script("window.scrollTo(0, 0)")
        d.save_screenshot(args.out)
        print(f"{args.out}: {d.find_element(By.ID, 'status').text}")
        WebDriverWait(d, 900).until(lambda d: d.find_element(By.ID, "results").get_attribute("data-done"))
        print(d.find_element(By.ID, "status").text)
    finally:
        d.quit()
        srv.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
