"""The training loop's typed config (it lives in segue.models.train_config with the loss and
optimiser configs, which model configs embed; re-exported here)."""

from segue.models.train_config import TrainerConfig

__all__ = ["TrainerConfig"]
