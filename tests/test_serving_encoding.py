"""Request encoding goes through the model's vocabulary and context, as training does."""

from __future__ import annotations

import numpy as np
import pytest

from segue.config import Config
from segue.data.vocab import UNK
from segue.serving.dotmodel import synthetic_vocab
from segue.serving.encoding import EventColumns, RequestEncoder, context_length_of


def test_unknown_ids_become_unk_and_are_reported() -> None:
    vocab = synthetic_vocab(10)
    enc = RequestEncoder(vocab).encode(["item3", "ghost", "item0"])
    assert enc.tokens.tolist() == [vocab.encode_external(["item3"])[0][0], UNK, vocab.encode_external(["item0"])[0][0]]
    assert enc.unknown == ["ghost"]
    assert "ghost" in enc.warnings()[0] and "<unk>" in enc.warnings()[0]


def test_truncation_keeps_the_latest_items() -> None:
    vocab = synthetic_vocab(10)
    enc = RequestEncoder(vocab, context_length=3).encode([f"item{i}" for i in range(6)])
    assert enc.external_ids == ["item3", "item4", "item5"] and enc.truncated == 3
    assert any("dropped 3" in w for w in enc.warnings())


def test_context_length_is_found_on_the_model_or_its_config_sections() -> None:
    class Net(Config):
        context_length: int = 7

    class Outer(Config):
        model: Net = Net()

    class WithField:
        config = Outer()

    class Flat:
        class config:  # noqa: N801 (stands in for a config object)
            max_len = 5

    assert context_length_of(WithField()) == 7
    assert context_length_of(Flat()) == 5
    assert context_length_of(object()) is None


def test_arrays_carry_tokens_and_dictionary_coded_context() -> None:
    arrays = RequestEncoder.arrays([np.array([4, 5]), np.array([6])], [{"device": "phone"}, {"device": "car"}])
    assert arrays.offsets.tolist() == [0, 2, 3] and arrays.tokens.tolist() == [4, 5, 6]
    cats = arrays.context_categories["device"]
    assert [cats[c] for c in arrays.context["device"]] == ["phone", "phone", "car"]


def test_requests_with_feedback_times_and_context_encode_as_training_does(tmp_path) -> None:
    """Parity: each test history of a store with ratings, feedback, context and times, sent as a
    request (ids, raw values, the target's context and time as the request's), gives the network
    exactly the event arrays that scoring the store's own arrays gives it."""
    from rankhelp import EVENTS, feedback_store
    from segue.data.arrays import SplitData
    from segue.data.loader import pad_histories
    from segue.data.splits import Part
    from segue.data.store import Store
    from segue.models import events as EV

    store = feedback_store(tmp_path / "s.duckdb")
    with Store.open(store) as st:
        data = SplitData.load(st, "loo")
        hist, nxt = data.history(Part.TEST), data.targets(Part.TEST)
    cats = EV.model_categories(EVENTS, data.train)
    ctx_len, width = 8, 8
    encoder = RequestEncoder(data.vocab, ctx_len)
    rows = np.flatnonzero((hist.lengths > 0) & (nxt.lengths > 0))
    assert len(rows) > 50 and (hist.lengths[rows] >= ctx_len).any()  # some histories are cut
    long = rows[hist.lengths[rows] >= ctx_len]
    rows = np.unique(np.concatenate([rows[:30], long[:10]]))  # short and cut histories
    platform = hist.context_categories["platform"]
    checked = 0
    for r in rows:
        a, b = hist.offsets[r], hist.offsets[r + 1]
        ids = [data.vocab.external_ids[t] for t in hist.tokens[a:b]]
        skip, listened = hist.feedback["skip"][a:b], hist.feedback["listened"][a:b]
        events = EventColumns(
            # as a client sends them: flags as true/false, missing fractions as null (NaN here)
            feedback={"skip": np.array([float(bool(x)) for x in skip], np.float32), "listened": listened.copy()},
            ts=hist.ts[a:b].copy(),
            context={"platform": [platform[c] if c >= 0 else None for c in hist.context["platform"][a:b]]},
            next_ts=int(nxt.ts[nxt.offsets[r]]),
        )
        target_platform = nxt.context_categories["platform"][nxt.context["platform"][nxt.offsets[r]]]
        enc = encoder.encode(ids, [float(x) for x in hist.rating[a:b]], events)
        req = encoder.arrays([enc.tokens], [{"platform": target_platform}], [enc.ratings], [enc.events])
        want, mu, s = EV.history_events(EVENTS, cats, hist, np.array([r]), ctx_len, width, nxt)
        got, mu2, s2 = EV.history_events(EVENTS, cats, req, np.array([0]), ctx_len, width, req.meta["next_events"])
        assert set(got) == set(want) == {"rating_bucket", "fb", "fb_missing", "ctx", "next_ctx"}
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"row {r}: {k}")
        np.testing.assert_allclose(mu2, mu, rtol=1e-6)
        np.testing.assert_allclose(s2, s, rtol=1e-6)
        pw = pad_histories(hist, np.array([r]), context_length=ctx_len, pad_to=width)
        pg = pad_histories(req, np.array([0]), context_length=ctx_len, pad_to=width)
        np.testing.assert_array_equal(pg.inputs, pw.inputs)
        checked += 1
    assert checked == len(rows)
    # the arrays really carry the next event's context and time (not the default: the last event's)
    assert (want["next_ctx"][0, :, 1:] > 0).any()


def test_event_columns_are_cut_with_the_history_and_must_align() -> None:
    vocab = synthetic_vocab(10)
    ev = EventColumns(feedback={"skip": np.array([1, 0, 1, 0], np.float32)}, ts=np.arange(1, 5), context={"p": ["a", "b", None, "c"]})
    enc = RequestEncoder(vocab, context_length=3).encode([f"item{i}" for i in range(4)], None, ev)
    assert enc.events.feedback["skip"].tolist() == [0, 1, 0] and enc.events.ts.tolist() == [2, 3, 4]
    assert enc.events.context["p"] == ["b", None, "c"] and enc.all_events is ev
    arrays = RequestEncoder.arrays([enc.tokens], [{"p": "z"}], None, [enc.events])
    cats = arrays.context_categories["p"]
    assert [cats[c] if c >= 0 else None for c in arrays.context["p"]] == ["b", None, "c"]
    nxt = arrays.meta["next_events"]
    assert len(nxt) == 1 and nxt.context_categories["p"][nxt.context["p"][0]] == "z"
    with pytest.raises(ValueError, match="feedback 'skip': 4 values for a history of 3 items"):
        RequestEncoder(vocab).encode([f"item{i}" for i in range(3)], None, ev)
