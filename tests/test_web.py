"""The web page (fv2es-web) in a real headless browser: Debian's chromium driven by Playwright,
against the page's FastAPI app, which talks gRPC to the session's real tritonserver.

Skipped only when chromium or Playwright is missing (`make` installs both). The screenshots of the
analysed sample and of the two-person clip are kept in build/out/test-artifacts/ (web_page.png,
web_page_people.png).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLE, SMALL_LIMIT
from test_web_hardening import page_server  # the page's app on a free port (its protections are tested there)
from tritonclient.utils import InferenceServerException

from fv2es_build import synth

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "build" / "out" / "test-artifacts"
ANALYSIS_TIMEOUT_MS = 180_000

playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (Debian package chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def web_url(server):
    with page_server(server.grpc_url) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        # Debian's chromium (Playwright's own download cannot reach its host here; Debian's plays H.264).
        instance = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        print(f"chromium {instance.version}")
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser, web_url):
    """The page, loaded; at the end, no Content-Security-Policy violation may have been reported."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(web_url)
    page.wait_for_selector("#analyse:not([disabled])", timeout=30_000)  # the limits came back from the server
    try:
        yield page
    finally:
        context.close()
    assert not [line for line in console if "Content Security Policy" in line], console


def test_the_sample_shows_the_clients_result(page, client, sample_bytes):
    expected = client.analyze(sample_bytes)
    assert "MiB" in page.text_content("#limits") and client.url in page.text_content("#limits")

    page.set_input_files("#file", str(SAMPLE))
    page.click("#analyse")
    page.wait_for_selector("#result:not([hidden])", timeout=ANALYSIS_TIMEOUT_MS)

    assert page.text_content("#overall-emotion") == expected.emotion
    assert page.locator("#timeline .segment").count() == len(expected.segments)
    assert page.locator("#transcript li").count() == len(expected.segments)
    shown = [page.text_content(f"#timeline .segment >> nth={i}") for i in range(len(expected.segments))]
    assert shown == [s.emotion for s in expected.segments]
    transcripts = " ".join(s.transcript for s in expected.segments if s.transcript)
    assert transcripts.split()[0] in page.text_content("#transcript")

    # The group's lane (a cell per segment, coloured by its valence) and the whole video's group emotion.
    assert page.is_visible("#group-lane") and page.is_visible("#group-overall")
    assert page.text_content("#group-emotion") == max(expected.group, key=expected.group.get)
    group_cells = [page.get_attribute(f"#group-lane .lane-cell >> nth={i}", "class").split() for i in range(len(expected.segments))]
    assert all(f"group-{max(s.group, key=s.group.get)}" in cell for cell, s in zip(group_cells, expected.segments))

    # One lane per person under the timeline, a cell per segment; the people table; the speakers.
    people = expected.person_summaries()
    assert page.locator("#people-lanes .lane").count() == len(people)
    assert page.locator("#people-table tbody tr").count() == len(people)
    assert page.is_hidden("#people-lanes") == page.is_hidden("#people") == (not people)
    for person in people:
        cells = page.locator(f'#people-lanes .lane[data-person="{person.person}"] .lane-cell')
        assert cells.count() == len(expected.segments)
        assert page.locator(f'#people-lanes .lane[data-person="{person.person}"] .lane-cell.speaking').count() == \
            len(person.speaking_segments)
    assert page.locator("#transcript .speaker").count() == sum(s.speaker >= 0 for s in expected.segments)

    # The segment under the playhead is highlighted, in the timeline and in the transcript.
    second = expected.segments[1]
    page.eval_on_selector("#player", f"(v) => {{ v.currentTime = {(second.start + second.end) / 2}; }}")
    page.wait_for_selector('#timeline .segment.current[data-index="1"]', timeout=10_000)
    assert page.get_attribute("#transcript li.current", "data-index") == "1"
    assert page.text_content("#current-emotion").startswith(second.emotion)

    # The downloads are the client's formats of the same result.
    document = json.loads(page.request.get(page.eval_on_selector("#download-json", "a => a.href")).text())
    assert document["results"][0]["emotion"] == expected.emotion
    assert len(document["results"][0]["segments"]) == len(expected.segments)
    csv_text = page.request.get(page.eval_on_selector("#download-csv", "a => a.href")).text()
    assert len(csv_text.strip().splitlines()) == 1 + len(expected.segments)
    png = page.request.get(page.eval_on_selector("#download-png", "a => a.href")).body()
    assert png.startswith(b"\x89PNG")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
    print(f"screenshot: {ARTIFACTS / 'web_page.png'}")


@pytest.fixture(scope="module")
def two_people_mp4(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("web") / "two_people.mp4"
    path.write_bytes(synth.two_person_video(synth.TWO_PERSON_TURNS)[0])
    return path


def test_two_people_get_a_lane_each(page, client, two_people_mp4):
    """The generated two-person clip: a lane per person, empty where they are not seen, marked where
    they speak; the people table; the persons under the playhead. The screenshot goes into the README."""
    expected = client.analyze(two_people_mp4.read_bytes())
    people = expected.person_summaries()
    assert len(people) == 2

    page.set_input_files("#file", str(two_people_mp4))
    page.click("#analyse")
    page.wait_for_selector("#result:not([hidden])", timeout=ANALYSIS_TIMEOUT_MS)

    assert page.locator("#people-lanes .lane").count() == 2
    assert page.locator("#people-lanes .lane-label").all_text_contents() == [f"person {p.person}" for p in people]
    for person in people:
        cells = page.locator(f'#people-lanes .lane[data-person="{person.person}"] .lane-cell')
        assert cells.count() == len(expected.segments)
        absent = ["absent" in (cells.nth(i).get_attribute("class") or "") for i in range(cells.count())]
        assert absent == [person.person not in s.people for s in expected.segments]
        speaking = [int(c.get_attribute("data-index")) for c in
                    page.locator(f'#people-lanes .lane[data-person="{person.person}"] .lane-cell.speaking').all()]
        assert speaking == person.speaking_segments
    rows = page.locator("#people-table tbody tr")
    assert [rows.nth(i).locator("td").all_text_contents()[:3] for i in range(2)] == \
        [[f"person {p.person}", p.emotion, f"{p.score:.2f}"] for p in people]
    assert page.locator("#transcript .speaker").count() == sum(s.speaker >= 0 for s in expected.segments)

    spoken = next(s for s in expected.segments if s.speaker >= 0)
    page.eval_on_selector("#player", f"(v) => {{ v.currentTime = {(spoken.start + spoken.end) / 2}; }}")
    page.wait_for_selector(f'#people-lanes .lane-cell.current[data-index="{spoken.index}"]', timeout=10_000)
    assert f"person {spoken.speaker} (speaking)" in page.text_content("#current-people")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web_page_people.png"), full_page=True)
    print(f"screenshot: {ARTIFACTS / 'web_page_people.png'}")


def test_a_bad_file_shows_the_servers_message(page, client, tmp_path):
    bad = tmp_path / "notes.mp4"
    bad.write_bytes(b"these are notes, not a video\n" * 40)
    with pytest.raises(InferenceServerException) as raised:  # the server's own refusal, via the client
        client.analyze(bad.read_bytes())
    message = raised.value.message()

    page.set_input_files("#file", str(bad))
    page.click("#analyse")
    page.wait_for_selector("#error:not([hidden])", timeout=60_000)
    shown = page.text_content("#error")
    assert message in shown and shown.startswith("[INVALID_ARGUMENT]"), shown
    assert page.is_hidden("#result")


def test_a_file_over_the_limit_is_refused_before_the_upload(page, tmp_path):
    limit = page.evaluate("limits.max_input_bytes")
    page.evaluate(f"limits.max_input_bytes = {1000}")  # what the page does with the server's limit, on a small file
    small = tmp_path / "clip.mp4"
    small.write_bytes(b"\0" * 5000)
    page.set_input_files("#file", str(small))
    page.click("#analyse")
    page.wait_for_selector("#error:not([hidden])", timeout=10_000)
    assert "over the server's limit" in page.text_content("#error") and limit > 1000


@pytest.mark.slow
def test_the_page_server_stops_an_upload_at_the_servers_limit(browser, small_server):
    """The limit comes from the server's config: a server with a 100 kB limit; the page's server
    stops reading the upload there and answers 413 with the limit in the message."""
    limit = SMALL_LIMIT
    with page_server(small_server.grpc_url) as url:
        context = browser.new_context()
        reply = context.request.post(f"{url}/api/analyze", multipart={
            "file": {"name": "big.mp4", "mimeType": "video/mp4", "buffer": SAMPLE.read_bytes() * 2}})
        body = reply.json()
        context.close()
    assert reply.status == 413 and body["error"]["code"] == "INPUT_TOO_LARGE"
    assert f"({limit} bytes)" in body["error"]["message"] and "big.mp4" in body["error"]["message"]
