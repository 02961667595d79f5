"""Walk s11 (odd input to importers, configs and stores): refused by name, or read right."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segue.cli import app
from segue.config import read_toml
from segue.data.sources import open_source
from segue.data.store import Store, build_store
from segue.errors import ConfigError, InputError

runner = CliRunner()
# root reads and writes any file; without these capabilities it meets permissions as a user does
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _events(store: Path, order: str = "seq_id, position") -> list[tuple]:
    with Store.open(store) as s:
        return s.con.execute(
            f"SELECT s.external_id, i.external_id, e.ts FROM events e JOIN sequences s USING (seq_id) "
            f"JOIN items i USING (item_id) ORDER BY {order}"
        ).fetchall()


def _segue_as_user(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a process that permissions apply to (the tests run as root)."""
    code = "import sys; from segue.cli import app; app(sys.argv[1:], prog_name='segue')"
    return subprocess.run(
        [*NO_DAC, sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _as_user_works(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    try:
        return subprocess.run([*NO_DAC, "cat", str(probe)], capture_output=True).returncode != 0
    except OSError:
        return False
    finally:
        probe.chmod(0o644)


# --- fault 1: a UTF-8 byte-order mark -------------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path) -> None:
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbfuser,item,timestamp\nu1,a,1\nu1,b,2\nu2,a,1\n")
    src = open_source("csv", csv)
    assert src.resolve()["user"] == "user"
    build_store(src, tmp_path / "a.duckdb")
    assert [e[0] for e in _events(tmp_path / "a.duckdb")] == ["u1", "u1", "u2"]
    mapped = open_source("csv", csv, user="user")  # named explicitly: the name matches too
    assert mapped.resolve()["user"] == "user"


def test_a_byte_order_mark_is_not_part_of_an_item_table_or_a_sequence_id(tmp_path: Path) -> None:
    (tmp_path / "ev.csv").write_text("user,item\nu1,a\nu1,b\n")
    (tmp_path / "items.csv").write_bytes(b"\xef\xbb\xbfitem,name\na,Apple\nb,Banana\n")
    src = open_source("csv", tmp_path / "ev.csv", items=str(tmp_path / "items.csv"))
    build_store(src, tmp_path / "i.duckdb")
    assert src.items_mapping == {"items_id": "item", "items_name": "name"}
    seq = tmp_path / "bom_seq.txt"
    seq.write_bytes(b"\xef\xbb\xbfu1 a b c\nu2 a b d\n")
    build_store(open_source("seqtext", seq), tmp_path / "s.duckdb")
    assert sorted({e[0] for e in _events(tmp_path / "s.duckdb")}) == ["u1", "u2"]


# --- faults 2 and 3: numeric timestamps -----------------------------------------------------------


def test_a_timestamp_beyond_the_timestamp_range_is_refused_by_line(tmp_path: Path) -> None:
    csv = tmp_path / "bigts.csv"
    csv.write_text("user,item,timestamp\nu1,a,1e30\nu1,b,2\n")
    with pytest.raises(InputError) as e:
        build_store(open_source("csv", csv), tmp_path / "b.duckdb")
    assert e.value.line == 2 and e.value.field == "timestamp" and "1e30" in str(e.value)
    assert not (tmp_path / "b.duckdb").exists()
    r = runner.invoke(app, ["data", "build", "csv", str(csv), "-o", str(tmp_path / "c.duckdb")])
    assert r.exit_code == 2 and "bigts.csv:2, field 'timestamp'" in r.output and "Traceback" not in r.output


def test_whole_number_timestamps_keep_every_digit(tmp_path: Path) -> None:
    csv = tmp_path / "us.csv"
    # -1500000 us is -1.5 s: -2 (floor, as for floats), not -1 (integer division truncates)
    csv.write_text("user,item,timestamp\nu1,a,1700000000999999\nu1,b,-1500000\nu1,c,\nu1,d,+2000000\n")
    build_store(open_source("csv", csv, timestamp_unit="us"), tmp_path / "u.duckdb")
    assert {e[1]: e[2] for e in _events(tmp_path / "u.duckdb")} == {"a": 1700000000, "b": -2, "c": None, "d": 2}


def test_a_whole_number_timestamp_is_exact(tmp_path: Path) -> None:
    csv = tmp_path / "ms.csv"
    csv.write_text("user,item,timestamp\nu1,a,9100000000000999\nu1,b,1700000000001\n")
    build_store(open_source("csv", csv, timestamp_unit="ms"), tmp_path / "m.duckdb")
    # 9100000000000999 ms through float64 is 9100000000001000 ms: one second late
    assert {e[1]: e[2] for e in _events(tmp_path / "m.duckdb")} == {"a": 9100000000000, "b": 1700000000}


def test_timestamp_unit_applies_to_the_numbers_of_a_column_that_also_holds_dates(tmp_path: Path) -> None:
    csv = tmp_path / "mixed.csv"
    csv.write_text("user,item,timestamp\nu1,a,1700000000000\nu1,b,2023-11-14T22:13:21Z\nu1,c,1700000002000\n")
    build_store(open_source("csv", csv, timestamp_unit="ms"), tmp_path / "m.duckdb")
    assert _events(tmp_path / "m.duckdb") == [("u1", "a", 1700000000), ("u1", "b", 1700000001), ("u1", "c", 1700000002)]
    far = tmp_path / "far.csv"
    far.write_text("user,item,timestamp\nu1,a,2023-11-14T22:13:21Z\nu1,b,1e30\n")
    with pytest.raises(InputError) as e:
        build_store(open_source("csv", far), tmp_path / "f.duckdb")
    assert e.value.line == 3 and e.value.field == "timestamp"


# --- fault 5: seqtext names the line of a byte that is not UTF-8 -----------------------------------


def test_seqtext_not_utf8_names_the_line_and_the_encoding_option(tmp_path: Path) -> None:
    lines = [f"u{i} a b c\n".encode() for i in range(5000)]
    lines[3000] = b"u3000 caf\xe9 b\n"
    path = tmp_path / "lat.txt"
    path.write_bytes(b"".join(lines))
    with pytest.raises(InputError) as e:
        build_store(open_source("seqtext", path), tmp_path / "l.duckdb")
    assert e.value.line == 3001, str(e.value)
    assert "encoding=latin-1" in str(e.value)
    build_store(open_source("seqtext", path, encoding="latin-1"), tmp_path / "l.duckdb")


# --- fault 6: a gzip'd file -----------------------------------------------------------------------


@pytest.mark.parametrize("kind,name,text", [("csv", "t.csv.gz", b"user,item\nu1,a\n"), ("seqtext", "s.txt.gz", b"u1 a b c\n")])
def test_a_gzip_compressed_file_is_named_as_such(tmp_path: Path, kind: str, name: str, text: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(text))
    with pytest.raises(InputError) as e:
        build_store(open_source(kind, path), tmp_path / "t.duckdb")
    assert "gzip-compressed" in str(e.value) and "\\x1f" not in str(e.value)


# --- fault 7: configs that are not UTF-8, or folders ----------------------------------------------


def test_a_config_not_in_utf8_or_a_folder_is_a_config_error(tmp_path: Path) -> None:
    latin = tmp_path / "l1.toml"
    latin.write_bytes(b'# comment\nname = "t\xe9"\n')
    with pytest.raises(ConfigError, match=r"l1\.toml:2: not UTF-8"):
        read_toml(latin)
    folder = tmp_path / "adir.toml"
    folder.mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        read_toml(folder)
    for args in (["experiment", str(latin)], ["retrain", str(folder)], ["pipeline", "--config", str(latin)]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and "Traceback" not in r.output, (args, r.output)
        assert "not UTF-8" in r.output or "is a folder" in r.output


def test_a_model_header_not_in_utf8_is_a_segue_error(tmp_path: Path) -> None:
    from segue.errors import SegueError
    from segue.models.base import read_model_header

    (tmp_path / "model.toml").write_bytes(b'family = "pop\xe9"\n')
    with pytest.raises(SegueError, match=r"model\.toml:1: not UTF-8"):
        read_model_header(tmp_path)


# --- fault 8: an unreadable option file -----------------------------------------------------------


def test_an_unreadable_item_table_is_named(tmp_path: Path) -> None:
    if not _as_user_works(tmp_path):
        pytest.skip("cannot drop file-permission capabilities here")
    (tmp_path / "ev.csv").write_text("user,item\nu1,a\nu1,b\n")
    items = tmp_path / "items.csv"
    items.write_text("item,name\na,A\n")
    items.chmod(0)
    r = _segue_as_user("data", "build", "csv", "ev.csv", "-o", "e.duckdb", "--option", "items=items.csv", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "items.csv: cannot read the file (permission denied)" in r.stderr + r.stdout


# --- fault 10: Parquet columns of list or binary type ---------------------------------------------


def test_parquet_list_and_binary_columns_are_refused_by_field_and_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user": ["u1", "u1", "u2"], "item": [["a"], ["b"], ["a"]]}), tmp_path / "list.parquet")
    with pytest.raises(InputError) as e:
        build_store(open_source("parquet", tmp_path / "list.parquet"), tmp_path / "l.duckdb")
    assert e.value.field == "item" and "list" in str(e.value)
    user = pa.array([b"u1", b"u1", b"\xff"], pa.binary())
    pq.write_table(pa.table({"user": user, "item": ["a", "b", "c"]}), tmp_path / "bin.parquet")
    with pytest.raises(InputError) as e:
        build_store(open_source("parquet", tmp_path / "bin.parquet"), tmp_path / "b.duckdb")
    assert e.value.field == "user" and e.value.record == "row 3" and "UTF-8" in str(e.value)
    # bytes that are UTF-8 are ids like any text
    pq.write_table(pa.table({"user": pa.array([b"u1", b"u2"], pa.binary()), "item": ["a", "b"]}), tmp_path / "ok.parquet")
    build_store(open_source("parquet", tmp_path / "ok.parquet"), tmp_path / "ok.duckdb")
    assert sorted(e[0] for e in _events(tmp_path / "ok.duckdb")) == ["u1", "u2"]


# --- fault 13: a store in a read-only folder ------------------------------------------------------


def test_a_store_in_a_read_only_folder_is_evaluated_without_the_arrays_cache(tmp_path: Path) -> None:
    if not _as_user_works(tmp_path):
        pytest.skip("cannot drop file-permission capabilities here")
    from datahelp import make_store

    folder = tmp_path / "rostore"
    folder.mkdir()
    make_store(folder / "s.duckdb", [[1, 2, 3, 4], [2, 3, 4, 5], [1, 3, 5, 2]], [{"kind": "leave_last_out", "min_length": 1}])
    folder.chmod(0o555)
    try:
        args = ["evaluate", "popularity", "--store", "rostore/s.duckdb", "-p", "leave_last_out", "-o", "rep"]
        r = _segue_as_user(*args, cwd=tmp_path)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert "cannot write the arrays cache rostore/s.duckdb.arrays" in r.stderr
        assert (tmp_path / "rep" / "report.html").exists()
        assert sorted(p.name for p in folder.iterdir()) == ["s.duckdb"]
    finally:
        folder.chmod(0o755)


# --- fault 9: a store written into a read-only folder ---------------------------------------------


def test_build_into_a_read_only_folder_names_the_target_not_a_temporary(tmp_path: Path) -> None:
    if not _as_user_works(tmp_path):
        pytest.skip("cannot drop file-permission capabilities here")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "ev.csv").write_text("user,item\nu1,a\nu1,b\n")
    ro.chmod(0o555)
    try:
        r = _segue_as_user("data", "build", "csv", "ro/ev.csv", "-o", "ro/out.duckdb", cwd=tmp_path)
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "ro/out.duckdb: cannot write here (the folder ro is not writable" in r.stderr
    assert ".staging" not in r.stderr and sorted(p.name for p in ro.iterdir()) == ["ev.csv"]


# --- fault 15: temporaries of killed writes -------------------------------------------------------


def test_a_later_write_removes_the_temporaries_of_killed_writers_on_this_host_only(tmp_path: Path) -> None:
    from segue.io import _HOST, atomic_write_text

    target = tmp_path / "b.duckdb"
    # a writer killed inside atomic_path (as SIGKILL leaves it: no cleanup ran)
    code = (
        "import os, sys; from segue.io import atomic_path; cm = atomic_path(sys.argv[1]); t = cm.__enter__(); "
        "t.write_text('half'); t.with_name(t.name + '.staging').mkdir(); "
        "(t.with_name(t.name + '.staging') / 'chunk.parquet').write_text('x'); os._exit(9)"
    )
    killed = subprocess.run([sys.executable, "-c", code, str(target)], timeout=60)
    assert killed.returncode == 9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and all(n.startswith(".b.duckdb.tmp-") for n in left), left
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        keep = [
            tmp_path / f".b.duckdb.tmp-{live.pid}@{_HOST}",  # a live writer's
            tmp_path / f".b.duckdb.tmp-{live.pid}@{_HOST}.staging",
            tmp_path / ".b.duckdb.tmp-1@another-host",  # another host's: its PID says nothing here
            tmp_path / f".other.duckdb.tmp-999999@{_HOST}",  # another target's
        ]
        for p in keep:
            p.write_text("busy")
        atomic_write_text(target, "new")
        assert target.read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, *(p.name for p in keep)])
    finally:
        live.kill()
        live.wait()


# --- fault 4: epoch milliseconds read as seconds --------------------------------------------------


def test_build_warns_when_event_times_look_like_milliseconds_read_as_seconds(tmp_path: Path) -> None:
    csv = tmp_path / "ms.csv"
    csv.write_text("user,item,timestamp\nu1,a,1700000000000\nu1,b,1700000001000\nu1,c,1700000002000\n")
    r = runner.invoke(app, ["data", "build", "csv", str(csv), "-o", str(tmp_path / "a.duckdb")])
    assert r.exit_code == 0, r.output
    assert "year 55,840" in r.output and "timestamp_unit=ms" in r.output
    r = runner.invoke(app, ["data", "build", "csv", str(csv), "-o", str(tmp_path / "b.duckdb"), "--option", "timestamp_unit=ms"])
    assert r.exit_code == 0 and "unix seconds (year" not in r.output, r.output


# --- fault 11: a huge rating ----------------------------------------------------------------------


def test_a_rating_beyond_any_scale_is_refused_by_row_and_stats_survive_one(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from datahelp import make_store
    from segue.data.stats import store_stats

    pq.write_table(pa.table({"user": ["u1", "u1", "u2"], "item": ["a", "b", "a"], "rating": [1.0, 1e300, 3.0]}), tmp_path / "big.parquet")
    with pytest.raises(InputError) as e:
        build_store(open_source("parquet", tmp_path / "big.parquet"), tmp_path / "b.duckdb")
    assert e.value.field == "rating" and e.value.record == "row 2"
    csv = tmp_path / "pos.csv"
    csv.write_text("user,item,position\nu1,a,1\nu1,b,3000000000\n")  # beyond int32: was an ArrowInvalid traceback
    with pytest.raises(InputError) as e:
        build_store(open_source("csv", csv, position="position"), tmp_path / "p.duckdb")
    assert e.value.field == "position" and e.value.line == 3
    # a store that holds one anyway (written before this check, or by another source): stats work
    store = make_store(tmp_path / "h.duckdb", [[1, 2, 3], [2, 3]], rating=[[1.0, 1e300, 3.0], [4.0, 5.0]])
    with Store.open(store) as s:
        ratings = store_stats(s)["ratings"]
    assert ratings["users_with_two_or_more"] == 2 and ratings["low_variance_share"] == 0.5
    assert ratings["user_sd_median"] == pytest.approx((0.5 + 1e300 * 2**0.5 / 3) / 2, rel=1e-9)
    r = runner.invoke(app, ["data", "stats", str(store)])
    assert r.exit_code == 0, r.output


# --- fault 12: a run name is one folder name ------------------------------------------------------


@pytest.mark.parametrize("name", ["", " ", ".", "..", "../../escape", "a/b", "a\\b"])
def test_a_run_name_that_is_not_one_folder_name_is_refused(tmp_path: Path, name: str) -> None:
    from datahelp import tiny_train_config
    from segue.training.trainer import parse_train_config

    data = tiny_train_config(tmp_path / "s.duckdb", 1) | {"name": name}
    with pytest.raises(ConfigError, match=r"t\.toml: field 'name': .*one folder name"):
        parse_train_config(data, source="t.toml")
    for family in ("autoencoder", "transformer"):  # also where the name is the family's by default
        assert parse_train_config(tiny_train_config(tmp_path / "s.duckdb", 1) | {"name": "sasrec-ml.v2"}).name == "sasrec-ml.v2"
        assert parse_train_config({"family": family, "data": {"store": "s.duckdb"}}).name == family


# --- fault 14: Ctrl-C inside a DuckDB query -------------------------------------------------------

_CTRL_C_IN_SQL = """
import os, signal, sys, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest-xdist's workers (our parent) ignore SIGINT
import numpy as np, pyarrow as pa
from segue.data.sources.base import Chunk, ListSource
from segue.data.store import build_store

rng = np.random.default_rng(0)
n = 400_000
events = pa.table({"seq_key": rng.integers(0, n // 20, n).astype(str), "item_key": rng.integers(0, 5000, n).astype(str)})

main = threading.main_thread().ident


def press_inside_a_query() -> None:
    # once, when the main thread has been inside one DuckDB statement (store._sql) for 10 ms
    while True:
        frame = sys._current_frames().get(main)
        if frame is None:
            return
        if frame.f_code.co_name == "_sql":
            time.sleep(0.01)
            if sys._current_frames().get(main) is frame:
                os.kill(os.getpid(), signal.SIGINT)
                return
        time.sleep(0.001)


def progress(stage, done, total):
    if stage == "resolve":
        threading.Thread(target=press_inside_a_query, daemon=True).start()

try:
    build_store(ListSource([Chunk(events=events)]), sys.argv[1], progress=progress)
except KeyboardInterrupt:
    sys.exit(130)
print("finished before the interrupt")
"""


def test_ctrl_c_inside_a_duckdb_query_is_a_keyboard_interrupt(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", _CTRL_C_IN_SQL, str(tmp_path / "b.duckdb")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stdout + r.stderr[-3000:]
    assert "Query interrupted" not in r.stderr and "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing half-written left


# --- faults 17 and 27: changes of one store at once, and Ctrl-C during one -------------------------


def _splits(store: Path) -> list[str]:
    with Store.open(store) as s:
        return sorted(r[0] for r in s.con.execute("SELECT split FROM splits").fetchall())


def test_a_second_change_of_a_store_waits_for_the_first_and_keeps_both_splits(tmp_path: Path) -> None:
    import time

    from datahelp import make_store
    from segue.data.splits import apply_split
    from segue.data.store import modify_store

    store = make_store(tmp_path / "c.duckdb", [[1, 2, 3, 4], [2, 3, 4, 5], [1, 3, 5, 2]], [{"kind": "leave_last_out", "min_length": 1}])
    code = "import sys; from segue.data.splits import add_split; add_split(sys.argv[1], {'kind': 'random_holdout', 'name': 'B'})"
    with modify_store(store) as con:
        apply_split(con, {"kind": "random_holdout", "name": "A"}, seed=0)
        second = subprocess.Popen([sys.executable, "-c", code, str(store)], stderr=subprocess.PIPE, text=True)
        try:
            waiting = second.stderr.readline()  # the note, or "" when it ended without waiting
            assert "waiting for another change" in waiting, (waiting, second.wait(60), second.stderr.read())
            time.sleep(0.2)
            assert second.poll() is None
        except BaseException:
            second.kill()
            raise
    assert second.wait(120) == 0, second.stderr.read()
    assert _splits(store) == ["A", "B", "loo"]


_CTRL_C_IN_CHANGE = """
import os, signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # pytest-xdist's workers (our parent) ignore SIGINT
from segue.data.store import modify_store

threading.Timer(0.5, os.kill, args=(os.getpid(), signal.SIGINT)).start()
try:
    with modify_store(sys.argv[1]) as con:
        con.execute("CREATE TABLE scratch AS SELECT 1 AS x")
        con.execute("SELECT count(*) FROM range(20000000000) t WHERE t.range % 7 = 3").fetchall()
except KeyboardInterrupt:
    sys.exit(130)
print("the change went through")
"""


def test_ctrl_c_during_a_store_change_stops_it_and_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    from datahelp import make_store

    store = make_store(tmp_path / "c.duckdb", [[1, 2, 3], [2, 3, 4]], [{"kind": "leave_last_out", "min_length": 1}])
    before = store.read_bytes()
    r = subprocess.run([sys.executable, "-c", _CTRL_C_IN_CHANGE, str(store)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stdout + r.stderr[-3000:]
    assert store.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name) == []


# --- faults 21, 22, 23 and 28: the shape of delimited files ---------------------------------------


def _ids(store: Path, table: str) -> list[str]:
    with Store.open(store) as s:
        return sorted(r[0] for r in s.con.execute(f"SELECT external_id FROM {table}").fetchall())


@pytest.mark.parametrize("d", [";", "|", "\t"])
def test_quotes_are_read_whatever_the_delimiter(tmp_path: Path, d: str) -> None:
    csv = tmp_path / "q.csv"
    csv.write_text(f'"user"{d}"item"{d}"rating"\n"u1"{d}"a{d}x"{d}"4"\n"u1"{d}"b ""b"""{d}"3.5"\n"u2"{d}a{d}5\n')
    build_store(open_source("csv", csv), tmp_path / "q.duckdb")
    assert _ids(tmp_path / "q.duckdb", "items") == ["a", f"a{d}x", 'b "b"']
    assert _ids(tmp_path / "q.duckdb", "sequences") == ["u1", "u2"]


def test_runs_of_spaces_separate_fields_in_a_space_delimited_file(tmp_path: Path) -> None:
    path = tmp_path / "sp.txt"
    path.write_text("user item time\nu1 a 1\nu1  b   2\n\n  u2 a 3  \n")
    build_store(open_source("csv", path), tmp_path / "sp.duckdb")
    assert _events(tmp_path / "sp.duckdb") == [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 3)]
    bad = tmp_path / "bad.txt"
    bad.write_text("user item time\nu1 a 1\nu1 b 2 9\n")
    with pytest.raises(InputError) as e:
        build_store(open_source("csv", bad), tmp_path / "bad.duckdb")
    assert e.value.line == 3 and "4 fields" in str(e.value)


def test_an_unsupported_delimiter_is_named_as_such(tmp_path: Path) -> None:
    (tmp_path / "semi.csv").write_text("u1;a;1\nu1;b;2\n")
    with pytest.raises(InputError) as e:
        open_source("csv", tmp_path / "semi.csv", delimiter="ab")
    assert e.value.field == "delimiter" and "'ab'" in str(e.value) and "user column" not in str(e.value)


def test_excel_shapes_unnamed_columns_blank_lines_and_unmapped_targets(tmp_path: Path) -> None:
    trail = tmp_path / "trail.csv"
    trail.write_text("user,item,,\nu1,a,,\nu1,b,,\n")
    src = open_source("csv", trail)
    assert "not imported: column3, column4" in src.notes()
    blank = tmp_path / "blank.csv"
    blank.write_text("user,item\nu1,a\n   \nu2,a\n")
    build_store(open_source("csv", blank), tmp_path / "b.duckdb")
    assert _ids(tmp_path / "b.duckdb", "sequences") == ["u1", "u2"]
    ok = tmp_path / "ok.csv"
    ok.write_text("user,item,timestamp\nu1,a,1\n")
    with pytest.raises(InputError) as e:
        open_source("csv", ok, user="").resolve()
    assert e.value.field == "user" and "cannot be left unmapped" in str(e.value)
    with pytest.raises(InputError, match="column 'item' is mapped to timestamp"):
        open_source("csv", ok, timestamp="item").resolve()


# --- fault 24: a negative seed --------------------------------------------------------------------


def test_a_negative_seed_is_a_usage_error_not_a_numpy_traceback(tmp_path: Path) -> None:
    for args in (["--option", "seed=-1"], ["--seed", "-1"]):
        r = runner.invoke(app, ["data", "build", "synthetic", "-o", str(tmp_path / "s.duckdb"), "--option", "n_playlists=20", *args])
        assert r.exit_code == 2 and "seed" in r.output and "Traceback" not in r.output, r.output
        assert r.exception is None or isinstance(r.exception, SystemExit)
        assert not (tmp_path / "s.duckdb").exists()


def test_evaluate_into_a_read_only_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    if not _as_user_works(tmp_path):
        pytest.skip("cannot drop file-permission capabilities here")
    from datahelp import make_store

    make_store(tmp_path / "s.duckdb", [[1, 2, 3, 4], [2, 3, 4, 5], [1, 3, 5, 2]], [{"kind": "leave_last_out", "min_length": 1}])
    ro = tmp_path / "roev"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = _segue_as_user("evaluate", "popularity", "--store", "s.duckdb", "-p", "leave_last_out", "-o", "roev/rep", cwd=tmp_path)
    finally:
        ro.chmod(0o755)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "roev/rep: cannot write here (the folder roev is not writable" in r.stderr
    assert list(ro.iterdir()) == [] and not (tmp_path / "s.duckdb.arrays").exists()  # refused before compiling anything


# --- fault 25: an item table that names none of the events' items ---------------------------------


def test_build_warns_when_the_item_table_names_none_of_the_items(tmp_path: Path) -> None:
    (tmp_path / "ev.csv").write_text("user,item\nu1,a\nu1,b\nu2,a\n")
    (tmp_path / "it.csv").write_text("item,name\nz,Z\n")
    (tmp_path / "it2.csv").write_text("item,name\na,A\n")
    r = runner.invoke(app, ["data", "build", "csv", str(tmp_path / "ev.csv"), "-o", str(tmp_path / "a.duckdb"), "--option", f"items={tmp_path / 'it.csv'}"])
    assert r.exit_code == 0, r.output
    assert "names none of the 2 items" in " ".join(r.output.split())
    r = runner.invoke(app, ["data", "build", "csv", str(tmp_path / "ev.csv"), "-o", str(tmp_path / "b.duckdb"), "--option", f"items={tmp_path / 'it2.csv'}"])
    assert r.exit_code == 0 and "names none" not in r.output, r.output


# --- fault 20: MPD tracks without a URI or with a repeated pos ------------------------------------


def _mpd_slice(path: Path, playlists: list[tuple[int, list[tuple[int, str]]]]) -> Path:
    import json

    def track(pos: int, uri: str) -> dict:
        return {"pos": pos, "track_uri": uri, "track_name": "n", "artist_uri": "a", "artist_name": "a",
                "album_uri": "b", "album_name": "b", "duration_ms": 1}

    doc = {"playlists": [{"pid": pid, "name": "p", "modified_at": 1500000000, "tracks": [track(*t) for t in tracks]} for pid, tracks in playlists]}
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(
    "tracks,field,words",
    [([(0, "")], "track_uri", "empty track_uri"), ([(0, "t1"), (0, "t2"), (1, "t3")], "pos", "pos 0 again"), ([(0, "t1"), (-1, "t2")], "pos", "pos -1")],
)
def test_mpd_tracks_without_uri_or_with_a_bad_pos_are_named(tmp_path: Path, tracks: list, field: str, words: str) -> None:
    path = _mpd_slice(tmp_path / "s.json", [(7, [(0, "t1"), (1, "t2")]), (9, tracks)])
    with pytest.raises(InputError) as e:
        build_store(open_source("mpd", path), tmp_path / "s.duckdb")
    assert e.value.field == field and words in str(e.value) and "pid 9" in (e.value.record or ""), str(e.value)
    good = _mpd_slice(tmp_path / "g.json", [(7, [(0, "t1"), (1, "t2")]), (9, [(1, "t2"), (0, "t1")])])
    build_store(open_source("mpd", good), tmp_path / "g.duckdb")
