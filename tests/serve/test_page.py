"""The web page in headless Chromium against the real server and a tiny random model (constrained decoding,
so the answer has all three fields): pick a photo, see it and what the model read; errors shown; the token
asked for; nothing loaded from anywhere but the server. Screenshots go to the test's tmp_path."""

import base64
import re
import sys
from pathlib import Path

import httpx
import pytest

from productlens.catalog.photos import PhotoSpec, draw_photo, encode_jpeg
from productlens.phi3v.tiny import save_tiny_model
from productlens.predict import Predictor
from productlens.serve.app import ServeSettings, create_app, serve_in_thread
from productlens.task.constrain import Constraints

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from browser import chromium_page

CATEGORIES = ("TRENCH COATS", "SCARVES", "CROSSBODY")
TEXTS = [
    "Product: Kensington Heritage Trench Coat, Category: TRENCH COATS, Full Price: 2290.00",
    "Product: Check Cashmere Scarf, Category: SCARVES, Full Price: 590.00",
]
TOKEN = "page-token"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    folder = save_tiny_model(tmp_path_factory.mktemp("page") / "tiny-phi3v", TEXTS)
    return Predictor.load(
        folder, max_new_tokens=64, constraints=Constraints(categories=CATEGORIES, price=True)
    )


@pytest.fixture(scope="module")
def url(predictor):
    with serve_in_thread(create_app(predictor, ServeSettings(), model_name="tiny-phi3v")) as base:
        yield base


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "trench.jpg"
    spec = PhotoSpec("trench", "vintage_check", "twill", (196, 164, 122), 0.75, 448, 560, seed=3)
    path.write_bytes(encode_jpeg(draw_photo(spec)))
    return path


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def watch_busy(page) -> None:
    """Record whether the 'Reading…' status was ever shown (a MutationObserver, so a fast answer still counts)."""
    page.evaluate(
        """() => {
          window.sawBusy = false;
          const status = document.getElementById('status');
          new MutationObserver(() => { if (status.classList.contains('on')) window.sawBusy = true; })
            .observe(status, { attributes: true });
        }"""
    )


def wait_for_answer(page) -> None:
    page.wait_for_function(
        "() => !document.getElementById('status').classList.contains('on') && window.sawBusy"
    )


def test_page_reads_a_photo_like_the_api(url, photo, tmp_path):
    api = httpx.post(
        f"{url}/v1/predict", files={"file": ("t.jpg", photo.read_bytes(), "image/jpeg")}, timeout=120
    )
    want = api.json()["predictions"][0]
    assert (
        want["title"] and want["category"] in CATEGORIES and want["price"] is not None
    )  # constrained answer

    with chromium_page() as page:
        seen: list[str] = []
        page.on("request", lambda request: seen.append(request.url))
        page.goto(f"{url}/")
        page.wait_for_function("() => document.getElementById('model').textContent.includes('tiny-phi3v')")
        assert page.title() == "productlens"
        assert not page.is_visible("#token-row")  # an open server asks for no token
        watch_busy(page)
        page.set_input_files("#file", str(photo))
        wait_for_answer(page)

        assert page.text_content("#title") == want["title"]
        assert page.text_content("#category") == want["category"]
        assert digits(page.text_content("#price")) == digits(f"{want['price']:.2f}")
        assert page.text_content("#raw") == want["raw_text"]
        assert not page.is_visible("#error")
        assert page.evaluate("() => document.getElementById('preview').naturalWidth") == 448
        assert "Answered in" in page.text_content("#notes")
        page.screenshot(path=str(tmp_path / "page-answer.png"), full_page=True)

    # only the page itself, its API and the photo's blob: no CDN, no fonts, nothing from elsewhere
    assert seen and all(u.startswith(url) or u.startswith("blob:") or u.startswith("data:") for u in seen), (
        seen
    )
    assert {u.removeprefix(url) for u in seen if u.startswith(url)} >= {"/", "/health", "/v1/predict"}


def test_page_shows_the_servers_error_then_recovers(url, photo, tmp_path):
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_bytes(b"these are my notes, not a photo")
    with chromium_page() as page:
        page.goto(f"{url}/")
        watch_busy(page)
        page.set_input_files("#file", str(not_a_photo))
        page.wait_for_selector("#error.on")
        message = page.text_content("#error")
        assert "notes.jpg" in message and "not a JPEG" in message  # the API's own words
        assert page.text_content("#title") == "—"
        assert page.is_visible("#nopreview") and not page.is_visible("#preview")
        page.screenshot(path=str(tmp_path / "page-error.png"), full_page=True)

        page.evaluate("() => { window.sawBusy = false; }")
        page.set_input_files("#file", str(photo))
        wait_for_answer(page)
        assert not page.is_visible("#error") and not page.is_visible("#nopreview")
        assert page.text_content("#category") in CATEGORIES

        # dropping a photo on the drop zone reads it too
        page.evaluate("() => { window.sawBusy = false; }")
        dropped = page.evaluate_handle(
            """(b64) => {
              const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
              const transfer = new DataTransfer();
              transfer.items.add(new File([bytes], 'dropped.jpg', { type: 'image/jpeg' }));
              return transfer;
            }""",
            base64.b64encode(photo.read_bytes()).decode(),
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
        wait_for_answer(page)
        assert page.text_content("#category") in CATEGORIES and page.text_content("#raw")


def test_page_asks_for_the_token_when_the_server_has_one(predictor, photo, tmp_path):
    app = create_app(predictor, ServeSettings(token=TOKEN), model_name="tiny-phi3v")
    with serve_in_thread(app) as base, chromium_page() as page:
        page.goto(f"{base}/")
        page.wait_for_selector("#token-row.on")  # /health says a token is needed

        watch_busy(page)
        page.set_input_files("#file", str(photo))  # no token yet: the API refuses
        page.wait_for_selector("#error.on")
        assert "token" in page.text_content("#error")
        page.screenshot(path=str(tmp_path / "page-token-needed.png"), full_page=True)

        page.fill("#token", TOKEN)
        page.evaluate("() => { window.sawBusy = false; }")
        page.press("#token", "Enter")  # reads the same photo again, now with the token
        wait_for_answer(page)
        assert not page.is_visible("#error")
        assert page.text_content("#category") in CATEGORIES
        page.screenshot(path=str(tmp_path / "page-token.png"), full_page=True)
