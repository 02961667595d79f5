"""The one model interface: every family (baselines, transformer) implements `Recommender`.

Everything speaks vocabulary tokens (see segue.data.vocab): scores are over the whole token range
[0, V), and special tokens (<pad>, <start>, <eop>, <unk>) are never recommended. A model folder
holds `model.toml` (family + typed config), `vocab.json`, and whatever state the family saves; the
evaluator, the CLI and the server only use `load_model(folder)` and this protocol.
"""

from __future__ import annotations

import json
import pickle
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np

from segue.config import Config
from segue.data.arrays import SequenceArrays, SplitData
from segue.data.vocab import N_SPECIAL, Vocabulary
from segue.errors import InputError, SegueError
from segue.io import atomic_path, check_output

NEG_INF = np.float32(-np.inf)


@runtime_checkable
class Recommender(Protocol):
    family: ClassVar[str]
    config: Config
    vocab: Vocabulary

    def fit(self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None) -> Self:
        """Train on `data.train` (and optionally use `data` validation views for early stopping)."""
        ...

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        """Scores [B, V] float32 for the histories `rows` (all rows if None). Higher is better.

        Special tokens get -inf. Histories may be empty (cold start): each family scores them
        in its own way, never with an error (the baselines by popularity; the transformer from
        <start> alone, the autoencoder from an empty profile: what training taught them for
        an empty input; the server's empty-history rule, log(1 + training count), is separate).
        """
        ...

    def recommend(
        self,
        histories: SequenceArrays,
        k: int,
        rows: np.ndarray | None = None,
        *,
        exclude_seen: bool = True,
        allow: np.ndarray | None = None,
        deny: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k tokens [B, k] and their scores [B, k], best first, equal scores by ascending token;
        k is an int >= 1. Slots without a candidate (fewer than k left after masking) are token -1
        with score -inf."""
        ...

    def save(self, folder: str | Path) -> Path: ...

    @classmethod
    def load(cls, folder: str | Path) -> Self: ...


class BaseRecommender:
    """Shared plumbing: recommend() on top of score(), and folder save/load around the family's state.

    Subclasses set `family` and `config_class`, implement `fit`, `score`, `_save_state(folder)` and
    `_load_state(folder)`.
    """

    family: ClassVar[str] = "base"
    config_class: ClassVar[type[Config]] = Config
    # score() ignores the history (popularity): a two-stage pipeline sorts its order once
    history_independent: ClassVar[bool] = False
    # a history is a set (a profile): a repeated item counts once, with its last rating
    profile_set: ClassVar[bool] = False
    # score() reads unrated history items; False for a rating model that folds in rated events
    # only (biasedmf), whose answer to an unrated history is the unpersonalised one
    reads_unrated: ClassVar[bool] = True
    # meta keys fit() records and score() reads: a folder whose model.toml lacks one fails at load
    meta_fields: ClassVar[tuple[str, ...]] = ()
    # state checked against vocab.json at load: file -> (attribute, shape), a dimension being "n"
    # (items), "V" (tokens, items + specials), a number, or None (any size)
    state_shapes: ClassVar[dict[str, tuple[str, tuple[int | str | None, ...]]]] = {}

    def __init__(self, config: Config | None = None, vocab: Vocabulary | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        self.vocab = vocab  # set by fit() or load()
        self.meta: dict[str, Any] = {}

    # --- to implement ---------------------------------------------------------------------------
    def fit(self, data: SplitData, *, progress: Callable[[str, int, int], None] | None = None) -> Self:
        raise NotImplementedError

    def score(self, histories: SequenceArrays, rows: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def _save_state(self, folder: Path) -> None:
        raise NotImplementedError

    def _load_state(self, folder: Path) -> None:
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------
    def _check_fitted(self) -> Vocabulary:
        if self.vocab is None:
            raise SegueError(f"{self.family}: the model is not fitted (call fit() or load())")
        return self.vocab

    def recommend(
        self,
        histories: SequenceArrays,
        k: int,
        rows: np.ndarray | None = None,
        *,
        exclude_seen: bool = True,
        allow: np.ndarray | None = None,
        deny: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = histories.check_rows(rows)
        k = check_k(k)
        scores = self.score(histories, rows)
        return top_k(scores, k, histories if exclude_seen else None, rows, allow=allow, deny=deny)

    def save(self, folder: str | Path) -> Path:
        """Write the model folder `folder` whole (atomically). It may replace only an empty folder
        or an earlier folder save() wrote (one holding its saved.json, which lists what it wrote),
        holding nothing else but what serving derives there (items.parquet, item_names.json,
        serving/). Anything else (a training run's checkpoints/, metrics.json, tensorboard/, your
        files) is a SegueError naming it, raised before anything is written (nothing is deleted)."""
        vocab = self.base_vocab()  # the vocabulary the state is sized for
        folder = Path(folder)
        check_save_folder(folder)
        with atomic_path(folder, is_dir=True) as tmp:
            write_model_header(self, tmp)
            vocab.save(tmp / "vocab.json")
            self._save_state(tmp)
            entries = sorted(p.name for p in tmp.iterdir())
            (tmp / SAVED_FILE).write_text(json.dumps({"written_by": "segue save()", "entries": entries}, indent=1) + "\n")
        return folder

    def base_vocab(self) -> Vocabulary:
        """The training vocabulary, which the model's state is sized for (and save() writes)."""
        return self._check_fitted()

    def extended_vocab(self) -> Vocabulary:
        """The vocabulary with any items added since training (features-only families extend it;
        others have none to add)."""
        return self._check_fitted()

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        folder = Path(folder)
        header = read_model_header(folder)
        if header["family"] != cls.family:
            raise SegueError(f"{folder}: holds a '{header['family']}' model, not '{cls.family}'")
        model = cls(cls.config_class.from_dict(header["config"], source=str(folder / "model.toml"), within=("config",)))
        model.vocab = Vocabulary.load(folder / "vocab.json")
        model.meta = model_meta(header)
        missing = [f for f in cls.meta_fields if f not in model.meta]
        if missing:
            raise SegueError(f"{folder / 'model.toml'}: field 'meta' lacks {', '.join(map(repr, missing))}, which the {cls.family} family records when fitted (a damaged or hand-edited model folder)")
        model._load_state(folder)
        model._check_state(folder)
        return model

    def _check_state(self, folder: Path) -> None:
        """Every array of `state_shapes` fits the vocabulary (weights of another model would score
        a catalogue of another size); else a SegueError naming the file."""
        vocab = self._check_fitted()
        sizes = {"n": vocab.n_items, "V": len(vocab)}
        for file, (attr, dims) in self.state_shapes.items():
            shape = tuple(np.shape(getattr(self, attr)))
            want = tuple(sizes.get(d, d) if isinstance(d, str) else d for d in dims)
            if len(shape) != len(want) or any(w is not None and a != w for a, w in zip(shape, want, strict=True)):
                shown = "(" + ", ".join("any" if w is None else str(w) for w in want) + ")"
                raise SegueError(
                    f"{folder / file}: shape {shape} does not fit {folder / 'vocab.json'} ({sizes['n']} items, "
                    f"{sizes['V']} tokens; expected {shown}): the files come from different models"
                )


# help() on a family's method shows the contract: a method without a docstring inherits
# BaseRecommender's (inspect.getdoc reads the class hierarchy), which is the protocol's text.
for _name in ("fit", "score", "recommend"):
    getattr(BaseRecommender, _name).__doc__ = getattr(Recommender, _name).__doc__
BaseRecommender.load.__func__.__doc__ = (  # type: ignore[attr-defined]
    "The model saved in `folder` by save() (or a training run folder), its config checked; a "
    "SegueError naming the file when the folder holds another family or a damaged state."
)


# save()'s marker: the entries it wrote. A training run folder also holds model.toml, but also its
# checkpoints, metrics and logs, which replacing the folder would delete; only this file says
# "save() wrote this folder".
SAVED_FILE = "saved.json"
# What serving writes beside a saved model (catalogue table, item names, index cache): derived
# from the model and the store, so a re-save may replace it.
DERIVED_ENTRIES = ("items.parquet", "item_names.json", "serving")


def check_save_folder(folder: Path) -> None:
    """May save() replace `folder`? Absent, empty, or an earlier save() folder (SAVED_FILE) holding
    only the entries it lists and DERIVED_ENTRIES; else a SegueError naming what is in the way."""
    if folder.is_dir() and not folder.is_symlink() and (folder / "model.toml").is_file() and not (folder / SAVED_FILE).is_file():
        entries = sorted(p.name for p in folder.iterdir())
        more = f", ... ({len(entries)} in all)" if len(entries) > 8 else ""
        raise SegueError(
            f"{folder}: holds model.toml but no {SAVED_FILE}, so save() did not write it (a training run folder, "
            f"or a model saved by an older segue); replacing it would delete {', '.join(entries[:8])}{more}; "
            "choose another path or remove it"
        )
    if not check_output(folder, "model folder", SAVED_FILE):
        return
    try:
        listed = set(json.loads((folder / SAVED_FILE).read_text(encoding="utf-8"))["entries"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SegueError(f"{folder / SAVED_FILE}: unreadable ({e}); choose another path or remove the folder") from None
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in listed | {SAVED_FILE, *DERIVED_ENTRIES})
    if foreign:
        more = f", ... ({len(foreign)} in all)" if len(foreign) > 5 else ""
        raise SegueError(
            f"{folder}: holds {', '.join(foreign[:5])}{more}, which save() did not write: saving would delete "
            "them (nothing was written); choose another path or remove them"
        )


# The last line of a model.toml that write_model_header wrote: a file cut inside [config] still parses,
# and its missing keys would load as defaults, so a header that says it ends with the marker must.
END_MARKER = "# end of model.toml"


def write_model_header(model: BaseRecommender, folder: Path) -> None:
    """model.toml: family, meta (JSON text) and the typed config as nested [config.*] tables."""
    import tomli_w

    from segue.config import _drop_none
    from segue.io import atomic_write_text

    header = {
        "family": model.family,
        "meta": json.dumps(model.meta, default=str),
        "ends_with_marker": True,
        "config": _drop_none(model.config.model_dump(mode="json")),
    }
    atomic_write_text(folder / "model.toml", tomli_w.dumps(header) + END_MARKER + "\n")


def top_k(
    scores: np.ndarray,
    k: int,
    histories: SequenceArrays | None = None,
    rows: np.ndarray | None = None,
    *,
    allow: np.ndarray | None = None,
    deny: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of `scores` [B, V] after masking special tokens, seen tokens, and allow/deny lists.

    Modifies `scores` in place (it is the caller's scratch batch). Returns tokens [B, k] int32 and
    scores [B, k] float32 sorted by descending score, equal scores by ascending token (the rule of
    `select_top`), so top_k(k) is a prefix of top_k(k + 1). A slot with no candidate left (all
    remaining items masked, or k > V) is token -1 with score -inf; a NaN score is no candidate.
    History tokens outside [0, V) are skipped (items unknown to the model); an allow or deny
    token outside [0, V) is an InputError.
    """
    k = check_k(k)
    v = scores.shape[1]
    scores[np.isnan(scores)] = NEG_INF
    scores[:, :N_SPECIAL] = NEG_INF
    if histories is not None:
        rows = np.arange(len(histories)) if rows is None else rows
        mask_seen(scores, histories, rows)
    if deny is not None and len(deny):
        scores[:, _check_tokens(deny, v, "deny")] = NEG_INF
    if allow is not None:
        keep = np.zeros(v, dtype=bool)
        keep[_check_tokens(allow, v, "allow")] = True
        scores[:, ~keep] = NEG_INF
    n = min(k, v)
    idx = np.empty((len(scores), n), dtype=np.int64)
    for i in range(len(scores)):
        idx[i] = select_top(scores[i], n)
    top = np.take_along_axis(scores, idx, axis=1)
    tokens = np.full((len(scores), k), -1, dtype=np.int32)
    vals = np.full((len(scores), k), NEG_INF, dtype=np.float32)
    tokens[:, :n] = np.where(np.isneginf(top), -1, idx)
    vals[:, :n] = top
    return tokens, vals


def select_top(row: np.ndarray, k: int) -> np.ndarray:
    """Positions int64 [k] of the k largest entries of `row` [V] (1 <= k <= V), best first; equal
    values by ascending position, also at the cut (so the first k of select_top(row, k + 1) are
    select_top(row, k)). NaN counts as largest (as in np.argpartition), for callers that check.

    One argpartition, then a fix-up only where the k-th value is tied with entries left outside:
    those at the cut are replaced by the smallest positions holding that value.
    """
    v = len(row)
    if k >= v:
        idx = np.arange(v)
    else:
        idx = np.argpartition(row, v - k)[v - k :]
        cut = row[idx].min()
        if cut > NEG_INF:  # (not NaN) ties at -inf need no order: those slots become -1
            tied = np.flatnonzero(row == cut)
            inside = idx[row[idx] == cut]
            if len(tied) > len(inside):
                idx = np.concatenate([idx[row[idx] > cut], tied[: len(inside)]])
    return idx[np.lexsort((idx, -row[idx]))]


def check_k(k: object) -> int:
    """`k` as an int >= 1, or an InputError naming it."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InputError(f"k = {k!r}", field="k", expected="a whole number >= 1")
    return int(k)


def _check_tokens(tokens: np.ndarray, v: int, name: str) -> np.ndarray:
    """`tokens` as int64, or an InputError naming the first one outside [0, v)."""
    t = np.asarray(tokens)
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise InputError(f"{name} holds {t.dtype} values", field=name, expected="integer tokens")
    t = t.astype(np.int64).ravel()
    bad = t[(t < 0) | (t >= v)]
    if len(bad):
        raise InputError(f"token {int(bad[0])} is outside the vocabulary", field=name, expected=f"tokens in [0, {v})")
    return t


def mask_seen(scores: np.ndarray, histories: SequenceArrays, rows: np.ndarray) -> None:
    """Set scores[b, t] = -inf for every token t in the history of rows[b]; tokens outside
    [0, V) are skipped (never wrapped around: -1 is not the last item)."""
    rows = np.asarray(rows, dtype=np.int64)
    starts, stops = histories.offsets[rows], histories.offsets[rows + 1]
    lengths = stops - starts
    if lengths.sum() == 0:
        return
    b = np.repeat(np.arange(len(rows)), lengths)
    idx = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
    t = np.asarray(histories.tokens[idx], dtype=np.int64)
    ok = (t >= 0) & (t < scores.shape[1])
    scores[b[ok], t[ok]] = NEG_INF


# ---------------------------------------------------------------------------------------------
# registry

_FAMILIES: dict[str, Callable[[], type[BaseRecommender]]] = {}
_BUILTINS_REGISTERED = False


def register(family: str, importer: Callable[[], type[BaseRecommender]]) -> None:
    _FAMILIES[family] = importer


def families() -> list[str]:
    _register_builtins()
    return sorted(_FAMILIES)


def model_class(family: str) -> type[BaseRecommender]:
    _register_builtins()
    if family not in _FAMILIES:
        raise SegueError(f"unknown model family '{family}' (known: {', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[family]()


def read_model_header(folder: Path) -> dict[str, Any]:
    path = folder / "model.toml"
    if not folder.is_dir():
        raise SegueError(f"{folder}: no such model folder")
    if not path.exists():
        raise SegueError(f"{folder}: not a model folder (no model.toml)")
    from segue.config import read_utf8

    text = read_utf8(path, "the model header segue writes, in UTF-8", SegueError)  # written as UTF-8 whatever the locale
    try:
        header = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SegueError(f"{path}: not valid TOML: {e}") from None
    # write_model_header writes all three: one missing is a damaged (e.g. truncated) file
    if not isinstance(header.get("family"), str):
        raise SegueError(f"{path}: field 'family' is missing or not a string (expected the model family, e.g. family = \"ease\")")
    if not isinstance(header.get("config"), dict):
        raise SegueError(f"{path}: table [config] is missing (a damaged model.toml: the file is cut short?)")
    # (anywhere, not only last: a key appended by hand after it is still read, and refused by name if unknown)
    if header.get("ends_with_marker") is True and END_MARKER not in (line.strip() for line in text.splitlines()):
        raise SegueError(
            f"{path}: lacks the line '{END_MARKER}' that segue writes last (a damaged model.toml: the file "
            "is cut short?); its missing [config] keys would load as defaults, so it is refused"
        )
    return header


def model_meta(header: dict[str, Any]) -> dict[str, Any]:
    """A model header's meta (JSON text written by write_model_header); {} when it holds none
    that segue wrote."""
    meta = header.get("meta", "{}")
    try:
        got = json.loads(meta) if isinstance(meta, str) else None
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def load_model(folder: str | Path) -> BaseRecommender:
    """The model saved in `folder`; a folder whose files cannot be read (truncated weights, a
    missing file) is a SegueError naming it, so every command reports it alike (evaluate, serve, export)."""
    folder = Path(folder)
    header = read_model_header(folder)
    cls = model_class(header["family"])
    try:
        return cls.load(folder)
    except SegueError:
        raise
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise SegueError(f"{folder}: the model could not be loaded ({type(e).__name__}: {e}{_unreadable(folder, e)})") from e


def _unreadable(folder: Path, e: BaseException) -> str:
    """'; unreadable: <file>' for the file behind a load error, where it can be told cheaply."""
    name = getattr(e, "filename", None)
    if isinstance(name, str | Path):
        return f"; unreadable: {name}"
    if isinstance(e, zipfile.BadZipFile):  # np.load names no file: the archives that are no zip are the culprits
        bad = sorted(str(p) for p in folder.rglob("*.npz") if p.is_file() and not zipfile.is_zipfile(p))
        if bad:
            return f"; unreadable: {', '.join(bad)}"
    return ""


def _register_builtins() -> None:
    global _BUILTINS_REGISTERED
    if _BUILTINS_REGISTERED:
        return
    _BUILTINS_REGISTERED = True
    import importlib

    for family, module, cls in BUILTIN_FAMILIES:
        # setdefault: a family registered earlier by a plugin keeps its own class.
        _FAMILIES.setdefault(family, lambda m=module, c=cls: getattr(importlib.import_module(m), c))


# (family, module, class) of the families shipped with segue.
BUILTIN_FAMILIES: Sequence[tuple[str, str, str]] = (
    ("popularity", "segue.models.popularity", "Popularity"),
    ("itemknn", "segue.models.itemknn", "ItemKNN"),
    ("ease", "segue.models.ease", "EASE"),
    ("item2vec", "segue.models.item2vec", "Item2Vec"),
    ("als", "segue.models.als", "ALS"),
    ("biasedmf", "segue.models.biasedmf", "BiasedMF"),
    ("transformer", "segue.models.transformer", "TransformerRecommender"),
    ("autoencoder", "segue.models.autoencoder", "AutoencoderRecommender"),
    ("pipeline", "segue.models.pipeline", "PipelineRecommender"),
)
