"""A real headless Chromium drives the annotation page: the name, keys 1 / 2 / 3 / s / u, the buttons and
clicks on the images give exactly the right rows in the SQLite database (the page's random left/right
mapped back to key_0 / key_1), and a prompt, a question and guidelines holding markup are shown as text
and never run. Holding the mouse on an image, or z, zooms it and chooses nothing; on a laptop's 1366 x 620
window both images are shown side by side at 400 px or more. The page claims its name and keeps
the secret (a reload goes on as the same annotator, undo included), and shows the server's JSON errors: a
name taken by another browser, a full disk (a real tmpfs, where one can be mounted).

Needs Debian's chromium and chromium-driver (``.ci/run`` installs them) and selenium (the test extra).
Without them the test is skipped with the reason, unless $CI or $PREFKIT_REQUIRE_BROWSER is set: then it
fails, so CI cannot pass without having run it. The screenshot goes to $PREFKIT_ARTIFACTS (default
tests/artifacts/annotate.png).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from annotate_util import Server, artifacts_dir, db_rows, fill_disk, small_tmpfs

pytestmark = pytest.mark.slow  # a real Chromium per test: CI and README's command run it

PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2"> a cat & a "dog"'
CHROMIUM = os.environ.get("PREFKIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PREFKIT_CHROMEDRIVER", "/usr/bin/chromedriver")


def _require_browser() -> None:
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            missing.append(f"{path} (apt-get install {package})")
    if missing:
        reason = "the browser test needs " + ", ".join(missing)
        if os.environ.get("CI") or os.environ.get("PREFKIT_REQUIRE_BROWSER"):
            pytest.fail(reason + " ($CI / $PREFKIT_REQUIRE_BROWSER is set: it must run)")
        pytest.skip(reason)


@pytest.fixture
def browser():
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def script_dataset(tiny_models, tmp_path, cli) -> Path:
    """One prompt that is markup, 4 samples: 6 pairs."""
    out = tmp_path / "ds"
    args = ["generate", "--out", out, "--model", tiny_models["sd3"], "--prompt", PAYLOAD]
    res = cli(args + ["--samples-per-prompt", "4", "--steps", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def wait_for(predicate, what: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_keys_and_clicks_store_the_right_rows(browser, script_dataset):
    from selenium.webdriver.common.by import By

    ds = script_dataset
    el = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731

    def shown() -> dict:
        """The pair on screen once both images have loaded: pair id, left key, right key."""
        return browser.execute_script(
            "const l = document.getElementById('img-left'), r = document.getElementById('img-right');"
            "if (!document.body.dataset.pairId || !l.complete || !r.complete || !l.naturalWidth"
            " || !r.naturalWidth) return null;"
            "return {pair_id: document.body.dataset.pairId, left: l.dataset.key, right: r.dataset.key};"
        )

    def act(how, before: dict | None, n_rows: int) -> dict:
        """Press a key or click a button; wait for the new row; return it."""
        how()
        rows = wait_for(lambda: len(db_rows(ds)) > n_rows and db_rows(ds), "the vote's row")
        assert len(rows) == n_rows + 1
        return rows[-1]

    def expect_row(row: dict, pair: dict, side: str) -> None:
        k0, k1 = sorted((pair["left"], pair["right"]))
        winner = {"left": pair["left"], "right": pair["right"]}.get(side)
        choice = side if winner is None else ("0" if winner == k0 else "1")
        assert (row["annotator"], row["key_0"], row["key_1"]) == ("alice", k0, k1)
        assert (row["choice"], row["left_key"], row["undone_at"]) == (choice, pair["left"], None)
        assert isinstance(row["time_ms"], int) and row["time_ms"] >= 0

    def next_shown(previous: str) -> dict:
        return wait_for(lambda: (s := shown()) and s["pair_id"] != previous and s, "the next pair")

    with Server(ds) as server:
        browser.get(f"http://127.0.0.1:{server.port}/")
        # the name is asked once
        wait_for(lambda: el("#name-input").is_displayed(), "the name form")
        el("#name-input").send_keys("alice")
        el("#name-submit").click()
        pair = wait_for(shown, "the first pair")
        # the name was claimed: its secret is kept in this browser, nowhere in the page
        kept = browser.execute_script("return JSON.parse(localStorage.getItem('prefkit-secrets'))")
        assert list(kept) == ["alice"] and len(kept["alice"]) >= 40
        assert kept["alice"] not in browser.page_source
        # the prompt is text: shown literally, nothing of it ran
        assert el("#prompt").text == PAYLOAD
        assert browser.execute_script("return typeof window.__pwned") == "undefined"
        assert browser.execute_script("return document.querySelectorAll('#prompt *').length") == 0
        # the next pair's images are fetched before they are needed (pairs of one prompt share samples:
        # the current pair's 2 images and at least 1 new one)
        images = (
            "return [...new Set(performance.getEntriesByType('resource').map(e => e.name)"
            ".filter(n => n.includes('/image/')))]"
        )
        wait_for(lambda: len(browser.execute_script(images)) >= 3, "the prefetched pair's images")
        time.sleep(0.3)
        shot = artifacts_dir() / "annotate.png"
        assert browser.save_screenshot(str(shot))
        print(f"\nannotate page screenshot: {shot}")

        body = el("body")
        rows = 0
        decided = []
        for key, side in (("1", "left"), ("2", "right"), ("3", "tie"), ("s", "skip")):
            row = act(lambda k=key: body.send_keys(k), pair, rows)
            rows += 1
            expect_row(row, pair, side)
            decided.append((pair, row))
            pair = next_shown(pair["pair_id"])
        assert decided[0][1]["time_ms"] >= 250  # the first pair was on screen for the screenshot
        # u: the skip is undone (the row stays, marked) and its pair is back, on the same side
        body.send_keys("u")
        skipped_pair, skip_row = decided[-1]
        wait_for(lambda: db_rows(ds)[-1]["undone_at"], "the undo")
        back = wait_for(
            lambda: (s := shown()) and s["pair_id"] == skipped_pair["pair_id"] and s, "undone pair"
        )
        assert back["left"] == skip_row["left_key"]
        assert len(db_rows(ds)) == rows
        # the buttons do what the keys do
        for button, side in (("#btn-left", "left"), ("#btn-tie", "tie"), ("#btn-right", "right")):
            row = act(lambda b=button: el(b).click(), back, rows)
            rows += 1
            expect_row(row, back, side)
            if side != "right":
                back = next_shown(back["pair_id"])
        # six pairs, six decisions that count (the undone skip does not): nothing left
        wait_for(lambda: el("#done").is_displayed(), "the done message")
        assert el("#progress").text.startswith("you: 6 done, 0 to do")
        final = db_rows(ds)
        assert len(final) == 7 and sum(r["undone_at"] is not None for r in final) == 1
        assert len({(r["key_0"], r["key_1"]) for r in final if r["undone_at"] is None}) == 6
        severe = [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]
        ]
        assert severe == []
        assert shot.stat().st_size > 10_000


def shown_pair(browser) -> str | None:
    return browser.execute_script("return document.body.dataset.pairId || null")


def status_line(browser) -> tuple[str, bool]:
    """The page's status text and whether it is shown as an error."""
    return tuple(
        browser.execute_script(
            "const s = document.getElementById('status'); return [s.textContent, s.classList.contains('error')]"
        )
    )


def test_errors_from_the_server_are_shown_and_a_reload_keeps_the_name(browser, script_dataset):
    from selenium.webdriver.common.by import By

    ds = script_dataset
    el = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    with Server(ds) as server:
        server.claim("bob")  # bob works in another browser
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait_for(lambda: el("#name-input").is_displayed(), "the name form")
        el("#name-input").send_keys("bob")
        el("#name-submit").click()
        text, is_error = wait_for(lambda: (s := status_line(browser)) and s[0] and s, "an error")
        assert is_error and "already in use in another browser" in text, text
        assert el("#name-input").is_displayed() and shown_pair(browser) is None  # asked again, nothing leased
        el("#name-input").clear()
        el("#name-input").send_keys("carol")
        el("#name-submit").click()
        first = wait_for(lambda: shown_pair(browser), "carol's first pair")
        assert status_line(browser) == ("", False)
        el("body").send_keys("1")
        wait_for(lambda: len(db_rows(ds)) == 1, "carol's vote")
        # a reload: the same annotator (no name asked), and undo still takes back the vote made before it
        browser.refresh()
        wait_for(lambda: shown_pair(browser), "the pair after the reload")
        assert not el("#name-input").is_displayed() and el("#annotator-name").text == "carol"
        wait_for(lambda: el("#btn-undo").is_enabled(), "undo enabled")
        el("#btn-undo").click()
        wait_for(lambda: db_rows(ds)[0]["undone_at"], "the undo")
        wait_for(lambda: shown_pair(browser) == first, "the undone pair back")
        rows = db_rows(ds)
        assert [(r["annotator"], r["undone_at"] is not None) for r in rows] == [("carol", True)]


def test_a_full_disk_is_shown_and_the_vote_saved_once_there_is_room(browser, script_dataset, tmp_path):
    from selenium.webdriver.common.by import By

    el = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        if disk is None:
            pytest.skip("mounting a tmpfs needs root; tests/test_annotate.py injects the error in-process")
        ds = disk / "ds"
        shutil.copytree(script_dataset, ds)
        with Server(ds) as server:
            browser.get(f"http://127.0.0.1:{server.port}/")
            wait_for(lambda: el("#name-input").is_displayed(), "the name form")
            el("#name-input").send_keys("dana")
            el("#name-submit").click()
            pair = wait_for(lambda: shown_pair(browser), "the first pair")
            wait_for(lambda: el("#btn-left").is_enabled(), "the buttons")
            filler = fill_disk(disk)
            el("#btn-left").click()
            text, is_error = wait_for(
                lambda: (s := status_line(browser)) and "not saved" in s[0] and s, "error"
            )
            assert is_error and "disk is full" in text, text
            assert el("#status").is_displayed()
            assert shown_pair(browser) == pair and el("#btn-left").is_enabled()  # still here, to press again
            assert db_rows(ds) == []
            browser.save_screenshot(str(artifacts_dir() / "annotate-disk-full.png"))
            filler.unlink()
            el("#btn-left").click()
            wait_for(lambda: len(db_rows(ds)) == 1, "the vote, once there is room")
            wait_for(lambda: shown_pair(browser) not in (None, pair), "the next pair")
            assert status_line(browser) == ("saved", False)
            assert db_rows(ds)[0]["annotator"] == "dana"


QUESTION = 'Which image has more <b>cats</b>? <script>window.__pwned="q"</script>'
GUIDELINES = (
    'Look at **both** images first.\n\n<script>window.__pwned=3</script> <img src=x onerror="window.__pwned=4">\n\n'
    "- read [the paper](https://arxiv.org/abs/2311.12908)\n- never [this](javascript:window.__pwned=5)\n"
)


def images_shown(browser) -> dict | None:
    """The pair on screen once both images have loaded: pair id, left key, right key."""
    return browser.execute_script(
        "const l = document.getElementById('img-left'), r = document.getElementById('img-right');"
        "if (!document.body.dataset.pairId || !l.complete || !r.complete || !l.naturalWidth"
        " || !r.naturalWidth) return null;"
        "return {pair_id: document.body.dataset.pairId, left: l.dataset.key, right: r.dataset.key};"
    )


def test_question_guidelines_image_clicks_zoom_and_a_laptop_screen(browser, script_dataset, tmp_path):
    import hashlib

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ds = script_dataset
    el = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
    guide = tmp_path / "guidelines.md"
    guide.write_text(GUIDELINES)
    browser.set_window_size(1366, 620)  # a laptop's screen, less the browser's own bars
    with Server(ds, "--question", QUESTION, "--guidelines", str(guide)) as server:
        browser.get(f"http://127.0.0.1:{server.port}/")
        wait_for(lambda: el("#name-input").is_displayed(), "the name form")
        el("#name-input").send_keys("erin")
        el("#name-submit").click()
        pair = wait_for(lambda: images_shown(browser), "the first pair")

        # the question and the guidelines: shown, as text where they hold markup, and nothing of it ran
        assert el("#question").text == QUESTION
        guidelines = el("#guidelines")
        assert guidelines.is_displayed()
        text = guidelines.text
        assert (
            "<script>window.__pwned=3</script>" in text and '<img src=x onerror="window.__pwned=4">' in text
        )
        assert guidelines.find_element(By.TAG_NAME, "strong").text == "both"
        links = [a.get_attribute("href") for a in guidelines.find_elements(By.TAG_NAME, "a")]
        assert links == ["https://arxiv.org/abs/2311.12908"]
        assert "[this](javascript:window.__pwned=5)" in text
        found = "return document.querySelectorAll('#question *, #guidelines script, #guidelines img').length"
        assert browser.execute_script(found) == 0
        assert browser.execute_script("return typeof window.__pwned") == "undefined"

        # the laptop screen: both images side by side, each at 400 px or more, the buttons in view too
        view = browser.execute_script("return [innerWidth, innerHeight]")
        left, right = el("#img-left"), el("#img-right")
        size = {"left": left.size, "right": right.size}
        print(f"\nwindow 1366x620, viewport {view[0]}x{view[1]}: images {size}")
        for s in size.values():
            assert max(s["width"], s["height"]) >= 400, size
        assert left.location["x"] + size["left"]["width"] <= right.location["x"]  # side by side
        for e in (left, right, el("#btn-left"), el("#btn-skip")):
            assert e.location["y"] + e.size["height"] <= view[1], e.get_attribute("id")  # no scrolling
        browser.save_screenshot(str(artifacts_dir() / "annotate-laptop.png"))

        # holding the mouse button on an image zooms it (larger); letting go comes back, chooses nothing
        zoomed = "return document.body.dataset.zoom || null"
        ActionChains(browser).click_and_hold(left).perform()
        assert wait_for(lambda: browser.execute_script(zoomed), "the zoom") == "left"
        big = el("#zoom-img")
        assert big.is_displayed() and big.get_attribute("src") == left.get_attribute("src")
        assert big.size["height"] > size["left"]["height"] and big.size["width"] > size["left"]["width"]
        print(f"zoomed: {big.size}")
        browser.save_screenshot(str(artifacts_dir() / "annotate-zoom.png"))
        ActionChains(browser).release().perform()
        wait_for(lambda: not el("#zoom").is_displayed(), "the zoom to close")
        # holding z zooms the image under the pointer
        ActionChains(browser).move_to_element(right).key_down("z").perform()
        assert wait_for(lambda: browser.execute_script(zoomed), "the z zoom") == "right"
        assert el("#zoom-img").size["height"] > size["right"]["height"]
        ActionChains(browser).key_up("z").perform()
        wait_for(lambda: not el("#zoom").is_displayed(), "the z zoom to close")
        time.sleep(0.3)
        assert db_rows(ds) == [] and images_shown(browser) == pair

        # a click on an image chooses it
        sha = hashlib.sha256(GUIDELINES.encode()).hexdigest()
        for n, side in enumerate(("right", "left"), 1):
            el(f"#img-{side}").click()
            rows = wait_for(lambda n=n: len(db_rows(ds)) == n and db_rows(ds), f"the vote for {side}")
            row = rows[-1]
            k0, k1 = sorted((pair["left"], pair["right"]))
            assert (row["annotator"], row["key_0"], row["key_1"], row["left_key"]) == (
                "erin",
                k0,
                k1,
                pair["left"],
            )
            assert row["choice"] == ("0" if pair[side] == k0 else "1")
            assert (row["question"], row["guidelines_sha256"]) == (QUESTION, sha)
            pair = wait_for(
                lambda prev=pair["pair_id"]: (p := images_shown(browser)) and p["pair_id"] != prev and p,
                "the next pair",
            )
        severe = [
            e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]
        ]
        assert severe == []
