"""A transformer trained with model.context_length below the loader's default window (50) and
bucket_lengths that fit it loads again from its saved config (walk s12 scale F1)."""

from __future__ import annotations

from segue.models.transformer import TransformerConfig


def test_small_context_with_fitting_buckets_round_trips() -> None:
    cfg = TransformerConfig.from_dict(
        {"model": {"context_length": 30}, "trainer": {"loader": {"bucket_lengths": [16, 30]}}}
    )
    assert cfg.trainer.loader.context_length == 30  # the window trained with, as written
    again = TransformerConfig.from_dict(cfg.model_dump(mode="json"))
    assert again == cfg


def test_folder_written_with_the_default_loader_window_loads() -> None:
    # what model.toml held before: the loader's default 50 beside buckets up to 30
    data = {
        "model": {"context_length": 30},
        "trainer": {"loader": {"context_length": 50, "bucket_lengths": [16, 30]}},
    }
    cfg = TransformerConfig.from_dict(data)
    assert cfg.trainer.loader.context_length == 30


def test_buckets_below_the_model_window_are_still_refused() -> None:
    import pytest

    from segue.errors import SegueError

    with pytest.raises(SegueError, match="bucket_lengths"):
        TransformerConfig.from_dict({"model": {"context_length": 60}, "trainer": {"loader": {"bucket_lengths": [16, 30]}}})
