"""Neural families (transformer, autoencoder): a Recommender whose `fit()` runs the shared loop.

The loop lives in the training layer (segue.training.trainer). The models layer must not import
it, so `fit()` reaches it by name, the way `load_model` reaches a family's class: `TRAINER` names
the function, which is imported when a model is first fitted. A caller may also hand in its own
`trainer` (any function with that signature), e.g. to fit with a run folder.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Self

from segue.data.arrays import SplitData
from segue.models.base import BaseRecommender

# fit_network(model, data, progress) -> (best network, training summary)
FitFn = Callable[[BaseRecommender, SplitData, Callable[[str, int, int], None] | None], tuple[Any, dict[str, Any]]]
TRAINER = "segue.training.trainer:fit_network"


def default_trainer() -> FitFn:
    module, name = TRAINER.split(":")
    return getattr(importlib.import_module(module), name)


class NeuralRecommender(BaseRecommender):
    """A family trained by segue's loop; `network` holds its nnx module once fitted or loaded."""

    network: Any = None

    def fit(
        self,
        data: SplitData,
        *,
        progress: Callable[[str, int, int], None] | None = None,
        trainer: FitFn | None = None,
    ) -> Self:
        """Train on the split with the loop (no run folder; the best validated weights are kept)."""
        fit = trainer if trainer is not None else default_trainer()
        self.vocab = data.vocab
        network, summary = fit(self, data, progress)
        self.network = network
        self.meta = {"train": summary}
        return self


def flat_weights(net: Any, which: Any) -> dict[str, Any]:
    """The network's `which` variables (an nnx filter) as {path 'blocks/0/qkv/kernel': array}."""
    import numpy as np
    from flax import nnx

    return {"/".join(map(str, k)): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(net, which))}


def write_weights(flat: dict[str, Any], path: Any) -> None:
    """A flat .npz of `flat`, written atomically."""
    import numpy as np

    from segue.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **flat)


def read_weights(net: Any, which: Any, path: Any) -> Any:
    """Fill the network's `which` variables from the .npz at `path` (every one must be there, with
    its shape); returns the opened file for the family's extra keys."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from segue.errors import SegueError

    if not path.exists():
        raise SegueError(f"{path}: no weights file")
    data = np.load(path)
    state = nnx.state(net, which)
    for k, v in nnx.to_flat_state(state):
        name = "/".join(map(str, k))
        if name not in data:
            raise SegueError(f"{path}: weights lack '{name}' (saved by another model config?)")
        arr = data[name]
        if arr.shape != v[...].shape:
            raise SegueError(f"{path}: '{name}' has shape {arr.shape}, the config expects {v[...].shape}")
        v[...] = jnp.asarray(arr)
    nnx.update(net, state)
    return data
