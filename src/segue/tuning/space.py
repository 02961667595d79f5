"""Search spaces for `segue tune`: a typed TOML file and the three ways of drawing configs from it.

A search space names the family, the store and split, the validation metric, the budget, fixed
settings (`[base]`) and the parameters to search (`[params."dotted.name"]`), each one of:

    choices = [...]                                   a categorical choice
    type = "int",   low = 1,    high = 10 [, step]    an integer range (inclusive)
    type = "float", low = 1e-3, high = 1e-1, log = true   a float range, optionally log-scaled
    when = { "loss.kind" = ["sampled", "logq"] }      only searched while another parameter takes one
                                                      of these values (else left at its default)

Parameter names are dotted paths into the family's config (`l2`, `window`, `model.d_model`,
`loss.n_negatives`). Conditions may only name parameters listed before them, so every strategy
draws parameters in file order and knows, at each one, whether it is active.

Strategies (pure functions of the space and a seed):
  grid    every combination (float ranges: `grid_points` values, log-spaced if `log`; int ranges:
          every integer, or every `step`th), conditions applied, duplicates dropped, in file
          order; a grid larger than budget.trials is sampled (seeded, evenly at random), and
          `segue tune` says how much of it runs
  random  seeded independent draws (log-uniform where `log`)
  tpe     Optuna's TPE sampler, asked `budget.parallel` configs per round and told their results
          (see segue.tuning.study)
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
from pydantic import Field, model_validator

from segue.config import Config, read_toml
from segue.errors import ConfigError
from segue.evaluation.metrics import PER_K_METRICS, WHOLE_LIST_METRICS

Value = bool | int | float | str


class Param(Config):
    """One searched setting: `choices`, or an int/float range `low`..`high` (inclusive)."""

    type: Literal["choice", "int", "float"] = "choice"
    choices: list[Value] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)  # int ranges: grid and draws on low + k * step
    grid_points: int = Field(3, ge=1)  # float ranges under the grid strategy
    when: dict[str, list[Value]] = {}

    @model_validator(mode="before")
    @classmethod
    def _infer_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "type" not in data and "choices" not in data and "low" in data:
            data = {**data, "type": "float"}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a choice parameter needs a non-empty `choices` list")
            if self.low is not None or self.high is not None:
                raise ValueError("give either `choices` or `low`/`high`, not both")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"an {self.type} range needs `low` and `high`")
            if self.low > self.high:
                raise ValueError(f"`low` ({self.low}) is above `high` ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("a log-scaled range needs `low` > 0")
            if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
                raise ValueError("an int range needs integer `low` and `high`")
        return self

    def grid(self) -> list[Value]:
        """The values the grid strategy tries."""
        if self.type == "choice":
            return list(self.choices or [])
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        if self.type == "int":
            step = int(self.step or 1)
            return list(range(int(lo), int(hi) + 1, step))
        if self.grid_points == 1:
            return [lo]
        pts = np.geomspace(lo, hi, self.grid_points) if self.log else np.linspace(lo, hi, self.grid_points)
        return [float(f"{x:.6g}") for x in pts]

    def draw(self, rng: np.random.Generator) -> Value:
        """One seeded random value (uniform over choices; log-uniform where `log`)."""
        if self.type == "choice":
            choices = self.choices or []
            return choices[int(rng.integers(len(choices)))]
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        if self.type == "int":
            if self.log:
                x = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi + 1))) - 0.5))
                return int(min(max(x, lo), hi))
            step = int(self.step or 1)
            n = (int(hi) - int(lo)) // step
            return int(lo) + step * int(rng.integers(n + 1))
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if self.log else float(rng.uniform(lo, hi))

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this parameter can take."""
        if self.type == "choice":
            return value in (self.choices or [])
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.type == "int" and value != int(value):
            return False
        return float(self.low) <= value <= float(self.high)  # type: ignore[arg-type]


class Budget(Config):
    trials: int = Field(20, ge=1)
    minutes: float | None = Field(None, gt=0)  # no trial starts after this much wall time
    parallel: int = Field(4, ge=1)  # TPE: configs asked (and run in parallel) per round


class Pruning(Config):
    """Median pruning of iterative families (Optuna's MedianPruner) on intermediate validation."""

    enabled: bool = True
    startup_trials: int = Field(4, ge=0)  # finished trials before any is pruned
    warmup_steps: int = Field(0, ge=0)  # steps of a trial before it may be pruned


class SearchSpace(Config):
    """A `segue tune` search-space file (see the module docstring)."""

    family: str
    store: str  # relative paths: to the file's folder
    split: str
    protocol: str = "leave_last_out"
    metric: str = "ndcg@10"  # on the validation part; higher is better
    ks: list[int] = [1, 5, 10, 20, 50, 100]
    strategy: Literal["grid", "random", "tpe"] = "tpe"
    seed: int = 0
    budget: Budget = Budget()
    pruning: Pruning = Pruning()
    base: dict[str, Any] = {}  # fixed settings of the family's config (nested tables or dotted keys)
    params: dict[str, Param]
    base_dir: str | None = Field(None, exclude=True)
    source: str = Field("search space", exclude=True)  # the file, for messages (not saved)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not self.params:
            raise ValueError("no parameter to search: add [params.NAME] tables")
        names = list(self.params)
        for i, (name, p) in enumerate(self.params.items()):
            for dep, values in p.when.items():
                if dep not in names[:i]:
                    raise ValueError(
                        f"params.{name}.when names '{dep}', which is not a parameter listed before '{name}'"
                    )
                bad = [v for v in values if not self.params[dep].contains(v)]
                if bad:
                    raise ValueError(f"params.{name}.when: {bad} is not a value '{dep}' can take")
        return self

    @classmethod
    def load(cls, path: str | Path) -> Self:
        path = Path(path)
        space = cls.from_dict(read_toml(path), source=str(path))
        return space.model_copy(update={"base_dir": str(path.parent.resolve()), "source": str(path)})

    @classmethod
    def parse(cls, text: str, *, source: str = "<search space>", base_dir: str | None = None) -> Self:
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
        return cls.from_dict(data, source=source).model_copy(update={"base_dir": base_dir, "source": source})

    @property
    def store_path(self) -> Path:
        p = Path(self.store)
        return p if p.is_absolute() or self.base_dir is None else Path(self.base_dir) / p

    def active(self, name: str, chosen: dict[str, Value]) -> bool:
        """Whether parameter `name` is searched given the values `chosen` so far."""
        return all(dep in chosen and chosen[dep] in values for dep, values in self.params[name].when.items())

    def valid(self, params: dict[str, Value]) -> bool:
        """A drawn assignment: every active parameter set to one of its values, no inactive one set."""
        chosen: dict[str, Value] = {}
        for name, p in self.params.items():
            if self.active(name, chosen):
                if name not in params or not p.contains(params[name]):
                    return False
                chosen[name] = params[name]
            elif name in params:
                return False
        return set(params) <= set(self.params)


# ---------------------------------------------------------------------------------------------
# strategies


# a grid whose raw product is larger is refused (enumerating it would not end): random or tpe
MAX_GRID = 1_000_000


def full_grid(space: SearchSpace) -> list[dict[str, Value]]:
    """Every distinct combination in file order (the last parameter varies fastest), conditions
    applied: an inactive parameter is left out, so combinations differing only there collapse."""
    names = list(space.params)
    values = [space.params[n].grid() for n in names]
    raw = math.prod(len(v) for v in values)
    if raw > MAX_GRID:
        sizes = ", ".join(f"{n}: {len(v)}" for n, v in zip(names, values, strict=True))
        raise ConfigError(
            f"{space.source}: field 'strategy': the grid has {raw:,} combinations ({sizes}; int ranges give every "
            f"integer, or every `step`th), over {MAX_GRID:,}: use strategy = \"random\" or \"tpe\", or fewer values"
        )
    out: list[dict[str, Value]] = []
    seen: set[tuple] = set()
    for combo in itertools.product(*values):
        chosen: dict[str, Value] = {}
        for name, value in zip(names, combo, strict=True):
            if space.active(name, chosen):
                chosen[name] = value
        key = tuple(sorted((k, repr(v)) for k, v in chosen.items()))
        if key not in seen:
            seen.add(key)
            out.append(chosen)
    return out


def grid_configs(space: SearchSpace) -> list[dict[str, Value]]:
    """The grid's combinations (see full_grid), at most budget.trials. A grid larger than the
    budget is sampled evenly at random (seeded by the space's seed, kept in grid order): its
    first budget.trials combinations would all share the first parameters' first values."""
    grid = full_grid(space)
    n = space.budget.trials
    if len(grid) <= n:
        return grid
    keep = np.sort(np.random.default_rng(space.seed).choice(len(grid), size=n, replace=False))
    return [grid[int(i)] for i in keep]


def grid_size(space: SearchSpace) -> int:
    """How many distinct combinations the grid has (before the trial budget)."""
    return len(full_grid(space))


def random_configs(space: SearchSpace, n: int | None = None, seed: int | None = None) -> list[dict[str, Value]]:
    """`n` (default budget.trials) seeded draws; inactive parameters are not drawn."""
    rng = np.random.default_rng(space.seed if seed is None else seed)
    out = []
    for _ in range(space.budget.trials if n is None else n):
        chosen: dict[str, Value] = {}
        for name, p in space.params.items():
            if space.active(name, chosen):
                chosen[name] = p.draw(rng)
        out.append(chosen)
    return out


# ---------------------------------------------------------------------------------------------
# configs


def set_dotted(tree: dict[str, Any], name: str, value: Any) -> None:
    """tree[a][b][c] = value for name 'a.b.c', creating tables on the way."""
    *path, last = name.split(".")
    node = tree
    for key in path:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"parameter '{name}': '{key}' is a value, not a table")
        node = nxt
    node[last] = value


def config_dict(space: SearchSpace, params: dict[str, Value]) -> dict[str, Any]:
    """The family's config as a nested dict: `base` with the trial's parameters set over it."""
    import copy

    tree: dict[str, Any] = {}
    for key, value in copy.deepcopy(space.base).items():
        set_dotted(tree, key, value)  # dotted keys in [base] are allowed too
    for name, value in params.items():
        set_dotted(tree, name, value)
    return tree


def family_config(space: SearchSpace, params: dict[str, Value], *, source: str = "trial") -> Config:
    """The family's typed config for a trial (a ConfigError names a setting the family rejects)."""
    from segue.models.base import model_class

    cls = model_class(space.family).config_class
    return cls.from_dict(config_dict(space, params), source=f"{space.family} config of {source}")


def check_space(space: SearchSpace) -> None:
    """Errors a user can fix before anything runs: an unknown family or setting name."""
    from segue.errors import SegueError
    from segue.models.base import families, model_class

    if space.family not in families():
        raise ConfigError(f"{space.source}: field 'family': '{space.family}' is not a family ({', '.join(families())})")
    try:
        cls = model_class(space.family).config_class
    except ImportError as e:
        raise SegueError(f"family '{space.family}' is not available here ({e})") from None
    for name in space.params:
        node: Any = cls
        for part in name.split("."):
            fields = getattr(node, "model_fields", None)
            if fields is None or part not in fields:
                known = ", ".join(fields) if fields else "none (a value)"
                raise ConfigError(
                    f"{space.source}: params.{name}: '{part}' is not a setting of {space.family} (settings here: {known})"
                )
            node = fields[part].annotation
    check_metric(space)
    if space.strategy == "grid":
        full_grid(space)  # a grid too large to enumerate is refused here, not in the flow's start step
    # the defaults of every parameter must at least validate with [base]
    family_config(space, {}, source="[base]")


# name@k, k in ks: the per-query metrics, and popularity percentile and coverage at k
RANKING_METRICS = (*PER_K_METRICS, "poppct", "coverage")


def check_metric(space: SearchSpace) -> None:
    """ConfigError when `metric` is a name validation never measures (a k outside `ks`, an unknown
    name, a ranking metric without its @k): every trial was fitted, then failed on it."""
    name, at, k = space.metric.partition("@")
    measured = ", ".join(f"{m}@{x}" for m in ("ndcg", "hr", "recall") for x in space.ks)
    if not at:
        if name in WHOLE_LIST_METRICS:  # measured over the whole list, no k
            return
        hint = f"; a ranking metric needs its k, e.g. {name}@{10 if 10 in space.ks else space.ks[0]}" if name in RANKING_METRICS and space.ks else ""
        raise ConfigError(
            f"{space.source}: field 'metric': '{space.metric}' is not measured (expected {', '.join(WHOLE_LIST_METRICS)}, "
            f"or one of {', '.join(RANKING_METRICS)} at a k of ks, e.g. {measured}){hint}"
        )
    if name not in RANKING_METRICS:
        raise ConfigError(
            f"{space.source}: field 'metric': '{space.metric}' is not measured: '{name}' is not a ranking metric "
            f"(expected one of {', '.join(RANKING_METRICS)} at a k of ks, e.g. {measured})"
        )
    if not k.isdigit() or int(k) not in space.ks:
        raise ConfigError(
            f"{space.source}: field 'metric': '{space.metric}' is not measured: {k} is not in ks = {space.ks} "
            f"(expected e.g. {measured}, or add {k} to ks)"
        )
