"""`segue tune`: run the tuning flow (segue.flows.tune) round after round as local Metaflow runs,
then copy what the last run made into the session folder.

Layout under `--root` (the folder the user names):
    .metaflow/                     Metaflow's local datastore and metadata (every user's runs)
    <space>-<user>/state.json      the session: the space, each round's run id and whether it ended
    <space>-<user>/trials.json     every trial's record (params, config, metrics, cost, error)
    <space>-<user>/best-model/     the best config refitted on the training part (a model folder)
    <space>-<user>/report/         the test evaluation of tuned vs defaults (segue evaluate's report)
    <space>-<user>/card.html       the Metaflow card of the last run
    <space>-<user>/tune.html       the same content with a sortable trials table

Two users never collide: each has their own session folder, Metaflow namespace (user:NAME) and
run ids. A killed session continues with `--resume`: the unfinished round is resumed by Metaflow's
`resume` (finished trials are cloned, not rerun) and the rounds after it run as usual.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from segue.errors import ConfigError, SegueError
from segue.io import atomic_write_text
from segue.tuning.space import SearchSpace, check_space
from segue.tuning.study import n_rounds

FLOW_NAME = "TuneFlow"


def flow_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("segue.flows.tune")  # not imported: Metaflow reads its settings on import
    assert spec is not None and spec.origin is not None
    return Path(spec.origin)


def usable_user(name: str) -> str:
    """`name` as Metaflow will run it: it refuses 'root', which becomes 'segue' (whatever named it)."""
    return "segue" if name == "root" else name


def user_name() -> str:
    """METAFLOW_USER, else the login name; Metaflow refuses 'root', which becomes 'segue'."""
    try:
        login: str | None = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (some containers)
        login = None
    for name in (os.environ.get("METAFLOW_USER"), os.environ.get("SUDO_USER"), os.environ.get("USERNAME"),
                 os.environ.get("USER"), login):
        if name and name != "root":
            return name
    return "segue"


def session_dir(root: Path, space_path: Path, user: str) -> Path:
    return root / f"{space_path.stem}-{user}"


def flow_env(root: Path, user: str) -> dict[str, str]:
    """The environment of a local run: the datastore under `root`, the user named."""
    env = dict(os.environ)
    env |= {
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(root.resolve()),
        "METAFLOW_DEFAULT_DATASTORE": "local",
        "METAFLOW_DEFAULT_METADATA": "local",
        "USERNAME": user,
        "METAFLOW_USER": user,
        "SUDO_USER": user,  # Metaflow reads it before USERNAME
    }
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the segue package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def _read_state(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(state, indent=1))


def tune(
    space_path: Path,
    root: Path,
    *,
    user: str | None = None,
    max_workers: int = 2,
    resume: bool = False,
    n_boot: int = 1000,
    echo: Any = print,
    log: Path | None = None,
) -> Path:
    """Run (or resume) a tuning session; returns its folder (see the module docstring)."""
    if max_workers < 1:  # Metaflow waits forever for a free worker
        raise ConfigError(f"max_workers is {max_workers} (expected at least 1)")
    space = SearchSpace.load(space_path)
    check_space(space)
    store = space.store_path
    if not store.exists():
        raise SegueError(f"{space_path}: field 'store': {store} does not exist (build it with `segue data build`)")
    _check_split(space_path, space)
    _check_trainer_metrics(space_path, space)
    # the flow runs as usable_user (name_metaflow_user): the session and namespace must match it
    if user and usable_user(user) != user:
        echo(f"Metaflow refuses the user '{user}': the session runs as '{usable_user(user)}'")
    user = usable_user(user) if user else user_name()
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    session = session_dir(root, space_path, user)
    session.mkdir(exist_ok=True)
    state_path = session / "state.json"
    state = _read_state(state_path)
    text = space_path.read_text(encoding="utf-8")
    if state and not resume:
        raise SegueError(
            f"{session}: holds an earlier tuning session of this space by {user}; pass --resume to continue it, "
            "or name another --root"
        )
    if state and state.get("space") != text:
        raise SegueError(f"{session}: the session was started with another version of {space_path}; name another --root")
    if not state:
        state = {"space": text, "space_path": str(space_path.resolve()), "user": user, "started": time.time(), "rounds": []}
        _write_state(state_path, state)
    env = flow_env(root, user)
    rounds = n_rounds(space)
    deadline = state["started"] + 60 * space.budget.minutes if space.budget.minutes else 0.0
    log = log or session / "flow.log"
    for r in range(rounds):
        done = [x for x in state["rounds"] if x["round"] == r and x["status"] == "done"]
        if done:
            if done[0].get("final"):
                break
            continue
        prev = next((x for x in state["rounds"] if x["round"] == r - 1 and x["status"] == "done"), None)
        final = r == rounds - 1 or _out_of_time(state, deadline)
        unfinished = next((x for x in state["rounds"] if x["round"] == r and x["status"] != "done"), None)
        id_file = session / f"round-{r}.run-id"
        id_file.unlink(missing_ok=True)
        common = ["--max-workers", str(max_workers), "--run-id-file", str(id_file)]
        base = [sys.executable, str(flow_file()), "--no-pylint", "--quiet"]
        if unfinished is not None:
            echo(f"round {r + 1}/{rounds}: resuming run {unfinished['run_id']} (finished trials are not rerun)")
            cmd = [*base, "resume", "--origin-run-id", unfinished["run_id"], *common]
            final = unfinished["final"]
        else:
            echo(f"round {r + 1}/{rounds}: {_round_text(space, r)}")
            cmd = [
                *base, "run", "--space", str(space_path.resolve()), "--store", str(store.resolve()), "--round", str(r),
                "--previous", prev["run_id"] if prev else "", "--final", str(final), "--deadline", str(deadline),
                "--n_boot", str(n_boot), *common,
            ]
        entry = {"round": r, "status": "running", "final": final, "run_id": None, "started": time.time()}
        state["rounds"] = [x for x in state["rounds"] if x["round"] != r] + [entry]
        with open(log, "a") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
            entry["run_id"] = _wait_run_id(proc, id_file, unfinished)
            _write_state(state_path, state)
            rc = proc.wait()
        if id_file.exists():
            entry["run_id"] = id_file.read_text().strip()
        if rc != 0:
            _write_state(state_path, state)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SegueError(
                f"round {r + 1}: the flow failed (exit {rc}). If it was killed or ran out of memory, `segue tune ... "
                f"--resume` continues it (finished trials are kept); an error in the log below recurs on resume until "
                f"the space is fixed (then name another --root). Log {log}:\n{tail}"
            )
        entry |= {"status": "done", "seconds": round(time.time() - entry["started"], 1)}
        _write_state(state_path, state)
        if final:
            break
    last = max((x for x in state["rounds"] if x["status"] == "done"), key=lambda x: x["round"])
    collect(root, session, last["run_id"], user)
    return session


def _round_text(space: SearchSpace, r: int) -> str:
    if space.strategy == "grid":
        from segue.tuning.space import grid_size

        size = grid_size(space)
        if size > space.budget.trials:
            return (f"grid search: the grid has {size} combinations and budget.trials = {space.budget.trials} runs "
                    f"a seeded sample of {space.budget.trials} (raise budget.trials to run every one)")
        return f"grid search, {size} trials (every combination)"
    if space.strategy != "tpe":
        return f"{space.strategy} search, {space.budget.trials} trials"
    return f"TPE, {space.budget.parallel} trials asked at once"


def _out_of_time(state: dict[str, Any], deadline: float) -> bool:
    """Whether another round after this one would likely start past the deadline."""
    if not deadline:
        return False
    took = [x["seconds"] for x in state["rounds"] if "seconds" in x]
    per_round = sum(took) / len(took) if took else 0.0
    return time.time() + 2 * per_round > deadline


def _wait_run_id(proc: subprocess.Popen, id_file: Path, unfinished: dict | None) -> str | None:
    """The new run's id as soon as Metaflow writes it (so a kill after that can be resumed)."""
    while proc.poll() is None:
        if id_file.exists() and id_file.read_text().strip():
            return id_file.read_text().strip()
        time.sleep(0.2)
    return id_file.read_text().strip() if id_file.exists() else (unfinished or {}).get("run_id")


def collect(root: Path, session: Path, run_id: str, user: str) -> None:
    """Copy a finished run's results out of the datastore into the session folder."""
    import shutil

    from segue.tuning.snapshot import unpack

    os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = str(root.resolve())
    os.environ["METAFLOW_DEFAULT_DATASTORE"] = "local"
    os.environ["METAFLOW_DEFAULT_METADATA"] = "local"
    from metaflow import Run, metadata, namespace

    metadata(f"local@{root.resolve()}")
    namespace(f"user:{user}")
    run = Run(f"{FLOW_NAME}/{run_id}")
    task = run["best"].task
    data = task.data
    atomic_write_text(session / "trials.json", json.dumps(data.records, indent=1, default=str))
    atomic_write_text(session / "tune.html", data.page)
    card = card_html(root, run_id, task)
    if card is not None:
        atomic_write_text(session / "card.html", card)
    summary = {"run_id": run_id, "best": data.best_record, "test": data.test, "best_toml": data.best_toml}
    atomic_write_text(session / "summary.json", json.dumps(summary, indent=1, default=str))
    for name, blob in (("best-model", data.best_model_tar), ("report", data.report_tar)):
        if blob is not None:
            shutil.rmtree(session / name, ignore_errors=True)
            unpack(blob, session / name)


def card_html(root: Path, run_id: str, task: Any) -> str | None:
    """The card of the run's `best` task. Metaflow 2.19 writes local cards under the datastore
    root itself while its reader (`card get`, `get_cards`) looks under <root>/mf.cards, so the
    file is also looked up where it was written."""
    from metaflow.cards import get_cards

    try:
        cards = get_cards(task, id="tune")
        if len(cards):
            return cards[0].get()
    except Exception:  # CardNotPresentException: see the docstring
        pass
    folder = root / ".metaflow" / FLOW_NAME / "runs" / run_id / "steps" / "best" / "tasks" / str(task.id) / "cards"
    found = sorted(folder.glob("blank-tune-*.html"))
    return found[-1].read_text(encoding="utf-8") if found else None


def _check_split(space_path: Path, space: SearchSpace) -> None:
    """The split exists and suits the protocol, checked before the flow starts (in the flow it
    failed one step in, with a traceback in the flow's log)."""
    from segue.data.store import Store
    from segue.evaluation.protocols import PROTOCOLS, check_split_kind

    with Store.open(space.store_path, read_only=True) as store:
        try:
            check_split_kind(store, space.split, space.protocol)
        except SegueError as e:
            kind = store.split_info(space.split)["kind"] if space.split in store.split_names() else None
            fits = [name for name, spec in PROTOCOLS.items() if kind in spec.kinds]
            hint = f"; or set protocol = \"{fits[0]}\" for this split" if fits else ""
            raise SegueError(f"{space_path}: fields 'split' / 'protocol': {e}{hint}") from None


def _check_trainer_metrics(space_path: Path, space: SearchSpace) -> None:
    """A neural family's trainer.metric / tiebreak (in [base] or searched) that its validation never
    reports, refused before the flow starts: each trial found it only after training to its first
    validation, in every round. Builds the defaults' task on the split, only when one is set."""
    from segue.tuning.space import config_dict, family_config
    from segue.tuning.trial import check_trainer_metrics, is_iterative

    fields = ("metric", "tiebreak")
    given = config_dict(space, {}).get("trainer", {})
    searched = {f: space.params[f"trainer.{f}"] for f in fields if f"trainer.{f}" in space.params}
    if not is_iterative(space.family) or not (searched or any(f in given for f in fields)):
        return
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.training.task import task_factory
    from segue.tuning.trial import ValidationOnly

    config = family_config(space, {}, source="[base]")
    with Store.open(space.store_path, read_only=True) as store:
        task = task_factory(space.family)(config, ValidationOnly.of(SplitData.load(store, space.split)))
    check_trainer_metrics(task, [(f, given[f]) for f in fields if f in given], f"{space_path}: [base]")
    for f, p in searched.items():
        check_trainer_metrics(task, [(f, v) for v in p.choices or []], f'{space_path}: params."trainer.{f}"')
