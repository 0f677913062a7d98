"""How often a slider key press on Explore goes unanswered: the thumb moves and the browser sends the value, but no
rerun follows (seen only under load, e.g. within minutes after a long test session; README, "How fast it feels").

Starts the app like `make run` (private store, free port), opens the first view in Chromium and presses the
Sparsity slider's arrow keys N times (4 right, 4 left, ...), 0.6 s apart, each held `--hold` ms. A press after
which no rerun starts within 4 s is counted as lost (with the number of WebSocket messages the page sent after it)
and made again (back and forth). Extra arguments go to the server (e.g. `--server.fileWatcherType none`).

Usage: python benchmarks/slider_presses.py [--presses 40] [--hold 80] [-- SERVER FLAGS...]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import browser_latency as bench  # noqa: E402
from tests.app_process import free_port, healthy  # noqa: E402

SENDS_JS = """(() => { const b = window.__bench; b.sent = 0; const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) { b.sent += 1; return send.call(this, data); }; })();"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presses", type=int, default=40)
    parser.add_argument("--hold", type=int, default=80, help="ms between key down and key up (default 80)")
    parser.add_argument("server_flags", nargs="*")
    args = parser.parse_args(argv)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "COMPRESSION_EXPLORER_STORE": tempfile.mktemp(suffix=".sqlite"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "dashboard.launch", "--server.port", str(port), *args.server_flags],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    lost = []
    try:
        while not healthy(url):
            time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=bench.CHROMIUM, args=bench.CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.add_init_script(bench.OBSERVER_JS + SENDS_JS)
            page.goto(f"{url}/?explore_bits=4&explore_sparsity=0.5")
            page.wait_for_selector(bench.USABLE, timeout=180_000)
            bench.settle(page, 400)
            page.mouse.move(2, 2)
            thumb = page.locator("[data-testid='stSlider']").filter(has_text="Sparsity").locator("input[type='range']")
            for i in range(args.presses):
                key = "ArrowRight" if (i // 4) % 2 == 0 else "ArrowLeft"
                time.sleep(0.6)
                thumb.focus()
                page.evaluate("window.__bench.arm(); window.__bench.sent = 0")
                thumb.press(key, delay=args.hold)
                try:
                    page.wait_for_function("window.__bench.ran", timeout=4000, polling=25)
                except PlaywrightTimeout:
                    lost.append({"press": i, "messages_sent": page.evaluate("window.__bench.sent"),
                                 "value": thumb.input_value()})
                    thumb.focus()
                    page.evaluate("window.__bench.arm()")
                    thumb.press(bench.BACK[key], delay=args.hold)
                    thumb.press(key, delay=args.hold)
                    page.wait_for_function("window.__bench.ran", timeout=30_000, polling=25)
                bench.wait_idle(page, 300)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    print(f"{len(lost)} of {args.presses} presses not answered (held {args.hold} ms): {lost}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
