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


def test_a_saved_config_that_does_not_load_is_said_as_such(tmp_path) -> None:  # noqa: ANN001
    """Resuming a run whose config.toml fails to load said "holds a run with another config" and
    sent the user to --fresh (walk s12 scale F1c); now the load error is named."""
    import pytest

    from segue.errors import ConfigError
    from segue.training.trainer import train
    from test_trainer import _config

    store = tmp_path / "none.duckdb"  # never reached: the saved config is read first
    cfg = _config(store)
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.toml").write_text(cfg.to_toml().replace("[model]", "[model]\nno_such_field = 1", 1))
    with pytest.raises(ConfigError, match="config.toml does not load") as e:
        train(cfg, run_dir=run)
    assert "no_such_field" in str(e.value) and "another config" not in str(e.value)


def test_a_config_built_in_code_equals_its_saved_copy() -> None:
    """TransformerConfig(model=ModelConfig(context_length=6)) kept the loader's default 50 while its
    saved copy read back 6: the two differed (tests/test_transformer's reload check)."""
    from segue.models.train_config import TrainerConfig
    from segue.models.transformer import ModelConfig

    built = TransformerConfig(model=ModelConfig(context_length=6))
    assert built.trainer.loader.context_length == 6
    assert TransformerConfig.from_dict(built.model_dump(mode="json")) == built
    given = TransformerConfig(model=ModelConfig(context_length=6), trainer=TrainerConfig(max_steps=7))
    assert given.trainer.max_steps == 7 and given.trainer.loader.context_length == 6


def test_assigning_a_section_keeps_a_valid_config() -> None:
    """cfg.trainer = ... (validate_assignment) must keep a TrainerConfig, not a dict (CI: tests that
    set cfg.trainer on a transformer config)."""
    from segue.models.train_config import TrainerConfig
    from segue.models.transformer import ModelConfig

    cfg = TransformerConfig(model=ModelConfig(context_length=6))
    cfg.trainer = cfg.trainer.model_copy(update={"max_steps": 12})
    assert isinstance(cfg.trainer, TrainerConfig) and cfg.trainer.max_steps == 12
    assert cfg.trainer.loader.context_length == 6
    cfg.trainer = TrainerConfig(max_steps=3)  # a fresh trainer section: its loader takes the window
    assert cfg.trainer.loader.context_length == 6 and cfg.trainer.max_steps == 3
    cfg.optim = cfg.optim.model_copy(update={"plateau_patience": 100})
    assert cfg.optim.plateau_patience == 100
