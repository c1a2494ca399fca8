"""Screenshots of the dashboard in headless Chromium, to look at how it reads at scale.

    python bench/screenshots.py                      # 60 synthetic nights (dashboard.demo)
    python bench/screenshots.py --nights 120 --out /tmp/shots
    python bench/screenshots.py --use-env            # whatever NIGHTSHIFT_CONFIG etc. point at

Seeds a demo catalog and MLflow store (unless ``--use-env``), runs ``streamlit run
dashboard/app.py`` on 127.0.0.1, drives Debian's ``chromium`` over the DevTools protocol (wait
until the page has rendered, size the window to the whole page, capture) and writes one PNG per
page (``--pages``, default ``overview.png``, ``lineage.png``, ``feedback.png``). Needs Debian's
``chromium`` (``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Page name -> (URL path, what must be on screen before the shot: a JS expression).
PAGES = {
    "overview": ("", "document.querySelectorAll('[data-testid=\"stMetric\"]').length >= 3"),
    "lineage": ("lineage", "document.querySelector('[data-testid=\"stGraphVizChart\"] svg g.node') !== null"),
    "runs": ("runs", "document.querySelectorAll('[data-testid=\"stVegaLiteChart\"]').length >= 2"),
    "models": ("models", "document.body.innerText.includes('Deployments')"),
    "feedback": ("feedback", "document.body.innerText.includes('Response B')"),
    "playground": ("playground", "document.body.innerText.includes('Settings')"),
}
# Streamlit's "running" indicator; a page is done when its script run has finished.
RUNNING = "document.querySelector('[data-testid=\"stStatusWidget\"]') !== null"
HEIGHT = """Math.max(...[...document.querySelectorAll(
  '[data-testid="stMain"], [data-testid="stMainBlockContainer"], [data-testid="stAppViewContainer"]'
)].map(e => e.scrollHeight), document.body.scrollHeight)"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{what} did not answer at {url} within {timeout:.0f} s")


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, stopped (the whole group) on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


class Tab:
    """One Chromium tab over the DevTools protocol (just the calls a screenshot needs)."""

    def __init__(self, devtools: int, url: str) -> None:
        from websockets.sync.client import connect

        req = urllib.request.Request(f"http://127.0.0.1:{devtools}/json/new?{url}", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            self.target = json.load(r)
        self.ws = connect(self.target["webSocketDebuggerUrl"], max_size=64 * 2**20)
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        self.ws.close()


def shoot(devtools: int, url: str, ready: str, out: Path, width: int, timeout: float) -> None:
    """Open ``url``, wait until ``ready`` holds and Streamlit is idle, capture the whole page to ``out``."""
    tab = Tab(devtools, "about:blank")
    try:
        tab.call(
            "Emulation.setDeviceMetricsOverride", width=width, height=1000, deviceScaleFactor=1, mobile=False
        )
        tab.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        stable = 0
        while stable < 3:  # idle for three polls in a row: reruns triggered by widgets are over
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not render within {timeout:.0f} s (waiting for: {ready})")
            time.sleep(0.5)
            stable = stable + 1 if tab.eval(f"({ready}) && !({RUNNING})") else 0
        height = int(tab.eval(HEIGHT) or 1000) + 40
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        time.sleep(1.0)  # let the layout settle at the new size (charts re-measure their width)
        png = tab.call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(base64.b64decode(png))
        print(f"{out} ({width}x{height})")
    finally:
        tab.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Headless Chromium screenshots of the dashboard.")
    home = Path(os.environ.get("NIGHTSHIFT_HOME", REPO / ".nightshift"))
    p.add_argument("--out", type=Path, default=home / "screenshots", help="where the PNGs go (git-ignored)")
    p.add_argument("--nights", type=int, default=60, help="synthetic nights to seed (default 60)")
    p.add_argument(
        "--use-env", action="store_true", help="no demo: use the dashboard's env settings as they are"
    )
    p.add_argument("--width", type=int, default=1600, help="window width in CSS pixels")
    p.add_argument("--timeout", type=float, default=90, help="seconds each page may take to render")
    p.add_argument(
        "--pages", default="overview,lineage,feedback", help=f"comma-separated, of: {', '.join(PAGES)}"
    )
    p.add_argument("--keep", action="store_true", help="keep the demo data and logs (their path is printed)")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = p.parse_args(argv)
    pages = [x.strip() for x in args.pages.split(",") if x.strip()]
    unknown = [x for x in pages if x not in PAGES]
    if unknown:
        raise SystemExit(f"unknown page(s) {', '.join(unknown)}; pick from {', '.join(PAGES)}")
    if not args.chromium:
        raise SystemExit("no chromium found: install Debian's package with `apt-get install -y chromium`")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nightshift-shots-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not args.use_env:
        sys.path.insert(0, str(REPO))
        from dashboard.demo import seed

        t0 = time.monotonic()
        demo = seed(work / "demo", args.nights)
        env.update(demo.env(), NIGHTSHIFT_DASHBOARD_USER="ana")
        print(f"seeded {args.nights} nights in {time.monotonic() - t0:.1f} s under {demo.root}")
    # Nothing listens here: the pages show how they say that serving is down.
    env.setdefault("NIGHTSHIFT_SERVE_URL", f"http://127.0.0.1:{free_port()}/v1")
    port, devtools = free_port(), free_port()
    streamlit = Path(sys.executable).with_name("streamlit")
    # Viewer toolbar: no "Deploy" button in the pictures (nightshift up runs it the same way).
    flags = "--server.headless true --browser.gatherUsageStats false --client.toolbarMode viewer"
    app_cmd = [str(streamlit), "run", str(REPO / "dashboard" / "app.py"), *flags.split()]
    app_cmd += ["--server.address", "127.0.0.1", "--server.port", str(port)]
    browser_cmd = [args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    browser_cmd += [
        "--no-first-run",
        f"--remote-debugging-port={devtools}",
        f"--user-data-dir={work / 'chromium'}",
    ]
    browser_cmd.append("about:blank")
    done = False
    try:
        with (
            process(app_cmd, env, work / "streamlit.log"),
            process(browser_cmd, dict(os.environ), work / "chromium.log"),
        ):
            wait_http(
                f"http://127.0.0.1:{port}/_stcore/health", 60, f"streamlit (log {work / 'streamlit.log'})"
            )
            wait_http(
                f"http://127.0.0.1:{devtools}/json/version", 30, f"chromium (log {work / 'chromium.log'})"
            )
            for name in pages:
                path, ready = PAGES[name]
                url = f"http://127.0.0.1:{port}/{path}"
                shoot(devtools, url, ready, args.out / f"{name}.png", args.width, args.timeout)
        done = True
    finally:
        if args.keep or not done:  # a failed run keeps its logs for the error message above
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
