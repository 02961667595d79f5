"""Two-tower export: a model's item vectors and the user vector of every sequence, as Parquet.

For an embedding model (one with `item_embeddings()` and `query_embeddings()`, the transformer
among them) score(c | history) = <u, v_c>, with
    v_c  the item's output vector (the transformer's tied item table row), and
    u    the history's query: the last hidden state after the next-item head's MLP, joined with
         the context of the event to predict when the model reads context (ARGUS' next-item head).
So any maximum-inner-product index over the item vectors (segue.serving.index) retrieves the
model's own top k for a user from the exported vectors alone, without running the model. A model
fine-tuned pairwise to rank by its feedback head (`[pairwise] score = "mix"` or `"feedback"`) has
no such towers: its export holds the next-item logit's vectors, for candidate retrieval, and
export.json says `"exact": false` with the score it ranks by (the CLI warns).

The folder `segue export RUN -o DIR` writes (atomically: the old folder or the complete new one):
    items.parquet   token int32, external_id string, features_only bool, vector fixed_size_list<float32>[D]
                    (every vocabulary item, then the items added with `segue items add` (features_only:
                    their vectors composed from their features, as the server scores them); the special
                    tokens are left out)
    users.parquet   seq_id int32, external_id string, n_events int32, vector [D]
                    (part all: every sequence of the split with at least one history event; part
                    valid / test: the sequences that part scores, with targets there and a history
                    before them)
    export.json     run, family, dim, store checksum, split, part, counts (n_added_items: the added
                    items among n_items), and the score formula

`part` picks the history a user vector summarises: "all" (default) every event of the sequence in
the split, the vector to serve now (next context: the last event's); "valid" / "test" the history
before that part's targets, with the next context of the first target, the vector that evaluation
scores (to check an index against the evaluated model); export.json counts the sequences with
targets there (n_with_targets) and those left out for want of a history (n_without_history). A split
that holds out whole sequences (random_sequence: scored by playlist continuation from their first
tracks) has no history before a part, and is refused for valid / test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import numpy as np

    from segue.data.arrays import SequenceArrays
    from segue.data.store import Store
    from segue.models.base import BaseRecommender
    from segue.serving.index import ExactIndex, HNSWIndex, IndexConfig

ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
META_FILE = "export.json"
PARTS = ("all", "valid", "test")
CHUNK_ROWS = 4096  # user rows per model call and Parquet row group (bounds memory)


@dataclass
class TwoTower:
    """A loaded export: item and user vectors with their keys (see the module docstring)."""

    item_tokens: np.ndarray  # int64 [I]
    item_ids: list[str]
    items: np.ndarray  # float32 [I, D]
    user_seq_ids: np.ndarray  # int64 [U]
    user_ids: list[str]
    users: np.ndarray  # float32 [U, D]
    meta: dict[str, Any]

    def index(self, config: IndexConfig | None = None, cache_dir: str | Path | None = None) -> ExactIndex | HNSWIndex:
        """The serving index over the item vectors, keyed by token (segue.serving.index)."""
        from segue.serving.index import build_index

        return build_index(self.items, self.item_tokens, config, cache_dir=cache_dir)


def _vectors(table: Any, column: str = "vector") -> np.ndarray:
    import numpy as np
    import pyarrow as pa

    col = table.column(column).combine_chunks()
    if len(col) == 0:
        return np.zeros((0, int(col.type.list_size) if pa.types.is_fixed_size_list(col.type) else 0), np.float32)
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(col), -1)


def _vector_column(x: np.ndarray) -> Any:
    import numpy as np
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def read_export(folder: str | Path) -> TwoTower:
    """An export folder written by `export_vectors` (InputError naming a missing file)."""
    import numpy as np
    import pyarrow.parquet as pq

    from segue.errors import InputError

    folder = Path(folder)
    for name in (ITEMS_FILE, USERS_FILE, META_FILE):
        if not (folder / name).exists():
            raise InputError(f"not a two-tower export: {name} is missing", path=folder, expected="a folder written by segue export")
    items = pq.read_table(folder / ITEMS_FILE)
    users = pq.read_table(folder / USERS_FILE)
    return TwoTower(
        item_tokens=items.column("token").to_numpy().astype(np.int64),
        item_ids=items.column("external_id").to_pylist(),
        items=_vectors(items),
        user_seq_ids=users.column("seq_id").to_numpy().astype(np.int64),
        user_ids=users.column("external_id").to_pylist(),
        users=_vectors(users),
        meta=json.loads((folder / META_FILE).read_text(encoding="utf-8")),
    )


def user_histories(store: Store, split: str, part: str, vocab: Any) -> tuple[SequenceArrays, SequenceArrays | None]:
    """(histories, next events or None) of every sequence for `part` (see the module docstring),
    coded with the model's vocabulary."""
    from segue.data.arrays import compile_split
    from segue.data.splits import Part, history_parts

    if part == "all":
        return compile_split(store, split, tuple(int(p) for p in Part), vocab=vocab), None
    target = Part.VALID if part == "valid" else Part.TEST
    hist = compile_split(store, split, history_parts(target), vocab=vocab)
    return hist, compile_split(store, split, (int(target),), vocab=vocab)


def export_vectors(
    model: BaseRecommender,
    store: Store,
    split: str,
    out: str | Path,
    *,
    part: str = "all",
    run: str = "",
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, Any]:
    """Write the export folder `out` (atomically) and return its export.json content."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segue.data.vocab import N_SPECIAL, Vocabulary, check_vocab
    from segue.errors import ConfigError, SegueError
    from segue.io import atomic_path, check_output

    if part not in PARTS:
        raise ConfigError(f"--part '{part}': expected one of {', '.join(PARTS)}")
    check_output(out, "export", META_FILE)  # the folder replaces the whole path: only a new one or an earlier export
    check_two_towers(model)
    ranks_by = ranking_score(model)
    # The training vocabulary, and after it the items added without retraining (segue items add:
    # features-only vectors, which the server scores too); a model without added items has one.
    base, vocab = model.base_vocab(), model.extended_vocab()
    n_added = len(vocab) - len(base)
    store.require_split(split)
    # another store's (or split's) items under the same token ids would make every user vector
    # meaningless: the check `segue evaluate` makes (on the training tokens: the store has no added items)
    check_vocab(model.family, base, Vocabulary.from_store(store.con, split), split, use="the export reads", fix="export")
    emb = np.asarray(model.item_embeddings(), dtype=np.float32)  # type: ignore[attr-defined]
    if emb.ndim != 2 or emb.shape[0] != len(vocab):
        raise SegueError(f"{model.family}: item_embeddings() has shape {emb.shape}, not [{len(vocab)}, d]")
    dim = int(emb.shape[1])
    hist, nxt = user_histories(store, split, part, base)
    rows = hist.nonempty()
    n_targets = n_no_history = 0
    if nxt is not None:
        # the sequences the part scores (evaluation's queries: a history and targets in the part),
        # not every sequence with a history (most of which have no target there)
        has_target = np.asarray(nxt.lengths) > 0
        n_targets = int(has_target.sum())
        rows = rows[has_target[rows]]
        n_no_history = n_targets - len(rows)
        if n_targets and not len(rows):
            raise ConfigError(
                f"--part {part}: none of the {n_targets} sequences with {part} targets in split '{split}' has a "
                f"history before them: the split holds out whole sequences (kind "
                f"'{store.split_info(split)['kind']}', scored by playlist continuation from their first tracks), "
                "which no one vector per sequence gives; export --part all (the vectors to serve now)"
            )
    seq_keys = dict(store.con.execute("SELECT seq_id, external_id FROM sequences").fetchall())
    vec_type = pa.list_(pa.float32(), dim)
    user_schema = pa.schema([("seq_id", pa.int32()), ("external_id", pa.string()), ("n_events", pa.int32()), ("vector", vec_type)])
    lengths = hist.lengths
    with atomic_path(out, is_dir=True) as tmp:
        tokens = np.arange(N_SPECIAL, len(vocab), dtype=np.int32)
        items = pa.table(
            {
                "token": pa.array(tokens, pa.int32()),
                "external_id": pa.array([vocab.external_ids[t] for t in tokens], pa.string()),
                "features_only": pa.array(tokens >= len(base), pa.bool_()),
                "vector": _vector_column(emb[N_SPECIAL:].reshape(-1, dim)),
            }
        )
        pq.write_table(items, tmp / ITEMS_FILE)
        with pq.ParquetWriter(tmp / USERS_FILE, user_schema) as writer:
            for s in range(0, len(rows), chunk_rows):
                sel = rows[s : s + chunk_rows]
                # Only models that read the next event's context take next_events.
                kw = {} if nxt is None else {"next_events": nxt}
                q = np.asarray(model.query_embeddings(hist, sel, **kw), dtype=np.float32)  # type: ignore[attr-defined]
                batch = pa.table(
                    {
                        "seq_id": pa.array(sel.astype(np.int32), pa.int32()),
                        "external_id": pa.array([seq_keys.get(int(r)) for r in sel], pa.string()),
                        "n_events": pa.array(lengths[sel].astype(np.int32), pa.int32()),
                        "vector": _vector_column(q.reshape(len(sel), dim)),
                    },
                    schema=user_schema,
                )
                writer.write_table(batch)
        meta = {
            "run": run,
            "run_id": str(model.meta.get("run_id") or Path(run).name),
            "family": model.family,
            "dim": dim,
            "store_checksum": store.checksum,
            "split": split,
            "part": part,
            "n_items": len(tokens),
            "n_added_items": n_added,
            "n_users": len(rows),
            **({"n_with_targets": n_targets, "n_without_history": n_no_history} if nxt is not None else {}),
            "score": "score(item | user) = users.vector . items.vector (the model's own next-item score)",
            "exact": ranks_by is None,
        }
        if ranks_by is not None:
            meta["ranks_by"] = ranks_by
            meta["score"] = (
                "users.vector . items.vector is the model's next-item logit, NOT its ranking score: "
                f"it ranks by pairwise.score = '{ranks_by}' (the feedback head), which is no inner "
                "product; an index over these vectors retrieves candidates for that head to rank"
            )
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def ranking_score(model: BaseRecommender) -> str | None:
    """None where score() is the next-item logit <u, v_c> that the towers give; else the score a
    pairwise fine-tuned model ranks by ("mix": a learned blend with the feedback head; "feedback"),
    which no pair of vectors reproduces."""
    rank = getattr(getattr(model, "config", None), "rank", None)
    got = rank() if callable(rank) else None
    return None if got is None else str(got[0])


def check_two_towers(model: BaseRecommender) -> None:
    """A SegueError unless the model offers item_embeddings() and query_embeddings()."""
    from segue.errors import SegueError

    if not (callable(getattr(model, "item_embeddings", None)) and callable(getattr(model, "query_embeddings", None))):
        raise SegueError(
            f"the {model.family} model has no two towers: it offers no item_embeddings() / query_embeddings() "
            "(embedding families such as the transformer do)"
        )


def run_store_split(run: Path) -> tuple[Path | None, str | None]:
    """The store and split a run folder was trained on (its config.toml), where it says."""
    import tomllib

    cfg = run / "config.toml"
    if not cfg.exists():
        return None, None
    data = tomllib.loads(cfg.read_text(encoding="utf-8")).get("data", {})
    store = data.get("store")
    path = None
    if store:
        for cand in (Path(store), run / store, run.parent / store, run.parent.parent / store):
            if cand.exists():
                path = cand
                break
    return path, data.get("split")


def export(
    run: Annotated[Path, typer.Argument(help="Run or model folder of an embedding model (the transformer).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (replaced atomically).")],
    store: Annotated[Path | None, typer.Option(help="Store (default: the run's, from its config.toml).")] = None,
    split: Annotated[str | None, typer.Option(help="Split of the store (default: the run's).")] = None,
    part: Annotated[str, typer.Option(help="History per user: all (serve now), valid or test (the sequences that part scores, their history before it).")] = "all",
) -> None:
    """Export item vectors and every sequence's user vector as Parquet (two-tower retrieval).

    score(item | user) = <user vector, item vector> is the model's own next-item score, so an ANN
    index over items.parquet (segue.serving.index) retrieves its top k from users.parquet alone.
    The items added to the run with `segue items add` are exported too (features_only).
    """
    from segue.data.store import Store
    from segue.errors import ConfigError
    from segue.models.base import load_model
    from segue.serving.items import apply_added_items

    model = load_model(run)
    check_two_towers(model)  # before asking for a store or split that could not help
    apply_added_items(model, run)  # the items `segue items add` gave the run: served, so exported
    saved_store, saved_split = run_store_split(run)
    store_path = store or saved_store
    if store_path is None:
        raise ConfigError(f"{run}: no store given and the run's config.toml names none that exists (pass --store)")
    split_name = split or saved_split
    if split_name is None:
        raise ConfigError(f"{run}: no split given and the run's config.toml names none (pass --split)")
    with Store.open(store_path) as st:
        meta = export_vectors(model, st, split_name, out, part=part, run=str(run))
    typer.echo(
        f"wrote {out}: {meta['n_items']} item vectors"
        + (f" ({meta['n_added_items']} of them added with segue items add, features_only)" if meta["n_added_items"] else "")
        + f" and {meta['n_users']} user vectors (dim {meta['dim']}, split '{split_name}', part {part})"
        + (
            f": the sequences with {part} targets"
            + (f" ({meta['n_without_history']} of {meta['n_with_targets']} left out: no history before them)" if meta["n_without_history"] else "")
            if part != "all" else ""
        )
    )
    if not meta["exact"]:
        typer.echo(
            f"warning: {run} ranks by pairwise.score = '{meta['ranks_by']}', which is no inner product: "
            "the vectors give its next-item logit (for retrieving candidates), not its ranking (export.json says so)",
            err=True,
        )
