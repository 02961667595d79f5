"""`segue serve --admin-port` naming a port that cannot be the supervisor's: one line, exit 2, no
traceback (walk s12 serve F3)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from segue.errors import SegueError
from servinghelp import dot_folder, free_port, kill_tree, named_store, start_serve


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fserve-admin")
    return dot_folder(named_store(root / "store.duckdb"), root / "dot")


def test_admin_port_equal_to_port_is_one_line_error(model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SEGUE_ADMIN_KEY", "k")
    port = free_port()
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    proc = start_serve(["--model", str(model), "--port", str(port), "--workers", "2", "--admin-port", str(port),
                        "--no-feature-log"], out, err)
    try:
        assert proc.wait(120) == 2, err.read_text()[-2000:]
    finally:
        kill_tree(proc)
    text = out.read_text() + err.read_text()
    assert "Traceback" not in text and "--admin-port must differ from --port" in text, text[-2000:]
    assert "serving" not in out.read_text()  # refused before the banner


def test_run_with_a_taken_admin_port_raises_a_segue_error_naming_it(model, monkeypatch) -> None:
    from segue.serving.workers import ServeSettings, run

    monkeypatch.setenv("SEGUE_ADMIN_KEY", "k")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        with pytest.raises(SegueError, match=rf"port {taken} on 127.0.0.1 is not free.*--admin-port"):
            run(ServeSettings(model=model, feature_log=None), port=free_port(), workers=2, admin_port=taken)
