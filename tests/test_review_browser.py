"""A DIM coder in headless Chromium: log in, open the queue, accept and reject suggestions,
add a missed code through the terminology search, set the DP (and the DR of a chemotherapy
session), save; then the stored decisions and the audit trail are checked in the database."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from test_review_concurrency import KEY, key_of, review_server
from test_review_store import make_case, make_chimio_case

from cimcoder.serving.review import workflow
from cimcoder.serving.review.store import AuditEvent, Review, ReviewStay, ReviewStore

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


def import_stay(url: str, stay: object, prediction: object) -> None:
    """Queue a stay with a hand-made prediction, as `cimcoder review import` does."""
    store = ReviewStore(url)
    try:
        with store.session(write=True) as session:
            workflow.enqueue(session, stay, prediction, default_qc_rate=0.0, actor="cli")
    finally:
        store.close()


def test_coder_reviews_a_stay_in_the_browser(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = f"sqlite:///{tmp_path / 'review.db'}"
    with review_server(url, tmp_path) as (base, _proc):
        for stay_id, unit, decisions in [
            ("sej-ic-2026-001", "Cardiologie", None),
            ("sej-ic-2026-002", "Médecine interne", {"I10": "auto", "E11.9": "auto"}),
        ]:
            stay, prediction = make_case(stay_id, unit=unit, decisions=decisions)
            import_stay(url, stay, prediction)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)

            page.goto(f"{base}/review")
            expect(page).to_have_url(f"{base}/review/login?next=/review")
            page.fill("#username", "codeur-0")
            page.fill("#key", f"{KEY}0")
            page.click("button[type=submit]")

            # The queue: the stay to code is listed, the auto-coded one is apart.
            queue = page.locator("#queue")
            expect(queue).to_contain_text("sej-ic-2026-001")
            expect(queue).not_to_contain_text("sej-ic-2026-002")
            page.click("text=Auto-codés")
            expect(page.locator("#queue")).to_contain_text("sej-ic-2026-002")
            page.select_option("#filter-unit", "Cardiologie")
            page.click("text=Filtrer")
            expect(page.locator("#queue")).to_contain_text("Aucun séjour")
            page.click("text=À coder")
            page.click("text=sej-ic-2026-001")

            # The stay: evidence highlighted, suggestions grouped by decision.
            expect(page.locator("#group-auto .code-row")).to_have_count(1)
            expect(page.locator("#group-review .code-row")).to_have_count(2)
            expect(page.locator("mark.hl-accept").first).to_contain_text(
                "insuffisance cardiaque congestive décompensée"
            )
            expect(page.locator("mark.hl-review")).to_have_count(2)

            page.keyboard.press("j")  # I10
            page.keyboard.press("a")
            page.keyboard.press("j")  # E11.9
            page.keyboard.press("r")
            expect(page.locator('.code-row[data-code="I10"] .pill')).to_have_text("accepté")
            expect(page.locator('.code-row[data-code="E11.9"] .pill')).to_have_text("rejeté")
            expect(page.locator("mark.hl-reject")).to_contain_text("Diabète de type 2")
            page.fill('.code-row[data-code="E11.9"] input.reason', "ni traité ni surveillé")
            page.keyboard.press("Enter")  # leaves the field: shortcuts work again

            page.keyboard.press("/")
            page.keyboard.type("hypokali")
            page.locator('#search-results li[data-code="E87.68"]').click()
            expect(page.locator('#added-list .code-row[data-code="E87.68"]')).to_be_visible()

            page.locator('.code-row[data-code="I50.0"] .label').click()
            page.keyboard.press("d")
            expect(page.locator("#dp-value")).to_have_text("I50.0")

            shot = tmp_path / "stay.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("CIMCODER_REVIEW_SCREENSHOT"):
                shutil.copy(shot, os.environ["CIMCODER_REVIEW_SCREENSHOT"])

            page.keyboard.press("s")
            expect(page.locator("#save-message")).to_contain_text("Enregistré")
            expect(page.locator("#stay-status")).to_have_text("validé")
            browser.close()

    store = ReviewStore(url)
    with store.session() as session:
        stay = session.get(ReviewStay, "sej-ic-2026-001")
        assert (stay.status, stay.version, stay.dp_code, stay.validated_by) == (
            "validated", 2, "I50.0", "codeur-0",
        )
        review = session.scalars(select(Review).where(Review.stay_id == stay.id)).one()
        decided = {(c.code, c.action, c.final_code, c.role, c.reason) for c in review.codes}
        assert decided == {
            ("I50.0", "accept", "I50.0", "DP", None),
            ("I10", "accept", "I10", "DAS", None),
            ("E11.9", "reject", None, None, "ni traité ni surveillé"),
            ("E87.68", "add", "E87.68", "DAS", None),
        }
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.stay_id == stay.id).order_by(AuditEvent.id)
        ).all()
        assert [(e.event, e.actor) for e in events] == [
            ("stay.enqueued", "cli"), ("stay.viewed", "codeur-0"),
            ("review.saved", "codeur-0"),
        ]
        assert events[2].model_version == "run-test-1"
        assert events[2].thresholds_version == "policy-test-1"
        assert events[2].after["dp"] == "I50.0"
    store.close()


def test_coder_sets_the_dr_of_a_chemotherapy_session(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = f"sqlite:///{tmp_path / 'review.db'}"
    stay_id = "sej-chimio-2026-001"
    with review_server(url, tmp_path) as (base, _proc):
        stay, prediction = make_chimio_case(stay_id)  # C79.5 to review: not auto-coded
        import_stay(url, stay, prediction)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{base}/review/stays/{stay_id}")
            page.fill("#username", "codeur-0")
            page.fill("#key", f"{KEY}0")
            page.click("button[type=submit]")

            def row(code: str) -> str:
                return f'.code-row[data-code="{code}"]'

            # The model's DP and DR are pre-selected.
            expect(page.locator("#dp-value")).to_have_text("Z51.1")
            expect(page.locator("#dr-value")).to_have_text("C50.4")
            expect(page.locator(f"{row('C50.4')} button.dr-btn.on")).to_be_visible()
            # DR again on the DR clears it; Shift+d on the focused code sets it back.
            page.click(f"{row('C50.4')} button.dr-btn")
            expect(page.locator("#dr-value")).to_have_text("aucun")
            expect(page.locator("#dr-clear")).to_be_hidden()
            page.locator(f"{row('C50.4')} .label").click()
            page.keyboard.press("Shift+D")
            expect(page.locator("#dr-value")).to_have_text("C50.4")
            page.locator(f"{row('C79.5')} .label").click()
            page.keyboard.press("a")

            # The DR moved to DP leaves no DR; a DR next to a DP that is not a Z code is
            # refused by the server with its French message, and nothing is saved.
            page.locator(f"{row('C50.4')} .label").click()
            page.keyboard.press("d")
            expect(page.locator("#dp-value")).to_have_text("C50.4")
            expect(page.locator("#dr-value")).to_have_text("aucun")
            page.click(f"{row('C79.5')} button.dr-btn")
            expect(page.locator("#dr-value")).to_have_text("C79.5")
            page.keyboard.press("s")
            expect(page.locator("#save-message")).to_contain_text(
                "pas de DR quand le DP C50.4 n'est pas un code Z de motif de soins"
            )
            expect(page.locator("#stay-status")).to_have_text("à coder")

            # The coder puts the session back as DP and the cancer as DR.
            page.click(f"{row('Z51.1')} button.dp-btn")
            page.click(f"{row('C50.4')} button.dr-btn")
            expect(page.locator("#dr-value")).to_have_text("C50.4")
            page.click(f"{row('Z51.1')} button.dr-btn")  # the DP cannot be the DR as well
            expect(page.locator("#save-message")).to_contain_text("autre affection que le DP")
            expect(page.locator("#dr-value")).to_have_text("C50.4")
            page.keyboard.press("s")
            expect(page.locator("#save-message")).to_contain_text("Enregistré")
            expect(page.locator("#stay-status")).to_have_text("validé")

            page.reload()  # the saved coding comes back from the last review
            expect(page.locator("#dp-value")).to_have_text("Z51.1")
            expect(page.locator("#dr-value")).to_have_text("C50.4")
            browser.close()

    store = ReviewStore(url)
    with store.session() as session:
        saved = session.get(ReviewStay, stay_id)
        assert (saved.status, saved.version, saved.dp_code, saved.dr_code) == (
            "validated", 2, "Z51.1", "C50.4",
        )
        review = session.scalars(select(Review).where(Review.stay_id == stay_id)).one()
        assert review.dr_code == "C50.4"
        assert {(c.code, c.final_code, c.role) for c in review.codes} == {
            ("Z51.1", "Z51.1", "DP"), ("C50.4", "C50.4", "DR"), ("C79.5", "C79.5", "DAS"),
        }
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.stay_id == stay_id).order_by(AuditEvent.id)
        ).all()
        # Each time the page opened the stay is a view event.
        assert {(e.event, e.actor) for e in events if e.event == "stay.viewed"} == {
            ("stay.viewed", "codeur-0"),
        }
        events = [e for e in events if e.event != "stay.viewed"]
        assert [e.event for e in events] == ["stay.enqueued", "review.saved"]
        assert (events[1].actor, events[1].after["dp"], events[1].after["dr"]) == (
            "codeur-0", "Z51.1", "C50.4",
        )
    store.close()


def test_a_hostile_report_cannot_break_the_page_and_the_policy_blocks_nothing(
    tmp_path: Path,
) -> None:
    """`<!--<script>` in a report puts the HTML tokenizer in its "double escaped" state: an
    embedded JSON that escapes only "</" then swallows its own end tag and the page script
    never runs. The page must work, show the text as text, and break no CSP rule."""
    from playwright.sync_api import expect, sync_playwright
    from test_review_store import CRH_INSUFFISANCE_CARDIAQUE

    url = f"sqlite:///{tmp_path / 'review.db'}"
    stay_id = "sej-hostile-001"
    hostile = "\nNote : <!--<script>alert('x') & <b>gras</b>"
    with review_server(url, tmp_path) as (base, _proc):
        stay, prediction = make_case(stay_id, text_=CRH_INSUFFISANCE_CARDIAQUE + hostile)
        import_stay(url, stay, prediction)

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            problems: list[str] = []
            # Console errors (a CSP violation is one), but not the browser's favicon.ico 404.
            page.on(
                "console",
                lambda m: problems.append(m.text)
                if m.type == "error" and "Failed to load resource" not in m.text
                else None,
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("dialog", lambda d: (problems.append("dialog " + d.message), d.dismiss()))
            page.goto(f"{base}/review/stays/{stay_id}")
            page.fill("#username", "codeur-0")
            page.fill("#key", f"{KEY}0")
            page.click("button[type=submit]")

            # The page script ran: suggestions listed, score bars drawn, report shown as text.
            expect(page.locator('.code-row[data-code="I50.0"]')).to_be_visible()
            expect(page.locator("#report-text")).to_contain_text(
                "<!--<script>alert('x') & <b>gras</b>"
            )
            assert page.locator("#report-text b").count() == 0
            width = page.locator('.code-row[data-code="I50.0"] .fill').first.evaluate(
                "node => node.style.width"
            )
            assert width == "97%"
            page.keyboard.press("a")  # the shortcuts work too
            browser.close()
        assert problems == []

        headers = httpx.get(f"{base}/review/stays/{stay_id}", headers=key_of("codeur-1")).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "http" not in headers["content-security-policy"]
        assert headers["cache-control"] == "no-store"


def test_evidence_is_highlighted_on_its_words_after_emoji_and_astral_letters(
    tmp_path: Path,
) -> None:
    """The server counts evidence offsets in code points; a JS string counts UTF-16 units,
    two for 🫀, 💊 or 𝔸: the page must convert, or every highlight after them slides left."""
    from playwright.sync_api import expect, sync_playwright
    from test_review_store import CRH_INSUFFISANCE_CARDIAQUE

    url = f"sqlite:///{tmp_path / 'review.db'}"
    stay_id = "sej-emoji-001"
    text = "Motif 🫀 : dyspnée d'effort, score 𝔸𝔸.\n" + CRH_INSUFFISANCE_CARDIAQUE.replace(
        "amlodipine.", "amlodipine 💊."
    )
    with review_server(url, tmp_path) as (base, _proc):
        stay, prediction = make_case(stay_id, text_=text)
        import_stay(url, stay, prediction)
        start = text.index("hypertension artérielle")
        assert prediction.codes[1].evidence[0].start == start  # code points, not UTF-16
        assert len(text[:start].encode("utf-16-le")) // 2 == start + 3

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{base}/review/stays/{stay_id}")
            page.fill("#username", "codeur-0")
            page.fill("#key", f"{KEY}0")
            page.click("button[type=submit]")
            expect(page.locator("mark.hl")).to_have_count(3)
            marks = page.locator("mark.hl").all_inner_texts()
            # The rejected suggestion (embolie pulmonaire) is highlighted once focused.
            page.locator('.code-row[data-code="I26.9"] .label').click()
            focused = page.locator("mark.hl-focus").all_inner_texts()
            expect(page.locator("#report-text")).to_contain_text("score 𝔸𝔸.")
            browser.close()
    assert marks == [
        "hypertension artérielle",
        "Diabète de type 2",
        "insuffisance cardiaque congestive décompensée",
    ]
    assert focused == ["embolie pulmonaire"]
