"""LightGBM trees evaluated as per-tree lookup tables: the ranker's request-time path.

`Booster.predict` walks every tree for every row in C++ (~3 us a row for the bench ranker's 172
trees); a request scores a few hundred candidates, so that walk was ~1 ms of it. Here the model
is dumped once (`booster.dump_model()`) and each tree's internal nodes (at most `MAX_NODES`)
become one bit of an 8-bit code per row:

    node j of tree t, row r: x[r, feature(t, j)] <= threshold(t, j)  (1: the walk goes left)

computed for every node and row at once (one gather, one comparison), packed into a byte per
tree and row, and `table[t, code]` is the leaf value the walk over those bits reaches (precomputed for all 256
codes). The scores are the leaf values summed over trees in tree order, in float64, as LightGBM
does, so they equal `Booster.predict` bit for bit (tests/test_tree_lookup.py).

LightGBM's numerical decision, reproduced exactly:
  - inputs with |x| <= kZeroThreshold (1e-35f) are read as 0.0 (its dense-row parser drops them);
  - missing_type "NaN": a NaN input goes the node's default direction; "None": a NaN input is
    read as 0.0. Both become a plain `x <= t` on a copy of the input with NaN replaced by 0.0,
    -inf (default left) or +inf (default right), one copy per replacement;
  - the float64 threshold t is compared as the largest float32 <= t (same outcome for every
    float32 input).
Anything else (categorical splits, missing_type "Zero", linear trees, several trees per
iteration, averaged output, objectives whose predict transforms the raw score, trees with more
than `MAX_NODES` splits) raises UnsupportedTrees; the ranker then keeps `Booster.predict`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segue.errors import SegueError

MAX_NODES = 8  # splits a tree may have: one byte of code, 256-entry tables (num_leaves <= 9)
K_ZERO = np.float32(1e-35)  # LightGBM's kZeroThreshold (a float literal stored in a double)
RAW_OBJECTIVES = ("lambdarank", "rank_xendcg")  # the ranker's objectives: predict returns the raw score


class UnsupportedTrees(SegueError):
    """The model uses something the lookup tables do not reproduce (the message says what)."""


class TreeLookup:
    """The trees of a LightGBM model as lookup tables; `predict` equals `Booster.predict`."""

    def __init__(self, columns: np.ndarray, thresholds: np.ndarray, tables: np.ndarray, n_features: int) -> None:
        self.columns = columns  # int64 [P, T]: copy * n_features + feature of node j of tree t
        self.thresholds = thresholds  # float32 [P, T] (P: the most splits of a tree)
        self.tables = tables  # float64 [T, 256]: the leaf value of each code
        self.n_features = n_features
        self.n_trees = len(tables)
        self._base = (np.arange(self.n_trees, dtype=np.int32) * 256)[:, None]

    @classmethod
    def from_booster(cls, booster: Any) -> TreeLookup:
        return cls.from_dump(booster.dump_model())

    @classmethod
    def from_dump(cls, dump: dict[str, Any]) -> TreeLookup:
        objective = str(dump.get("objective", ""))
        if objective not in RAW_OBJECTIVES:
            raise UnsupportedTrees(f"objective '{objective}': predict transforms the raw score")
        if dump.get("num_tree_per_iteration", 1) != 1 or dump.get("num_class", 1) != 1:
            raise UnsupportedTrees("several trees per iteration (multiclass)")
        if dump.get("average_output"):
            raise UnsupportedTrees("averaged output (random forest mode)")
        n_features = int(dump["max_feature_idx"]) + 1
        trees = dump["tree_info"]
        # Padding nodes (trees with fewer splits) test copy 0, which holds no NaN, against +inf:
        # always 1, and no walk reads them.
        columns = np.zeros((MAX_NODES, len(trees)), np.int64)
        thresholds = np.full((MAX_NODES, len(trees)), np.inf, np.float32)
        tables = np.zeros((len(trees), 256), np.float64)
        planes = 0
        for t, tree in enumerate(trees):
            nodes: list[dict[str, Any]] = []  # internal nodes in pre-order: node j is bit j
            _collect(tree["tree_structure"], nodes, t)
            for j, node in enumerate(nodes):
                columns[j, t], thresholds[j, t] = _node_test(node, n_features, t)
            index = {id(n): j for j, n in enumerate(nodes)}
            for code in range(256):
                tables[t, code] = _walk(tree["tree_structure"], index, code)
            planes = max(planes, len(nodes))
        return cls(columns[:planes].copy(), thresholds[:planes].copy(), tables, n_features)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw scores float64 [N] of rows x [N, F] (the sum of every tree's leaf value)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise SegueError(f"tree lookup: expected rows of {self.n_features} features, got shape {x.shape}")
        n, planes = len(x), len(self.columns)
        if n == 0 or self.n_trees == 0:
            return np.zeros(n, np.float64)
        width = -(-n // 8) * 8  # rows padded to whole uint64 words of one-byte codes
        xt = np.zeros((self.n_features, width), np.float32)
        xt[:, :n] = x.T
        xt[np.abs(xt) <= K_ZERO] = 0.0
        nan = np.isnan(xt)
        copies = np.empty((3, self.n_features, width), np.float32)
        for i, fill in enumerate((0.0, -np.inf, np.inf)):
            copies[i] = np.where(nan, np.float32(fill), xt)
        # Plane j holds node j of every tree: bits [P, T, width], one byte (0/1) each.
        flat = copies.reshape(3 * self.n_features, width)
        bits = flat[self.columns.ravel()] <= self.thresholds.reshape(-1, 1)
        if planes == 0:  # every tree a single leaf (no split): code 0, whose table entry is that leaf
            codes = np.zeros((self.n_trees, width), np.uint8)
        else:
            words = bits.view(np.uint8).reshape(planes, -1).view(np.uint64)  # 8 codes a word
            code = np.zeros(words.shape[1], np.uint64)
            for j in range(planes):  # a 0/1 byte shifted by j < 8 stays inside its byte
                code |= words[j] << np.uint64(j)
            codes = code.view(np.uint8).reshape(self.n_trees, width)
        leaves = self.tables.ravel()[self._base + codes]  # [T, width >= 8], C order
        # Tree by tree in float64, LightGBM's order: numpy reduces the outer axis of a C-ordered
        # array with at least 2 columns row after row (over a contiguous axis, which a single
        # column would be, it adds pairwise and can differ in the last bit).
        return np.add.reduce(leaves, axis=0)[:n]


def _collect(node: dict[str, Any], out: list[dict[str, Any]], tree: int) -> None:
    if "leaf_value" in node or "split_index" not in node:
        if "leaf_coeff" in node or "leaf_features" in node:
            raise UnsupportedTrees(f"tree {tree}: linear leaves")
        return
    out.append(node)
    if len(out) > MAX_NODES:
        raise UnsupportedTrees(f"tree {tree}: more than {MAX_NODES} splits (num_leaves > {MAX_NODES + 1})")
    _collect(node["left_child"], out, tree)
    _collect(node["right_child"], out, tree)


def _node_test(node: dict[str, Any], n_features: int, tree: int) -> tuple[int, np.float32]:
    """(column of the input copy, float32 threshold) reproducing the node's decision."""
    if node["decision_type"] != "<=":
        raise UnsupportedTrees(f"tree {tree}: categorical split on feature {node['split_feature']}")
    missing = node["missing_type"]
    if missing == "None":
        copy = 0  # NaN read as 0.0
    elif missing == "NaN":
        copy = 1 if node["default_left"] else 2  # NaN -> -inf goes left, +inf goes right
    else:
        raise UnsupportedTrees(f"tree {tree}: missing_type '{missing}' on feature {node['split_feature']}")
    thr = float(node["threshold"])
    with np.errstate(over="ignore"):  # LightGBM writes 1e300 for "always left": float32 inf, stepped down below
        t32 = np.float32(thr)
    if float(t32) > thr:  # rounded up: the largest float32 below the threshold decides the same
        t32 = np.nextafter(t32, np.float32(-np.inf))
    return copy * n_features + int(node["split_feature"]), t32


def _walk(node: dict[str, Any], index: dict[int, int], code: int) -> float:
    while "split_index" in node:
        node = node["left_child"] if (code >> index[id(node)]) & 1 else node["right_child"]
    return float(node["leaf_value"])
