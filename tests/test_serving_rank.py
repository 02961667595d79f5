"""/v1/rank and events in requests over real HTTP: a transformer with feedback, context and time
inputs and a feedback head (random weights: the path is tested, not quality), a real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from rankhelp import EVENTS, feedback_store, untrained
from segue.data.vocab import N_SPECIAL
from segue.serving.app import create_app
from segue.serving.cli import serve_in_thread
from segue.serving.encoding import EventColumns
from servinghelp import dot_folder, named_store


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("rank")
    store = feedback_store(root / "s.duckdb")
    rec = untrained(store)
    return store, rec.save(root / "model"), rec


@pytest.fixture(scope="module")
def http(model):
    store, folder, _ = model
    with serve_in_thread(create_app(folder, store=store, use_env_admin_key=False)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        yield c


def post(http: httpx.Client, path: str, status: int = 200, **body) -> dict:
    r = http.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


def items_of(rec, n: int, start: int = 0) -> list[str]:
    return [rec.vocab.external_ids[t] for t in range(N_SPECIAL + start, N_SPECIAL + start + n)]



# A four-event history's ratings, feedback, times and context, and the event to predict.
EVENT_BODY = {
    "ratings": [5, 1, None, 4],
    "feedback": {"skip": [False, True, None, 0], "listened": [1.0, 0.1, None, 0.8]},
    "timestamps": [1_700_000_000, 1_700_003_600, None, 1_700_090_000],
    "event_context": {"platform": ["mobile", "web", None, "tv"]},
    "context": {"platform": "tv"},
    "ts": 1_700_100_000,
}


def test_rank_scores_candidates_as_recommend_does_with_predicted_feedback(http, model) -> None:
    rec = model[2]
    history, cands = items_of(rec, 4), items_of(rec, 12, start=10)
    body = {"history": history, **EVENT_BODY}
    got = post(http, "/v1/rank", items=cands + ["ghost"], **body)
    assert any("ghost" in w for w in got["warnings"])
    out = got["items"]
    assert sorted(i["id"] for i in out) == sorted(cands)
    scores = [i["score"] for i in out]
    assert scores == sorted(scores, reverse=True)
    for i in out:
        fb = i["feedback"]
        assert set(fb) == {"rating", "skip", "listened"}
        assert 1 <= fb["rating"] <= 5 and 0 < fb["skip"] < 1 and 0 < fb["listened"] < 1
    # /v1/recommend over the same candidates ranks with the same scores
    rec_body = post(http, "/v1/recommend", allow=cands, n=len(cands), **body)
    assert [i["id"] for i in rec_body["items"]] == [i["id"] for i in out]
    np.testing.assert_allclose([i["score"] for i in rec_body["items"]], scores, rtol=1e-5, atol=1e-6)
    # the same numbers as the model called directly on the request's encoding
    ev = EventColumns(
        feedback={"skip": np.array([0, 1, np.nan, 0], np.float32), "listened": np.array([1, 0.1, np.nan, 0.8], np.float32)},
        ts=np.array([1_700_000_000, 1_700_003_600, 0, 1_700_090_000]),
        context={"platform": ["mobile", "web", None, "tv"]},
        next_ts=1_700_100_000,
    )
    from segue.serving.encoding import RequestEncoder

    enc = RequestEncoder(rec.vocab, 8)
    h = enc.encode(history, [5, 1, None, 4], ev)
    arrays = enc.arrays([h.tokens], [{"platform": "tv"}], [h.ratings], [h.events])
    tok = np.array([rec.vocab.encode_external([i["id"]])[0][0] for i in out])
    direct = rec.score(arrays, next_events=arrays.meta["next_events"])[0, tok]
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-6)
    fb = rec.predict_feedback(arrays, None, tok[None], next_events=arrays.meta["next_events"])
    np.testing.assert_allclose([i["feedback"]["skip"] for i in out], fb["skip"][0], rtol=1e-5)


def test_feedback_times_and_context_change_the_scores(http, model) -> None:
    rec = model[2]
    history, cands = items_of(rec, 3), items_of(rec, 8, start=20)

    def scores(**extra) -> dict[str, float]:
        return {i["id"]: i["score"] for i in post(http, "/v1/rank", history=history, items=cands, ts=1_700_100_000, **extra)["items"]}

    base = scores(context={"platform": "mobile"})
    assert scores(context={"platform": "mobile"}) == base  # deterministic
    for other in (
        scores(context={"platform": "tv"}),  # the next event's context
        scores(context={"platform": "mobile"}, feedback={"skip": [True, True, True]}),
        scores(context={"platform": "mobile"}, timestamps=[1_600_000_000, 1_650_000_000, 1_699_000_000]),
        scores(context={"platform": "mobile"}, event_context={"platform": ["tv", "tv", "tv"]}),
    ):
        assert max(abs(other[k] - base[k]) for k in base) > 1e-4


def test_old_requests_stay_valid_and_healthz_lists_the_inputs(http, model) -> None:
    rec = model[2]
    h = http.get("/healthz").json()
    assert h["events"] == {
        "rating": True, "feedback": {"listened": "fraction", "skip": "flag"}, "context": ["platform"], "time": True,
        "predicts": ["listened", "rating", "skip"],
    }  # fmt: skip
    assert h["rating_scale"] == [1.0, 5.0]
    plain = post(http, "/v1/recommend", history=items_of(rec, 3), n=5)
    assert len(plain["items"]) == 5 and plain["warnings"] == []
    empty = post(http, "/v1/rank", items=items_of(rec, 5))
    assert any("popularity" in w for w in empty["warnings"]) and "feedback" not in empty["items"][0]
    # a column the model does not read is a warning, not an error
    other = post(http, "/v1/rank", history=items_of(rec, 2), items=items_of(rec, 3, 5), feedback={"plays": [1, 2]})
    assert any("'plays'" in w and "listened, skip" in w for w in other["warnings"])


@pytest.mark.parametrize(
    ("feedback", "loc", "words"),
    [
        ({"skip": [0, 1, 3]}, ["body", "feedback", "skip", 2], ["history[2]", "'skip' = 3", "no flag"]),
        ({"listened": [0.5, 1.5, None]}, ["body", "feedback", "listened", 1], ["history[1]", "outside [0, 1]"]),
        ({"listened": [True, None, None]}, ["body", "feedback", "listened", 0], ["history[0]", "fraction, not true/false"]),
        ({"listened": [0.1, "much", 0.2]}, ["body", "feedback", "listened", 1], []),
        ({"skip": [0, 1]}, ["body"], ["feedback.skip has 2 values but history has 3"]),
    ],
)
def test_bad_feedback_is_a_422_naming_the_event_and_field(http, model, feedback, loc, words) -> None:
    rec = model[2]
    for path in ("/v1/rank", "/v1/recommend"):
        d = post(http, path, 422, history=items_of(rec, 3), items=items_of(rec, 2, 5), feedback=feedback) if path == "/v1/rank" else post(
            http, path, 422, history=items_of(rec, 3), feedback=feedback
        )
        hit = [e for e in d["detail"] if e["loc"][: len(loc)] == loc]
        assert hit, d
        assert all(w in hit[0]["msg"] for w in words), hit[0]["msg"]


def test_a_model_without_events_ranks_and_ignores_them(tmp_path: Path) -> None:
    store = named_store(tmp_path / "n.duckdb", n_items=20, n_seq=40)
    folder = dot_folder(store, tmp_path / "dot", dim=8)
    with serve_in_thread(create_app(folder, store=store, use_env_admin_key=False)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        cands = ["track:3", "track:7", "track:9"]
        d = post(c, "/v1/rank", history=["track:1", "track:2"], items=cands, feedback={"skip": [1, 0]})
        assert sorted(i["id"] for i in d["items"]) == cands and all("feedback" not in i for i in d["items"])
        assert any("reads no per-event" in w for w in d["warnings"])
        r = post(c, "/v1/recommend", history=["track:1", "track:2"], allow=cands, n=3)
        assert [i["id"] for i in r["items"]] == [i["id"] for i in d["items"]]
        assert c.get("/healthz").json()["events"] is None


def test_times_sent_to_a_model_without_time_are_a_warning(tmp_path: Path) -> None:
    """A model that reads feedback but no times (events.time = false): timestamps and ts sent with
    a request are ignored, with a warning naming them, as unread feedback columns are."""
    store = feedback_store(tmp_path / "s.duckdb")
    rec = untrained(store, EVENTS.model_copy(update={"time": False}))
    folder = rec.save(tmp_path / "model")
    with serve_in_thread(create_app(folder, store=store, use_env_admin_key=False)) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        assert c.get("/healthz").json()["events"]["time"] is False
        body = {"history": items_of(rec, 2), "items": items_of(rec, 3, 5)}
        d = post(c, "/v1/rank", **body, timestamps=[1_700_000_000, 1_700_000_300], ts=1_700_000_600)
        assert any(w.startswith("timestamps and ts:") and "no event times" in w for w in d["warnings"]), d["warnings"]
        d = post(c, "/v1/recommend", history=body["history"], ts=1_700_000_600)
        assert any(w.startswith("ts:") and "no event times" in w for w in d["warnings"]), d["warnings"]
        assert post(c, "/v1/rank", **body)["warnings"] == []
