"""Request bodies are read only from callers the agent knows (TokenFirstGuard, agent/web/auth.py), and a Label
Studio body the app cannot parse is a 400 with one log line per address every 10 s, never a 500."""

from __future__ import annotations

import json
import logging

import pytest

from tests.agent.web.conftest import READ_TOKEN, WRITE_TOKEN, WebAgent

NOT_JSON = b'{"labels": [{"id": "img000.png", "label": '  # cut short: FastAPI's parse would answer 422
DEEP = b'{"labels":' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # RecursionError in Python's json


@pytest.mark.parametrize("auth", [None, "Bearer bogus-token-0123456789"])
@pytest.mark.parametrize("path", ["/api/labels", "/api/queue", "/api/labels/retract", "/api/queue/mark",
                                  "/api/queue/select", "/api/priors/labels"])
def test_api_bodies_are_not_parsed_before_the_token_is_known(token_web_agent: WebAgent, path: str,
                                                             auth: str | None) -> None:
    """Without a token, or with one the agent does not know, the answer is 401 and not FastAPI's 422 for the
    body: the body was not parsed (before, it was parsed on the event loop first: 1.92 s for 15.8 MB)."""
    c = token_web_agent.client()
    headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
    r = c.post(path, content=NOT_JSON, headers=headers)
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.json()["error"] == "UNAUTHENTICATED"
    # a known token: the body is read, and its problem answered
    r = c.post(path, content=NOT_JSON, headers={**headers, "Authorization": f"Bearer {WRITE_TOKEN}"})
    assert r.status_code == 422, (r.status_code, r.text)


def test_known_tokens_still_work(token_web_agent: WebAgent) -> None:
    c = token_web_agent.client()
    body = {"labels": [{"id": "img010.png", "label": "circle"}]}
    r = c.post("/api/labels", json=body, headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert r.status_code == 403  # the agent's role check, as before
    for _ in range(2):  # the second: the token is known here already
        r = c.post("/api/labels", json=body, headers={"Authorization": f"Bearer {WRITE_TOKEN}"})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


@pytest.mark.parametrize("path", ["/labelstudio/webhook", "/labelstudio/predict", "/labelstudio/setup"])
def test_label_studio_body_from_an_unknown_token_is_not_parsed(token_web_agent: WebAgent, path: str) -> None:
    """``Bearer bogus`` with a body nested too deeply: 401 (before: 500 and ~87 lines of traceback each time)."""
    c = token_web_agent.client(raise_server_exceptions=False)
    r = c.post(path, content=DEEP, headers={"Content-Type": "application/json", "Authorization": "Bearer bogus"})
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert r.headers["www-authenticate"].startswith("Basic")


def test_label_studio_body_nested_too_deeply_is_400_logged_once(token_web_agent: WebAgent,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    c = token_web_agent.client(raise_server_exceptions=False)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {WRITE_TOKEN}"}
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            r = c.post("/labelstudio/webhook", content=DEEP, headers=headers)
            assert r.status_code == 400, (r.status_code, r.text[:200])
            assert "nested too deeply" in r.json()["message"]
        r = c.post("/labelstudio/webhook", content=b"[1, 2", headers=headers)
        assert r.status_code == 400 and "not JSON" in r.json()["message"]
    lines = [rec for rec in caplog.records if rec.name.startswith("agent.web")]
    assert len(lines) == 1, [rec.getMessage() for rec in lines]  # one line per address every 10 s
    assert not any(rec.exc_info for rec in caplog.records)  # no traceback
    assert "Traceback" not in caplog.text and len(caplog.text.splitlines()) <= 2
    assert json.loads(r.text)["error"] == "BAD_REQUEST"


def test_label_studio_tokens_guessed_by_basic_auth_are_throttled(token_web_agent: WebAgent) -> None:
    """Basic auth (Label Studio's way) guessed tokens unthrottled: its refusals were not counted and its token
    was not the one the throttle looked at. Now as any other token: a few tries, then 429 without asking the
    agent; the right token, once the agent has answered it, is never held up (Label Studio's retries)."""
    import base64

    def basic(token: str) -> dict[str, str]:
        return {"Content-Type": "application/json",
                "Authorization": "Basic " + base64.b64encode(f"ls:{token}".encode()).decode()}

    from agent.web import auth

    burst = getattr(auth, "SIGN_IN_BURST", 5)
    token_web_agent.app.state.sign_in_throttle = auth.SignInThrottle(burst=burst, per_s=0.01)  # no refill here
    guesser = token_web_agent.client(client=("10.0.0.11", 50000))
    codes = [guesser.post("/labelstudio/setup", json={}, headers=basic(f"guess-{i:020d}")).status_code
             for i in range(3 * burst)]
    assert codes[:burst] == [401] * burst and set(codes[burst + 1:]) == {429}, codes
    label_studio = token_web_agent.client(client=("10.0.0.12", 50000))
    # (an empty setup is 400 "no labelling schema": let in, its body read)
    assert label_studio.post("/labelstudio/setup", json={}, headers=basic(WRITE_TOKEN)).status_code == 400
    # the same right token from the guessing address: known to the agent, so not held up
    assert guesser.post("/labelstudio/setup", json={}, headers=basic(WRITE_TOKEN)).status_code == 400


@pytest.mark.parametrize("path", ["/api/labels", "/api/priors/labels", "/api/labels/retract"])
def test_a_422_does_not_echo_a_long_body(web_agent: WebAgent, path: str) -> None:
    """FastAPI's 422 echoes each error's input whole: 200,000 labels where 1,000 are taken came back as a
    multi-MB answer, and for a 16 MiB body encoding it held every other request of the app for seconds
    (docs/app.md). Now a list or object is named by its size, a string cut to 200 characters."""
    c = web_agent.client()
    n = 200_000
    body = {"method": "knn", "labels": [{"id": "a", "label": "b"}] * n, "ids": ["a"] * n}
    r = c.post(path, json=body)
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 2000, len(r.content)
    err = r.json()["detail"][0]
    assert err["type"] == "too_long" and err["loc"][0] == "body" and err["input"] == f"a list of {n:,} items"
    long_id = c.post("/api/queue/mark", json={"id": "x" * 100_000, "mark": "nope"})
    assert long_id.status_code == 422 and len(long_id.content) < 2000


MANY = 200_000


@pytest.mark.parametrize(("path", "body"), [
    ("/api/queue", {"ids": [1] * MANY}),
    ("/api/queue/select", {"strategy": "random", "budget": 1, "params": {f"k{i}": i for i in range(MANY)}}),
    ("/api/queue/select", {"strategy": "random", "budget": 1, "where": {f"k{i}": 1 for i in range(MANY)}}),
    ("/api/queue/select", {"strategy": "random", "budget": 1, "params": {"k" * 1_000_000: 1}}),
    ("/api/labels/retract", {"ids": ["a"], "if_current": {f"k{i}": 1 for i in range(MANY)}}),
    ("/api/labels", {"labels": [{"id": 1, "label": 2}] * 999}),
])
def test_a_422_lists_few_errors_and_short_locations(web_agent: WebAgent, path: str, body: dict[str, object]) -> None:
    """FastAPI's 422 lists one error per bad item, with its ``loc``: {"ids": [1] * 700000} (2 MiB) came back as a
    70 MB answer after 44 s, 600,000 params as 66 MB, and a params key of 15 MB whole in ``loc`` (the security
    review). The body models now stop at the real bounds (MAX_QUEUE ids, the agent's default metadata limits),
    the 422 lists at most MAX_ERRORS errors (``errors``: how many) and cuts each ``loc`` part."""
    r = web_agent.client().post(path, json=body)
    assert r.status_code == 422, r.text[:300]
    assert len(r.content) < 10_000, (len(r.content), r.text[:300])
    assert 1 <= len(r.json()["detail"]) <= 20 and r.json()["errors"] >= 1
