"""Request encoding goes through the model's vocabulary and context, as training does."""

from __future__ import annotations

import numpy as np

from segue.config import Config
from segue.data.vocab import UNK
from segue.serving.dotmodel import synthetic_vocab
from segue.serving.encoding import RequestEncoder, context_length_of


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
