"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against `farm up --sim 3`
(three emulated PrusaLink printers, their agents, a worker). Signed in through `farm open
--no-browser`'s link; progress moves without a reload; a job cancelled and a bed cleared from the
page (the bed by keyboard); a submitter sees no tokens; a phone-sized screen gets one column; the
dark scheme is dark; a design previewed (drawn before any job exists), then submitted from the CAD
cache; a build's page (pipeline, provenance, a failure's error first); a 3MF's objects in colours;
a printer's camera still on its card, and one taken with its "Take snapshot" button; a zipped
project dropped on the form (its entry file, a customizable's bounds and choices), previewed and
submitted two per plate.
Screenshots go to a temporary folder, or to the folder named by
FARM_SCREENSHOTS (`FARM_SCREENSHOTS=docs` refreshes the README's)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import playwright.sync_api as sync_api
import pytest

from tests.conftest import EXAMPLES, REPO, RunningFarm, run_farm, running_farm, wait_until

CHROMIUM = shutil.which("chromium")
assert CHROMIUM, "Debian's chromium is missing: run scripts/setup"  # no skip: these tests must run
DOCS = Path(os.environ.get("FARM_SCREENSHOTS") or tempfile.mkdtemp(prefix="farm-screenshots-"))
if not DOCS.is_absolute():
    DOCS = REPO / DOCS
# What the 3D view drew: pixels in the part's orange, all pixels, and a digest of the image.
PART_PIXELS = """c => {
  const copy = document.createElement('canvas');
  copy.width = c.width; copy.height = c.height;
  const ctx = copy.getContext('2d');
  ctx.drawImage(c, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let part = 0, hash = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] > 60 && d[i] > d[i + 1] * 1.3 && d[i + 1] > d[i + 2] * 1.5) part++;
    hash = (hash * 31 + d[i] + d[i + 1] * 7 + d[i + 2] * 13) | 0;
  }
  return {part, all: d.length / 4, hash};
}"""
UNPROCESSABLE = "(Unprocessable Entity)"
LONG_PRINT = "10h 0m 0s"  # at --speed 600: 60 s on the emulator, long enough to watch it move


@pytest.fixture(scope="module")
def farm(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFarm]:
    with running_farm(redis_url, tmp_path_factory.mktemp("dash"), "3", redis_db=13) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []  # chromium's sandbox refuses root
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def gcode(farm: RunningFarm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The cube sliced for the MINI by PrusaSlicer: as it is (a print of a few minutes, a moment on
    the emulator) and with its estimate raised to LONG_PRINT."""
    folder = tmp_path_factory.mktemp("gcode")
    short = folder / "cube-short.gcode"
    sliced = farm.cli("slice", str(EXAMPLES / "cube.stl"), "--printer-model", "MINI", "-o", str(short))
    assert sliced.returncode == 0, sliced.stderr
    long = folder / "cube-long.gcode"
    text, n = re.subn(
        r"(; estimated printing time \(normal mode\) = ).*", rf"\g<1>{LONG_PRINT}", short.read_text()
    )
    assert n, "PrusaSlicer wrote no time estimate"
    long.write_text(text)
    return {"short": short, "long": long}


def _api(farm: RunningFarm) -> httpx.Client:
    token = (farm.data_dir / "admin.token").read_text().strip()
    return httpx.Client(base_url=farm.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _sign_in(farm: RunningFarm, page, token: str | None = None) -> None:  # type: ignore[no-untyped-def]
    env = {**farm.env, **({"FARM_TOKEN": token} if token else {})}
    done = run_farm(env, "open", "--no-browser", timeout=60)
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip().splitlines()[-1]
    assert link.startswith(f"{farm.url}/signin/")
    page.goto(link)
    assert page.url == f"{farm.url}/"
    page.wait_for_selector("#printers article.card")


def _submit(farm: RunningFarm, path: Path, printer: str) -> int:
    code, build = farm.cli_json("submit", str(path), "--printer", printer)
    assert code == 0, build
    return int(build["jobs"][0]["id"])  # type: ignore[call-overload]


def _errors(page) -> list[str]:  # type: ignore[no-untyped-def]
    found: list[str] = []
    page.on("pageerror", lambda exc: found.append(str(exc)))
    page.on("console", lambda msg: found.append(msg.text) if msg.type == "error" else None)
    return found


def test_sign_in_watch_progress_live_cancel_and_clear_a_bed(farm: RunningFarm, browser, gcode) -> None:  # type: ignore[no-untyped-def]
    api = _api(farm)
    names = sorted(p["name"] for p in farm.printers)
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    page = context.new_page()
    errors = _errors(page)
    _sign_in(farm, page)
    shown = page.eval_on_selector_all("#printers article.card", "cards => cards.map(c => c.dataset.printer)")
    assert shown == names
    assert page.locator("#who").inner_text() == "admin (admin)"
    page.wait_for_selector("#live.on")  # the event stream is open
    page.evaluate("window.notReloaded = true")

    # A long print on one MINI whose bed someone must clear after each print (the emulators'
    # beds empty themselves otherwise): its card's bar moves while the page stays the same page.
    mini = next(p["name"] for p in farm.printers if p["model"] == "MINI")
    assert api.patch(f"/api/printers/{mini}", json={"auto_eject": False}).status_code == 200
    job = _submit(farm, gcode["long"], mini)
    card = page.locator(f'article[data-printer="{mini}"]')
    bar = card.locator('[role="progressbar"]')
    bar.wait_for(timeout=60_000)
    first = float(bar.get_attribute("aria-valuenow") or 0)
    moved = lambda: float(bar.get_attribute("aria-valuenow") or 0) >= first + 2  # noqa: E731
    wait_until(moved, 30, "the bar to move", 0.1)
    assert page.evaluate("window.notReloaded") is True
    assert card.locator(".state").inner_text() == "printing"
    assert f"#{job}" in card.inner_text() and "left, ends" in card.inner_text()
    # A second job for the same printer waits in the queue meanwhile; so does a CAD part in a
    # material no printer has loaded, with the preview the worker rendered of it.
    queued = _submit(farm, gcode["short"], mini)
    page.locator(f'#queue li[data-job="{queued}"]').wait_for(timeout=60_000)
    code, build = farm.cli_json(
        "submit", str(EXAMPLES / "spacer.py"), "--printer-model", "MK3S", "--material", "PETG"
    )
    assert code == 0, build
    petg = build["jobs"][0]["id"]  # type: ignore[call-overload]
    thumb = page.locator(f'#queue li[data-job="{petg}"] img.thumb')
    thumb.wait_for(timeout=120_000)
    wait_until(lambda: thumb.evaluate("img => img.complete && img.naturalWidth") > 0, 10, "the preview")
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)

    # Its part in 3D: the canvas draws the STL the CAD worker made; the arrow keys turn it.
    page.locator(f'#queue li[data-job="{petg}"] [data-action^="view:"]').click()
    canvas = page.locator("#viewer-canvas")
    wait_until(lambda: canvas.get_attribute("data-triangles"), 20, "the mesh to load")
    assert int(canvas.get_attribute("data-triangles") or 0) > 100
    before = canvas.evaluate(PART_PIXELS)
    assert before["part"] > 0.05 * before["all"], before  # the part covers the view, in its colour
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowUp")
    after = canvas.evaluate(PART_PIXELS)
    assert after["part"] > 0.05 * after["all"] and after["hash"] != before["hash"], (before, after)
    page.locator("#viewer").screenshot(path=str(DOCS / "dashboard-3d.png"))
    page.keyboard.press("Escape")
    page.locator("#viewer").wait_for(state="hidden")

    # Cancel the printing job from its card (a second press confirms): the half print is on the bed.
    cancel = card.locator(f'[data-action="cancel:{job}"]')
    cancel.click()
    assert cancel.inner_text() == "Really cancel?"
    cancel.click()
    wait_until(lambda: api.get(f"/api/jobs/{job}").json()["state"] == "cancelled", 10, "the cancel")
    card.locator(f'[data-action="cancel:{job}"]').wait_for(state="detached", timeout=10_000)
    banner = card.locator(".clear-bed")
    banner.wait_for(timeout=10_000)
    assert "Bed needs clearing" in banner.inner_text()
    state = card.locator(".state")
    wait_until(lambda: state.inner_text() == "awaiting clear", 20, "the print to stop", 0.1)
    card.screenshot(path=str(DOCS / "dashboard-clear-bed.png"))
    assert api.get(f"/api/jobs/{queued}").json()["state"] == "ready"  # it waits for the bed

    # Clear it by keyboard: Tab from the top of the page to the button, Enter. The queued job prints.
    page.locator(".skip").focus()
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.action") == f"clear:{mini}":
            break
    else:
        pytest.fail("Tab never reached the 'Bed is clear' button")
    page.keyboard.press("Enter")
    wait_until(lambda: api.get(f"/api/jobs/{queued}").json()["state"] == "done", 120, "the queued job")
    page.locator(f'#queue li[data-job="{queued}"]').wait_for(state="detached", timeout=10_000)
    banner.wait_for(timeout=10_000)  # and its part is on the bed now
    # The MINI's camera took a still as the print ended: the card shows it, without a reload.
    ended = api.get(f"/api/jobs/{queued}/snapshots").json()[-1]
    assert ended["moment"] == "end"
    card.locator(f'.still img[data-snapshot="{ended["id"]}"]').wait_for(timeout=10_000)
    assert api.post(f"/api/printers/{mini}/clear").status_code == 200
    banner.wait_for(state="detached", timeout=10_000)
    api.patch(f"/api/printers/{mini}", json={"auto_eject": True})

    # History: the cancelled print and the finished one appear without a reload; the form filters.
    history = page.locator("#history")
    history.locator(f'li[data-history="{queued}"]').wait_for(timeout=10_000)
    assert "cancelled" in history.locator(f'li[data-history="{job}"]').inner_text()
    assert mini in page.locator("#history-printers tbody").inner_text()
    page.locator('#history-form select[name="state"]').select_option("cancelled")
    page.locator('#history-form button[type="submit"]').click()
    history.locator(f'li[data-history="{queued}"]').wait_for(state="detached", timeout=10_000)
    assert history.locator(f'li[data-history="{job}"]').count() == 1
    assert "0 done" in page.locator("#history-totals").inner_text()
    page.locator('#history-form select[name="state"]').select_option("")
    page.locator('#history-form button[type="submit"]').click()
    history.locator(f'li[data-history="{queued}"]').wait_for(timeout=10_000)

    # The admin loads PETG (in Galaxy Black) on the MK3S through its settings dialog: the card's
    # swatch turns black and the PETG part waiting in the queue goes to that printer.
    mk3s = next(p["name"] for p in farm.printers if p["model"] == "MK3S")
    page.locator(f'[data-action="settings:{mk3s}"]').click()
    dialog = page.locator("#settings")
    dialog.locator('input[name="material"]').fill("Unobtainium")
    dialog.locator('button[value="save"]').click()
    wait_until(lambda: page.locator("#settings-problem").inner_text(), 10, "the refusal")
    assert "Unobtainium" in page.locator("#settings-problem").inner_text() and dialog.is_visible()
    assert errors == [f"Failed to load resource: the server responded with a status of 422 {UNPROCESSABLE}"]
    errors.clear()  # that one was asked for
    dialog.locator('input[name="material"]').fill("PETG")
    dialog.locator('input[name="color"]').fill("Galaxy Black")
    dialog.locator('button[value="save"]').click()
    dialog.wait_for(state="hidden")
    loaded = next(p for p in api.get("/api/printers").json() if p["name"] == mk3s)
    assert (loaded["material"], loaded["color"]) == ("PETG", "Galaxy Black")
    swatch = page.locator(f'article[data-printer="{mk3s}"] .swatch')
    wait_until(
        lambda: swatch.evaluate("s => getComputedStyle(s).backgroundColor") == "rgb(0, 0, 0)", 10, "swatch"
    )
    wait_until(
        lambda: api.get(f"/api/jobs/{petg}").json()["state"] in ("printing", "done"), 120, "the PETG job"
    )
    page.locator(f'#queue li[data-job="{petg}"]').wait_for(state="detached", timeout=10_000)
    # Printed, it joins the history with its part's picture (G-code sent as it is has none).
    wait_until(lambda: api.get(f"/api/jobs/{petg}").json()["state"] == "done", 120, "the PETG print")
    drawn = history.locator(f'li[data-history="{petg}"] img.thumb')
    drawn.wait_for(timeout=10_000)
    wait_until(lambda: drawn.evaluate("img => img.complete && img.naturalWidth") > 0, 10, "its picture")
    assert page.evaluate("window.notReloaded") is True
    assert errors == []
    context.close()


def test_take_a_snapshot_from_a_printers_card(farm: RunningFarm, browser) -> None:  # type: ignore[no-untyped-def]
    """The button asks the printer's agent for a still; it comes back through the event stream
    and the card shows it (decoded by the browser: the emulator camera's 160 x 120 PNG). A viewer
    sees the stills but has no button."""
    api = _api(farm)
    mini = sorted(p["name"] for p in farm.printers if p["model"] == "MINI")[-1]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = _errors(page)
    _sign_in(farm, page)
    page.wait_for_selector("#live.on")
    card = page.locator(f'article[data-printer="{mini}"]')
    card.locator(f'[data-action="snapshot:{mini}"]').click()

    def asked_for() -> int | None:
        newest = api.get(f"/api/printers/{mini}/snapshots", params={"limit": 1}).json()["snapshots"]
        return newest[0]["id"] if newest and newest[0]["moment"] == "request" else None

    still_id = wait_until(asked_for, 30, "the agent to answer")
    img = card.locator(f'.still img[data-snapshot="{still_id}"]')
    img.wait_for(timeout=10_000)
    size = lambda: img.evaluate("i => i.complete && [i.naturalWidth, i.naturalHeight]")  # noqa: E731
    assert wait_until(size, 10, "the still to load") == [160, 120]
    card.screenshot(path=str(DOCS / "dashboard-snapshot.png"))
    assert errors == []
    context.close()

    made = api.post("/api/tokens", json={"name": "wall-cam", "role": "viewer"})
    assert made.status_code == 201, made.text
    context = browser.new_context()
    page = context.new_page()
    _sign_in(farm, page, made.json()["token"])
    card = page.locator(f'article[data-printer="{mini}"]')
    card.locator(f'.still img[data-snapshot="{still_id}"]').wait_for(timeout=10_000)
    assert card.locator(f'[data-action="snapshot:{mini}"]').count() == 0
    context.close()


def test_a_submitter_sees_no_tokens_and_an_admin_does(farm: RunningFarm, browser) -> None:  # type: ignore[no-untyped-def]
    api = _api(farm)
    made = api.post("/api/tokens", json={"name": "alice", "role": "submitter"})
    assert made.status_code == 201, made.text
    context = browser.new_context()
    page = context.new_page()
    errors = _errors(page)
    _sign_in(farm, page, made.json()["token"])
    assert page.locator("#who").inner_text() == "alice (submitter)"
    assert page.locator("#tokens-sec").is_hidden()
    assert page.locator("#tokens li").count() == 0
    assert page.locator("text=Take out of farm").count() == 0  # an admin's action
    # Grouped by model, then filtered to the MINIs.
    page.select_option("#group", "model")
    shown = "nodes => nodes.map(n => n.tagName === 'H3' ? n.textContent : n.dataset.printer)"
    minis = sorted(p["name"] for p in farm.printers if p["model"] == "MINI")
    mk3s = [p["name"] for p in farm.printers if p["model"] == "MK3S"]
    assert page.eval_on_selector_all("#printers > *", shown) == ["MINI", *minis, "MK3S", *mk3s]
    page.fill("#filter", "mini")
    wait_until(lambda: page.eval_on_selector_all("#printers > *", shown) == ["MINI", *minis], 5, "the filter")
    page.fill("#filter", "")

    # Alice submits the bracket through the form with a longer arm, in ASA (no printer has it: it
    # stays queued), and turns the part the worker made in the 3D view.
    page.set_input_files("#submit-file", str(EXAMPLES / "bracket.py"))
    length = page.locator('#submit-params input[name="param:length"]')
    length.wait_for()
    assert length.input_value() == "40"  # the default, read from the source
    assert page.locator("#submit-entry").input_value() == "bracket"
    length.fill("60")
    page.fill('#submit-form input[name="printer_model"]', "MK3S")
    page.fill('#submit-form input[name="material"]', "ASA")
    page.click('#submit-form button[type="submit"]')
    result = page.locator("#submit-result")
    wait_until(lambda: result.get_attribute("data-build"), 20, "the submit")
    build = api.get(f"/api/builds/{result.get_attribute('data-build')}").json()
    assert build["owner"] == "alice" and build["params"]["length"] == 60 and build["entry"] == "bracket"
    job = build["jobs"][0]["id"]
    view = page.locator(f'#queue li[data-job="{job}"] [data-action^="view:"]')
    view.wait_for(timeout=120_000)
    view.click()
    canvas = page.locator("#viewer-canvas")
    wait_until(lambda: canvas.get_attribute("data-triangles"), 20, "the mesh to load")
    drawn = canvas.evaluate(PART_PIXELS)
    assert drawn["part"] > 0.03 * drawn["all"], drawn
    page.locator("#viewer").screenshot(path=str(DOCS / "dashboard-3d-bracket.png"))
    page.keyboard.press("Escape")
    assert errors == []
    refused = page.evaluate("fetch('/api/tokens').then(r => r.status)")
    assert refused == 403  # not only hidden
    context.close()

    context = browser.new_context()
    page = context.new_page()
    _sign_in(farm, page)
    errors = _errors(page)
    page.locator('#tokens li[data-token="alice"]').wait_for()
    assert page.locator("#tokens-sec").is_visible()
    assert errors == []
    context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_phone_gets_one_column_in_either_scheme(farm: RunningFarm, browser, scheme: str) -> None:  # type: ignore[no-untyped-def]
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
        color_scheme=scheme,
    )  # fmt: skip
    page = context.new_page()
    errors = _errors(page)
    _sign_in(farm, page)
    page.wait_for_selector("#live.on")  # live on a phone too (and so in its screenshot)
    # Measured in one go: a card is redrawn whenever its printer reports.
    boxes = page.eval_on_selector_all(
        "#printers article.card", "cards => cards.map(c => c.getBoundingClientRect().toJSON())"
    )
    assert len(boxes) == 3
    assert len({round(b["x"]) for b in boxes}) == 1  # one column
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= 390 for b in boxes)
    wide = """() => [...document.querySelectorAll('body *')]
      .filter(e => e.getBoundingClientRect().right > 390)
      .map(e => `${e.tagName}#${e.id}: ${(e.textContent || '').slice(0, 60)}`).slice(-5)"""
    # nothing scrolls sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 390, page.evaluate(wide)
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(v) for v in re.findall(r"\d+", background)[:3])
    assert (red + green + blue < 150) == (scheme == "dark"), background
    page.screenshot(path=str(DOCS / f"dashboard-phone-{scheme}.png"))
    assert errors == []
    context.close()


# Pixels of each colour the 3MF of show_names_colors.py gives its objects: orange, blue, green.
OBJECT_PIXELS = """c => {
  const copy = document.createElement('canvas');
  copy.width = c.width; copy.height = c.height;
  const ctx = copy.getContext('2d');
  ctx.drawImage(c, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  const n = {orange: 0, blue: 0, green: 0};
  for (let i = 0; i < d.length; i += 4) {
    const [r, g, b] = [d[i], d[i + 1], d[i + 2]];
    if (r > 60 && r > g * 1.3 && g > b * 1.5) n.orange++;
    else if (b > 60 && b > 2 * r && b > 2 * g) n.blue++;
    else if (g > 60 && g > 2 * r && g > 2 * b) n.green++;
  }
  return n;
}"""


def test_preview_a_design_then_submit_it_and_read_its_build(farm: RunningFarm, browser) -> None:  # type: ignore[no-untyped-def]
    """The bracket previewed with a longer arm: drawn in 3D before any job exists; then submitted
    (the CAD worker's cache has it); its build's page shows the pipeline and where it came from."""
    api = _api(farm)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = _errors(page)
    _sign_in(farm, page)
    jobs_before = {j["id"] for j in api.get("/api/jobs", params={"limit": 500}).json()}
    page.set_input_files("#submit-file", str(EXAMPLES / "bracket.py"))
    length = page.locator('#submit-params input[name="param:length"]')
    length.wait_for()
    assert page.locator("#entry-file").is_hidden()  # a lone .py: no project file to choose
    assert page.locator('#submit-form input[name="per_plate"]').is_visible()
    length.fill("70")
    page.fill('#submit-form input[name="material"]', "ASA")  # no printer has it: the job stays queued
    page.fill('#submit-form input[name="printer_model"]', "MK3S")
    page.click("#preview-button")
    canvas = page.locator("#viewer-canvas")
    wait_until(lambda: canvas.get_attribute("data-triangles"), 180, "the preview to be built and drawn")
    drawn = canvas.evaluate(PART_PIXELS)
    assert drawn["part"] > 0.03 * drawn["all"], drawn
    preview_id = page.locator("#submit-result").get_attribute("data-preview")
    preview = api.get(f"/api/builds/{preview_id}").json()
    assert preview["preview_only"] and preview["jobs"] == [] and preview["slices"] == []
    assert preview["stage"] == "ready" and preview["params"]["length"] == 70
    assert {j["id"] for j in api.get("/api/jobs", params={"limit": 500}).json()} == jobs_before
    page.locator("#viewer").screenshot(path=str(DOCS / "dashboard-preview.png"))
    page.keyboard.press("Escape")

    # Submitted as previewed: the same part, from the worker's cache.
    page.click('#submit-form button[type="submit"]')
    result = page.locator("#submit-result")
    wait_until(lambda: result.get_attribute("data-build"), 20, "the submit")
    build_id = int(result.get_attribute("data-build") or 0)
    wait_until(lambda: api.get(f"/api/builds/{build_id}").json()["stl"], 120, "the CAD result")
    build = api.get(f"/api/builds/{build_id}").json()
    assert build["stl"] == preview["stl"] and len(build["jobs"]) == 1
    # The worker logs the build after it has sent the result: the line may come a moment later.
    logged = lambda: f"build {build_id} meshed in" in (farm.data_dir / "logs" / "worker.log").read_text()  # noqa: E731
    wait_until(logged, 10, "the worker's log line")
    worker_log = (farm.data_dir / "logs" / "worker.log").read_text()
    assert re.search(rf"build {build_id} meshed in [\d.]+ s \(cache hit\)", worker_log), worker_log

    # Its page, from its job in the queue: the pipeline and the provenance.
    job = build["jobs"][0]["id"]
    opener = page.locator(f'#queue li[data-job="{job}"] [data-action="build:{build_id}"]')
    opener.wait_for(timeout=120_000)
    # One click from the queue: which printers could take it (`farm jobs explain`), and why not.
    row = page.locator(f'#queue li[data-job="{job}"]')
    row.locator(f'details[data-explain="{job}"] summary').click()
    explained = row.locator(f'details[data-explain="{job}"] pre')
    wait_until(lambda: "the job needs ASA" in explained.inner_text(), 10, "the explanation")
    assert all(p["name"] in explained.inner_text() for p in farm.printers), explained.inner_text()
    # Its priority raised from the row: the farm has it, and the row shows it.
    row.locator(f'[data-action="up:{job}"]').click()
    wait_until(lambda: api.get(f"/api/jobs/{job}").json()["priority"] == 1, 10, "the new priority")
    wait_until(lambda: row.locator("output").inner_text() == "1", 10, "the row to show it")
    opener.click()
    dialog = page.locator("#build")
    steps = dialog.locator(".pipeline li")
    wait_until(lambda: steps.count() >= 4, 20, "the pipeline")
    kinds = steps.evaluate_all("items => items.map(i => [i.dataset.step, i.dataset.state])")
    assert kinds[0] == ["source", "done"] and kinds[1] == ["cad", "done"], kinds
    assert ["slice", "done"] in kinds and ["job", "ready"] in kinds, kinds
    provenance = dialog.locator('[data-part="provenance"]').inner_text()
    assert build["source_sha256"] in provenance and "length = 70" in provenance and "bracket" in provenance
    assert "MK3S" in dialog.locator('[data-part="estimates"]').inner_text()
    assert dialog.locator('[data-part="errors"]').count() == 0
    links = dialog.locator('[data-part="artifacts"] a').evaluate_all("links => links.map(a => a.textContent)")
    assert {"source", "STL", "3MF", "preview", "G-code for MK3S"} <= set(links), links
    dialog.screenshot(path=str(DOCS / "dashboard-build.png"))
    page.keyboard.press("Escape")
    assert api.post(f"/api/jobs/{job}/cancel").status_code == 200
    assert errors == []
    context.close()


def test_a_failed_build_shows_its_error_first_and_a_multi_object_part_in_colours(  # type: ignore[no-untyped-def]
    farm: RunningFarm, browser, tmp_path: Path
) -> None:
    api = _api(farm)
    broken = tmp_path / "broken.py"
    broken.write_text("def part():\n    raise ValueError('the wall is too thin')\n")
    code, failed = farm.cli_json("submit", str(broken), "--printer-model", "MK3S")
    assert code == 0, failed
    code, shown = farm.cli_json(
        "submit", str(REPO / "tests" / "designs" / "show_names_colors.py"), "--printer-model", "MK3S",
        "--material", "ASA",
    )  # fmt: skip
    assert code == 0, shown
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = _errors(page)
    _sign_in(farm, page)

    # The failure, from the "Failed recently" list: what went wrong comes first, then the pipeline.
    failed_job = failed["jobs"][0]["id"]  # type: ignore[call-overload]
    opener = page.locator(f'#failed li[data-job="{failed_job}"] [data-action^="build:"]')
    opener.wait_for(timeout=120_000)
    opener.click()
    dialog = page.locator("#build")
    dialog.locator('[data-part="errors"]').wait_for()
    first = dialog.locator("#build-body > *").first
    assert first.get_attribute("data-part") == "errors" and "the wall is too thin" in first.inner_text()
    assert dialog.locator('.pipeline li[data-step="cad"]').get_attribute("data-state") == "failed"
    page.keyboard.press("Escape")

    # Three objects shown with names and colours: drawn apart, each in its colour, named below.
    wait_until(lambda: api.get(f"/api/builds/{shown['id']}").json()["threemf"], 180, "the 3MF")
    job = shown["jobs"][0]["id"]  # type: ignore[call-overload]
    opener = page.locator(f'#queue li[data-job="{job}"] [data-action^="build:"]')
    opener.wait_for(timeout=120_000)
    opener.click()
    page.locator(f'[data-action="view3d:{shown["id"]}"]').click()
    canvas = page.locator("#viewer-canvas")
    wait_until(lambda: canvas.get_attribute("data-objects"), 30, "the 3MF to be drawn")
    assert canvas.get_attribute("data-objects") == "3"
    names = page.locator("#viewer-objects li").evaluate_all("items => items.map(i => i.dataset.object)")
    assert sorted(names) == ["ball", "base", "peg"]
    colours = canvas.evaluate(OBJECT_PIXELS)
    assert all(count > 200 for count in colours.values()), colours
    page.locator("#viewer").screenshot(path=str(DOCS / "dashboard-3d-objects.png"))
    page.keyboard.press("Escape")
    assert api.post(f"/api/jobs/{job}/cancel").status_code == 200
    assert errors == []
    context.close()


BLOCK_MAIN = """from build123d import Box
from mr import customizable
from parts.shape import BlockParams


@customizable
def block(params: BlockParams):
    return Box(params.length, params.width, 6 if params.style == "low" else 12)
"""
BLOCK_PARAMS = """from typing import Literal

from pydantic import BaseModel, Field


class BlockParams(BaseModel):
    length: float = Field(30, ge=10, le=80, description="Length, mm")
    width: float = Field(20, ge=5, le=40)
    style: Literal["low", "tall"] = "low"
"""


def test_a_zipped_project_dropped_on_the_form_with_bounds_and_choices(  # type: ignore[no-untyped-def]
    farm: RunningFarm, browser, tmp_path: Path
) -> None:
    """A project zipped in its folder (a customizable whose pydantic model lives in another file of
    it) dropped on the form: its .py files to choose the entry file from, the model's fields with
    their bounds (the browser refuses 500 for a length of at most 80) and a Literal as a list;
    previewed in 3D (the zip went to the worker as a project archive), then submitted with two per
    plate."""
    import base64
    import zipfile

    api = _api(farm)
    made = api.post("/api/tokens", json={"name": "bob", "role": "submitter"})
    assert made.status_code == 201, made.text
    archive = tmp_path / "block.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("block/main.py", BLOCK_MAIN)
        z.writestr("block/parts/__init__.py", "")
        z.writestr("block/parts/shape.py", BLOCK_PARAMS)
        z.writestr("block/README.md", "a block")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = _errors(page)
    _sign_in(farm, page, made.json()["token"])
    transfer = page.evaluate_handle(
        """([b64, name]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name, {type: "application/zip"}));
          return dt;
        }""",
        [base64.b64encode(archive.read_bytes()).decode(), archive.name],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    entry_file = page.locator("#submit-entry-file")
    entry_file.wait_for()
    options = entry_file.locator("option").evaluate_all("os => os.map(o => o.value)")
    assert (
        options == ["main.py", "parts/__init__.py", "parts/shape.py"]
        and entry_file.input_value() == "main.py"
    )
    length = page.locator('#submit-params input[name="param:length"]')
    length.wait_for()
    assert page.locator("#submit-entry").input_value() == "block"
    assert (length.input_value(), length.get_attribute("min"), length.get_attribute("max")) == (
        "30",
        "10",
        "80",
    )
    assert "length (float, ≥ 10, ≤ 80)" in page.locator("#submit-params").inner_text()
    assert "Length, mm" in page.locator("#submit-params").inner_text()
    style = page.locator('#submit-params select[name="param:style"]')
    assert style.locator("option").evaluate_all("os => os.map(o => o.textContent)") == ["low", "tall"]
    assert style.input_value() == '"low"'
    length.fill("500")
    page.click('#submit-form button[type="submit"]')  # the browser refuses it: nothing is sent
    assert length.evaluate("i => i.validity.rangeOverflow") is True
    assert page.locator("#submit-result").get_attribute("data-build") is None
    length.fill("50")
    style.select_option(label="tall")
    page.fill('#submit-form input[name="printer_model"]', "MK3S")
    page.fill('#submit-form input[name="material"]', "ASA")  # no printer has it: the job stays queued
    page.fill('#submit-form input[name="copies"]', "2")
    page.fill('#submit-form input[name="per_plate"]', "2")
    page.locator("#submit-sec").screenshot(path=str(DOCS / "dashboard-submit-project.png"))

    page.click("#preview-button")
    canvas = page.locator("#viewer-canvas")
    wait_until(lambda: canvas.get_attribute("data-triangles"), 180, "the project's preview to be drawn")
    drawn = canvas.evaluate(PART_PIXELS)
    assert drawn["part"] > 0.03 * drawn["all"], drawn
    preview = api.get(f"/api/builds/{page.locator('#submit-result').get_attribute('data-preview')}").json()
    assert preview["project"] is True and preview["source"] == "main.py"
    assert preview["bbox"][1][0] - preview["bbox"][0][0] == pytest.approx(50, abs=0.01)
    assert preview["bbox"][1][2] - preview["bbox"][0][2] == pytest.approx(12, abs=0.01)  # tall
    page.keyboard.press("Escape")

    page.click('#submit-form button[type="submit"]')
    result = page.locator("#submit-result")
    wait_until(lambda: result.get_attribute("data-build"), 20, "the submit")
    build = api.get(f"/api/builds/{result.get_attribute('data-build')}").json()
    assert build["owner"] == "bob" and build["project"] is True and build["entry"] == "block"
    assert build["params"] == {"length": 50.0, "width": 20.0, "style": "tall"}
    assert build["source_sha256"] == preview["source_sha256"]  # the same archive, packed the same way
    assert [j["copies"] for j in build["jobs"]] == [2]  # two on one plate: one job
    assert errors == []
    for job in build["jobs"]:
        assert api.post(f"/api/jobs/{job['id']}/cancel").status_code == 200
    context.close()
