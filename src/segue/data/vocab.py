"""The item vocabulary: tokens 0..3 are special, items follow by training frequency.

Fitted on the training part of a split only, so nothing about validation or test leaks into the
model's catalogue; items unseen in training (or rarer than `min_count`) map to `<unk>`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from segue.errors import SegueError
from segue.io import atomic_write_bytes

PAD, START, EOP, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<start>", "<eop>", "<unk>")
N_SPECIAL = len(SPECIAL_TOKENS)


def fit_vocab(con: duckdb.DuckDBPyConnection, split: str, min_count: int = 1) -> int:
    """Write the vocabulary of `split` into the `vocab` table; return its size (specials included).

    Items are ordered by training count (descending), ties by item_id, so token order is stable
    and popularity-ordered (useful for log-uniform sampling and for reading).
    """
    con.execute("DELETE FROM vocab WHERE split = ?", [split])
    con.execute(
        "INSERT INTO vocab VALUES " + ", ".join(f"(?, {t}, NULL, 0)" for t in range(N_SPECIAL)),
        [split] * N_SPECIAL,
    )
    con.execute(
        f"""
        INSERT INTO vocab
        SELECT ?, ({N_SPECIAL} + row_number() OVER (ORDER BY n DESC, item_id) - 1)::INTEGER, item_id, n
        FROM (SELECT e.item_id, count(*) AS n
              FROM events e JOIN split_events s USING (seq_id, position)
              WHERE s.split = ? AND s.part = 0 GROUP BY e.item_id HAVING count(*) >= ?)
        """,
        [split, split, min_count],
    )
    return con.execute("SELECT count(*) FROM vocab WHERE split = ?", [split]).fetchone()[0]


@dataclass
class Vocabulary:
    """Maps store item ids (and external ids) to tokens and back.

    item_ids[t] is the store item id of token t (-1 for special tokens); counts[t] its training count.
    """

    item_ids: np.ndarray  # int64 [V]
    counts: np.ndarray  # int64 [V]
    external_ids: list[str | None]  # [V]; None for special tokens
    split: str
    min_count: int = 1

    def __post_init__(self) -> None:
        self._token_of_item = {int(i): t for t, i in enumerate(self.item_ids) if i >= 0}
        self._token_of_external = {e: t for t, e in enumerate(self.external_ids) if e is not None}
        n_items = int(self.item_ids.max()) + 1 if len(self.item_ids) else 0
        self.lookup = np.full(max(n_items, 1), UNK, dtype=np.int32)  # store item id -> token
        known = self.item_ids >= 0
        self.lookup[self.item_ids[known]] = np.flatnonzero(known).astype(np.int32)

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - N_SPECIAL

    def encode_item_ids(self, item_ids: np.ndarray) -> np.ndarray:
        """Store item ids -> tokens (`<unk>` for items outside the vocabulary)."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        out = np.full(item_ids.shape, UNK, dtype=np.int32)
        inside = (item_ids >= 0) & (item_ids < len(self.lookup))
        out[inside] = self.lookup[item_ids[inside]]
        return out

    def encode_external(self, external_ids: list[str]) -> tuple[np.ndarray, list[str]]:
        """External ids -> tokens, plus the ids that were unknown (mapped to `<unk>`)."""
        tokens = np.empty(len(external_ids), dtype=np.int32)
        unknown = []
        for i, e in enumerate(external_ids):
            t = self._token_of_external.get(e)
            if t is None:
                unknown.append(e)
                t = UNK
            tokens[i] = t
        return tokens, unknown

    def digest(self) -> str:
        """A short digest of the token -> item mapping (keys caches of arrays compiled with it)."""
        return hashlib.sha256(np.ascontiguousarray(self.item_ids, dtype=np.int64).tobytes()).hexdigest()[:16]

    def token_of_item(self, item_id: int) -> int:
        return self._token_of_item.get(int(item_id), UNK)

    def external_id(self, token: int) -> str | None:
        return self.external_ids[int(token)]

    # --- persistence ---------------------------------------------------------------------------
    @classmethod
    def from_store(cls, con: duckdb.DuckDBPyConnection, split: str) -> Vocabulary:
        rows = con.execute(
            """SELECT v.token, coalesce(v.item_id, -1), v.count, i.external_id
               FROM vocab v LEFT JOIN items i USING (item_id) WHERE v.split = ? ORDER BY v.token""",
            [split],
        ).fetchall()
        if not rows:
            raise KeyError(split)
        return cls(
            item_ids=np.array([r[1] for r in rows], dtype=np.int64),
            counts=np.array([r[2] for r in rows], dtype=np.int64),
            external_ids=[r[3] for r in rows],
            split=split,
        )

    def save(self, path: str | Path) -> None:
        data = {
            "split": self.split,
            "special_tokens": list(SPECIAL_TOKENS),
            "item_ids": self.item_ids.tolist(),
            "counts": self.counts.tolist(),
            "external_ids": self.external_ids,
        }
        atomic_write_bytes(path, json.dumps(data).encode())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """A vocab.json that `save` wrote; a damaged one is a SegueError naming the file (and the
        line, for JSON that does not parse) instead of a JSONDecodeError or KeyError traceback."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SegueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); a damaged vocab.json (cut short?)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise SegueError(f"{path}: unreadable ({e})") from None
        keys = ("item_ids", "counts", "external_ids", "split")
        missing = [k for k in keys if not isinstance(data, dict) or k not in data]
        if missing:
            raise SegueError(f"{path}: lacks {', '.join(map(repr, missing))} (expected the vocab.json segue writes beside a model)")
        try:
            vocab = cls(
                item_ids=np.array(data["item_ids"], dtype=np.int64),
                counts=np.array(data["counts"], dtype=np.int64),
                external_ids=data["external_ids"],
                split=data["split"],
            )
        except (TypeError, ValueError) as e:
            raise SegueError(f"{path}: a field holds values of the wrong kind ({e})") from None
        if not (len(vocab.item_ids) == len(vocab.counts) == len(vocab.external_ids)):
            raise SegueError(f"{path}: item_ids, counts and external_ids differ in length (a damaged vocab.json)")
        return vocab


def check_vocab(name: str, mv: Vocabulary | None, tv: Vocabulary, split: str, use: str = "the evaluation uses", fix: str = "evaluate") -> None:
    """A model's vocabulary `mv` must be split `split`'s `tv`, or its token ids mean other items
    (`segue evaluate`'s and `segue export`'s check: `use` and `fix` word the message for the command)."""
    if mv is None:
        raise SegueError(f"model '{name}' is not fitted (it has no vocabulary)")
    if len(mv) != len(tv) or not np.array_equal(np.asarray(mv.item_ids), np.asarray(tv.item_ids)):
        # the same split name with another vocabulary: another store (or the store was rebuilt)
        where = " of another store (or of this store before a rebuild)" if mv.split == split else ""
        raise SegueError(
            f"model '{name}' was fitted on split '{mv.split}'{where} ({len(mv)} tokens), but {use} "
            f"split '{split}' ({len(tv)} tokens): its vocabulary differs, so its scores would be "
            f"misread; {fix} it on the store and split it was trained on, or refit it on '{split}'"
        )
