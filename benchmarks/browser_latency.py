"""Felt speed of the dashboard in real Chromium: cold start to a usable page, and key press -> page idle for
slider steps on the Explore view (configs never evaluated before, and configs already seen).

Starts the app the way `make run` does (`python -m dashboard.launch`, private result store, free port), with
Chromium already open (a user's browser is), and measures:

- **cold start**: process start -> the first page usable (the Explore metric tiles show an accuracy), and -> idle;
- **slider steps**: focus a slider (Weight bits, Sparsity), press ArrowRight / ArrowLeft, wait until the page is
  idle. *Idle* = the server has answered the key press (a WebSocket message reached the page after it), the app's
  script state is `notRunning` (`stApp[data-test-script-state]`, the running indicator gone), and no DOM mutation
  (childList, attributes, characterData anywhere in the document, seen by a MutationObserver installed before the
  page's own scripts) for `--quiet` ms. The time reported is key press (a capture-phase keydown listener) -> the
  *last* mutation before that quiet window, so the quiet window itself is not counted. (The script state alone
  cannot tell that a rerun happened: a fragment rerun of ~20 ms can start and finish within one React render, so
  the attribute never reads `running`; about one step in eight on an idle machine.)

A step is "new" when its config was never evaluated by this server (the walk goes out from the start config), and
"seen" when it was (the walk comes back the same way). Between steps the user "looks" for `--think` seconds, the
time a person takes to read the tiles; whatever the server does in the background meanwhile counts as it would
for them. Both the first view's default (`explore_bits=4&explore_sparsity=0.5`) and the older fp32 default
(`explore_bits=32&explore_sparsity=0`) are walked, each in a fresh browser session.

Usage: python benchmarks/browser_latency.py [--quick] [--think 1.0] [--quiet 400] [--json FILE]
Prints one line per walk with medians / p90 and the ratio to the targets (<= 1 meets it), and a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.app_process import free_port, healthy  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TARGET_NEW_MS, TARGET_SEEN_MS, TARGET_COLD_S = 400.0, 250.0, 5.0
STEP_TIMEOUT_MS = 60_000
STARTUP_TIMEOUT_S = 180.0
VIEWS = {"first view (int4 + 50 % sparsity)": {"explore_bits": "4", "explore_sparsity": "0.5"},
         "fp32 default": {"explore_bits": "32", "explore_sparsity": "0.0"}}
# (slider label, key) going out to configs never evaluated; the way back presses the opposite keys
WALK = [("Sparsity", "ArrowRight")] * 3 + [("Weight bits", "ArrowLeft")] * 2 + [("Sparsity", "ArrowRight")] * 3
QUICK_WALK = WALK[:2] + WALK[3:4]
BACK = {"ArrowRight": "ArrowLeft", "ArrowLeft": "ArrowRight"}
USABLE = "[data-testid='stMetric']:has-text('Accuracy') [data-testid='stMetricValue']:has-text('%')"

# Installed before the page's own scripts: the time of every DOM mutation and of the key press, and whether a
# message from the server arrived since the key press (the answer to it).
OBSERVER_JS = """
(() => {
  const b = window.__bench = {keyAt: null, last: performance.now(), ran: false,
                              arm() { this.keyAt = null; this.ran = false; }};
  document.addEventListener('keydown', () => { if (b.keyAt === null) b.keyAt = performance.now(); }, true);
  const PageSocket = window.WebSocket;
  window.WebSocket = class extends PageSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', () => { if (b.keyAt !== null) b.ran = true; });
    }
  };
  new MutationObserver(() => { b.last = performance.now(); }).observe(
    document, {subtree: true, childList: true, attributes: true, characterData: true});
  b.idle = quiet => {
    const app = document.querySelector("[data-testid='stApp']");
    return b.keyAt !== null && b.ran && app !== null &&
      app.getAttribute('data-test-script-state') === 'notRunning' &&
      document.querySelector("[data-testid='stStatusWidget'] [data-testid='stStatusWidgetRunningIcon']") === null &&
      performance.now() - b.last >= quiet;
  };
})();
"""


@dataclass(frozen=True)
class Step:
    """One key press: which slider, which key, whether the config it leads to was seen, ms to idle."""

    slider: str
    key: str
    seen: bool
    ms: float


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0-1) by linear interpolation between order statistics."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "median": round(statistics.median(values)), "p90": round(percentile(values, 0.9)),
            "max": round(max(values))}


STATE_JS = """() => { const b = window.__bench, app = document.querySelector("[data-testid='stApp']");
  return {script_state: app && app.getAttribute('data-test-script-state'), answered: b.ran,
          ms_since_key: b.keyAt === null ? null : Math.round(performance.now() - b.keyAt),
          ms_since_last_change: Math.round(performance.now() - b.last), url: location.href,
          errors: [...document.querySelectorAll("[data-testid='stException'], [data-testid='stAlert']")]
                    .map(e => e.innerText.slice(0, 200))}; }"""


def wait_idle(page, quiet_ms: float) -> None:
    """Wait until `window.__bench.idle(quiet_ms)`; on a timeout, exit with what the page was doing."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(f"window.__bench.idle({quiet_ms})", timeout=STEP_TIMEOUT_MS, polling=25)
    except PlaywrightTimeout:
        raise SystemExit(f"the page did not become idle within {STEP_TIMEOUT_MS / 1000:.0f} s after a key press: "
                         f"{json.dumps(page.evaluate(STATE_JS))}") from None


def settle(page, quiet_ms: float) -> None:
    """Wait until the page is idle without a key press (after a load)."""
    page.wait_for_function(
        f"document.querySelector(\"[data-testid='stApp'][data-test-script-state='notRunning']\") !== null && "
        f"performance.now() - window.__bench.last >= {quiet_ms}", timeout=STEP_TIMEOUT_MS * 3, polling=25)


def press(page, slider: str, key: str, quiet_ms: float) -> float:
    """Press `key` on the slider labelled `slider`; ms from the key press to the last DOM change before idle."""
    thumb = page.locator("[data-testid='stSlider']").filter(has_text=slider).locator("input[type='range']")
    thumb.focus()
    page.evaluate("window.__bench.arm()")
    thumb.press(key)
    wait_idle(page, quiet_ms)
    return page.evaluate("window.__bench.last - window.__bench.keyAt")


def walk(context, url: str, steps: list[tuple[str, str]], think_s: float, quiet_ms: float) -> list[Step]:
    """Open `url` in a fresh session, go out along `steps` (new configs), then back (seen configs)."""
    page = context.new_page()
    page.add_init_script(OBSERVER_JS)
    page.goto(url)
    page.wait_for_selector(USABLE, timeout=STEP_TIMEOUT_MS * 3)
    settle(page, quiet_ms)
    page.mouse.move(2, 2)  # no hover effects
    out = []
    back = [(slider, BACK[key]) for slider, key in reversed(steps)]
    for seen, (slider, key) in [(False, s) for s in steps] + [(True, s) for s in back]:
        time.sleep(think_s)
        out.append(Step(slider, key, seen, press(page, slider, key, quiet_ms)))
    if page.locator("[data-testid='stException']").count():
        raise SystemExit("the page shows an exception")
    page.close()
    return out


def start_server(store: Path, log: Path) -> tuple[subprocess.Popen, str, float]:
    """Start the app like `make run`; return (process, URL, time.perf_counter() at the start)."""
    port = free_port()
    env = {**os.environ, "COMPRESSION_EXPLORER_STORE": str(store), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "dashboard.launch", "--server.port", str(port)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", t0


def cold_start(browser, url: str, proc: subprocess.Popen, t0: float, quiet_ms: float, log: Path) -> dict:
    """Seconds from process start to healthy, to the metric tiles (usable) and to idle, on the first view."""
    while not healthy(url):
        if proc.poll() is not None or time.perf_counter() - t0 > STARTUP_TIMEOUT_S:
            raise SystemExit(f"the app did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    t_healthy = time.perf_counter() - t0
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    page = context.new_page()
    page.add_init_script(OBSERVER_JS)
    page.goto(url)
    page.wait_for_selector(USABLE, timeout=STEP_TIMEOUT_MS * 3)
    t_usable, page_usable_ms = time.perf_counter() - t0, page.evaluate("performance.now()")
    settle(page, quiet_ms)
    # idle: the page's last DOM change (page clock), counted from when it was seen usable, never before that
    t_idle = t_usable + max(0.0, page.evaluate("window.__bench.last") - page_usable_ms) / 1000
    context.close()
    return {"healthy_s": round(t_healthy, 2), "usable_s": round(t_usable, 2), "idle_s": round(t_idle, 2)}


def measure(quick: bool, think_s: float, quiet_ms: float) -> dict:
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="browser-latency-"))
    log = folder / "streamlit.log"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        proc, url, t0 = start_server(folder / "runs.sqlite", log)
        try:
            cold = cold_start(browser, url, proc, t0, quiet_ms, log)
            walks = {}
            for name, params in VIEWS.items():
                context = browser.new_context(viewport={"width": 1440, "height": 1000})
                steps = walk(context, f"{url}/?{urllib.parse.urlencode(params)}", QUICK_WALK if quick else WALK,
                             think_s, quiet_ms)
                context.close()
                walks[name] = {"new": summary([s.ms for s in steps if not s.seen]),
                               "seen": summary([s.ms for s in steps if s.seen]),
                               "steps": [[s.slider, s.key, s.seen, round(s.ms)] for s in steps]}
        finally:
            proc.terminate()
            proc.wait(30)
            browser.close()
    return {"cold_start": cold, "walks": walks, "think_s": think_s,
            "quiet_ms": quiet_ms, "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def report(result: dict) -> str:
    """The figures as text lines, each with its ratio to the target (<= 1.00 meets it)."""
    cold = result["cold_start"]
    lines = [f"cold start: healthy {cold['healthy_s']:.2f} s, usable {cold['usable_s']:.2f} s "
             f"({cold['usable_s'] / TARGET_COLD_S:.2f}x of {TARGET_COLD_S:g} s), idle {cold['idle_s']:.2f} s"]
    for name, w in result["walks"].items():
        for kind, target in (("new", TARGET_NEW_MS), ("seen", TARGET_SEEN_MS)):
            s = w[kind]
            lines.append(f"{name}, {kind} config: median {s['median']} ms ({s['median'] / target:.2f}x of "
                         f"{target:g} ms), p90 {s['p90']} ms, max {s['max']} ms, n = {s['n']}")
    lines.append(f"(think {result['think_s']:g} s between steps, quiet window {result['quiet_ms']:g} ms not "
                 f"counted, {result['cpus']} CPUs, load average {result['load_avg_1m']} at the end)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short walk (3 new + 3 seen steps per view), for CI")
    parser.add_argument("--think", type=float, default=1.0, help="seconds between steps (default 1.0)")
    parser.add_argument("--quiet", type=float, default=400.0, help="ms without DOM change that mean idle (400)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        parser.exit(2, f"error: {CHROMIUM} is missing; install chromium (apt-get install -y chromium)\n")
    result = measure(args.quick, args.think, args.quiet)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
