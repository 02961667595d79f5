"""A simulated month of operations: weekly batches, a real server, `segue retrain` every week.

The synthetic generator writes weekly batches (segue.data.sources.synthetic.weekly_batches: a
gradual popularity shift and 2% new items a week). Then:
  week 0   `segue retrain` builds, trains and promotes the first version (nothing to compare with);
           `segue serve --model models:/segue@production --workers 2 --admin-port P` serves it (a
           real server process, two workers, a feature log and an admin key); the retrain config's
           [server] admin_url is the supervisor's admin port, so each promotion rolls both workers
  week w   (1..4) every user's week-w history is sent to /v1/recommend, so the feature log fills;
           the week's file lands in the incoming folder; `segue retrain` validates the file and
           the log, trains a warm-started candidate, evaluates it against production on week w,
           gates, promotes and reloads the server. Printed per week: drift distances,
           candidate vs production (NDCG@10 with 95% CIs), the decision, the promotion, the model
           /healthz shows after it (20 calls on new connections, so both workers answer) and each
           worker's model (/admin/workers)
  drills   week 5 with popularity reversed: the retrain must abort without --force (exit 2);
           the true week 5 with a deliberately broken candidate (training item ids shuffled,
           `--drill shuffle_items`): the gate must refuse it and production stays
Client threads send requests the whole time (reloads included), a new connection per request (as
behind a layer-4 balancer, so both workers serve); every failed request is counted. Each cycle's
wall time is reported with its training share and the load average (`os.getloadavg`).

    .venv/bin/python bench/ops_month.py                     # ~15-30 min on 2 cores
    .venv/bin/python bench/ops_month.py --users 1500 --items 1500 --port 18120   # the run below
    .venv/bin/python bench/ops_month.py --users 1500 --items 1500 --steps 100   # a quicker look

Below ~1,500 users a week's popularity differs from the last by chance past the weekly threshold
(0.175 at 400 users and items): the retrains of weeks 1-4 abort on drift, and the drills are then
reported as not judged (neither the reversed week nor the gate decided anything). The working
folder (--workdir, default ops-month in the system's temporary folder) is replaced only when it is
new, empty or an earlier ops_month folder (it holds .ops-month); anything else is refused.

Measured (2026-12-07, `--users 1500 --items 1500`, 2 workers, 4 clients, transformer 300 steps,
2 shared cores at load average 9-17 from other jobs): 42,437 requests, 0 failed, through 4
promotions (each a rolling restart of both workers) and both drills. Drift: Chebyshev distance
(week file against the week before; feature log against the newest week), the two largest.
| week | drift, largest features | candidate NDCG@10 [95% CI] | production | gate | version | /healthz (20 conns) | cycle s (training) |
|---|---|---|---|---|---|---|---|
| 0 | - | 0.0300 [0.0238, 0.0366] | - | promote | 1 | segue-v1 | 54 (33) |
| 1 | file: new_items 0.100, popularity 0.083; log: popularity 0.003 | 0.0730 [0.0652, 0.0811] | 0.0264 [0.0224, 0.0308] | promote | 2 | segue-v2 | 97 (43) |
| 2 | file: new_items 0.080, popularity 0.063; log: new_items 0.065 | 0.1293 [0.1201, 0.1396] | 0.0572 [0.0508, 0.0650] | promote | 3 | segue-v3 | 133 (62) |
| 3 | file: new_items 0.069, popularity 0.060; log: new_items 0.058 | 0.1471 [0.1347, 0.1590] | 0.1243 [0.1124, 0.1349] | promote | 4 | segue-v4 | 151 (77) |
| 4 | file: new_items 0.065, popularity 0.055; log: new_items 0.052 | 0.1456 [0.1325, 0.1588] | 0.1332 [0.1215, 0.1453] | promote | 5 | segue-v5 | 168 (80) |
| 5 reversed | file FAIL: popularity 0.114 > 0.09; log FAIL: popularity 0.102 | - | - | aborted (exit 2) | - | segue-v5 | 13 |
| 5 broken | file: history_length 0.074, popularity 0.059 | 0.0198 [0.0162, 0.0237] | 0.1184 [0.1094, 0.1284] | keep | 6 (not promoted) | segue-v5 | 81 (57) |
Cycle (weeks 1-4, mean): 137 s, of which training 66 s (48%) and the promotion (both workers
rolled onto the new model, each loaded and warmed under load) 38-57 s, at load average 14.5.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from _common import machine_line  # bench/ is the script's folder, so on sys.path
from segue.errors import SegueError
from segue.io import check_output

ROOT = Path(__file__).resolve().parents[1]
KEY = "ops-month-key"
MARKER = ".ops-month"  # marks a working folder this script made (and may replace)


def segue(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from segue.cli import app; app()", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """Clients sending the queued histories (and, when idle, repeats) to /v1/recommend."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url, self.queue, self.lock = url, [], threading.Lock()
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.pending = threading.Semaphore(0)
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]
        self.sent: list[list[str]] = []  # the current week's histories
        for t in self.threads:
            t.start()

    def send(self, histories: list[list[str]]) -> None:
        with self.lock:
            self.sent = []
            self.queue.extend(histories)

    def drain(self) -> None:
        while True:
            with self.lock:
                if not self.queue:
                    return
            time.sleep(0.2)

    def _loop(self) -> None:
        with httpx.Client(timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not self.stop.is_set():
                with self.lock:
                    history = self.queue.pop() if self.queue else None
                    if history is not None:
                        self.sent.append(history)
                if history is None:  # keep traffic up between weeks (reloads happen then): the
                    # week's histories again, so the feature log keeps the served distribution
                    if not self.sent:
                        time.sleep(0.05)
                        continue
                    history = self.sent[int(time.monotonic() * 1e6) % len(self.sent)]
                    time.sleep(0.05)
                try:
                    r = c.post(self.url + "/v1/recommend", json={"history": history, "n": 10})
                    ok = r.status_code == 200
                    if not ok:
                        self.errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as e:
                    ok = False
                    self.errors.append(repr(e))
                with self.lock:
                    if ok:
                        self.ok += 1
                    else:
                        self.failed += 1

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def histories(csv: Path) -> list[list[str]]:
    import pyarrow.csv as pacsv

    t = pacsv.read_csv(csv).to_pydict()
    out: dict[str, list[str]] = {}
    for u, i in zip(t["user"], t["item"], strict=True):
        out.setdefault(u, []).append(i)
    return list(out.values())


def retrain(cfg: Path, env: dict[str, str], out: Path, *extra: str) -> tuple[int, dict]:
    t = time.perf_counter()
    proc = segue("retrain", str(cfg), "--json", str(out), *extra, env=env, check=False)
    wall = time.perf_counter() - t
    state = json.loads(out.read_text()) if out.exists() else {}
    state["wall_seconds"] = round(wall, 1)
    state["exit"] = proc.returncode
    state["log_tail"] = (proc.stdout + proc.stderr)[-1500:]
    return proc.returncode, state


def load_avg() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def served_models(url: str, admin: str | None) -> tuple[list[str], list[str]]:
    """(run ids /healthz answered on 20 new connections, each worker's run id from /admin/workers)."""
    with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        seen = sorted({c.get(url + "/healthz").json()["model"]["run_id"] for _ in range(20)})
        workers: list[str] = []
        if admin:
            ws = c.get(admin + "/admin/workers", headers={"X-API-Key": KEY}).json()["workers"]
            workers = [f"{w['pid']}:{(w.get('model') or {}).get('run_id')}" for w in ws]
    return seen, workers


def fmt_ci(v: list[float] | None) -> str:
    return "-" if not v else f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"


def table(rows: list[dict]) -> str:
    """The month as a markdown table (README / docstring)."""
    m = "ndcg@10"
    out = ["| week | drift (file; feature log), largest features | candidate NDCG@10 [95% CI] | production | gate | "
           "version, promoted | /healthz after (20 conns) | cycle s (training) |", "|" + "---|" * 8]
    for r in rows:
        drift = []
        for label, v in r.get("validation", {}).items():
            top = sorted(((d, k) for k, d in v["distances"].items() if d is not None), reverse=True)[:2]
            drift.append(f"{label[:7]}{'' if v['passed'] else ' FAIL'}: " + ", ".join(f"{k} {d:.3f}" for d, k in top))
        f = r.get("figures", {})
        out.append(
            f"| {r['week']} | {'; '.join(drift) or '-'} | {fmt_ci(f.get('candidate', {}).get(m))} | "
            f"{fmt_ci(f.get('production', {}).get(m))} | {r.get('decision', {}).get('verdict', 'aborted' if r.get('exit') else '-')} | "
            f"{r.get('version', '-')}, {r.get('promoted', False)} | {','.join(r.get('healthz_seen', [])) or '-'} | "
            f"{r.get('wall_seconds', 0):.0f} ({r.get('train_seconds', 0):.0f}) |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ops-month",
        help="working folder: new, empty or an earlier ops_month one (replaced); default %(default)s",
    )
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--genres", type=int, default=8)
    ap.add_argument("--length", type=float, default=30.0)
    ap.add_argument("--shift", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=300, help="training steps per candidate")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2, help="server worker processes (2+: promotions via the admin port)")
    ap.add_argument("--port", type=int, default=0, help="server port (admin port: the next one); 0: free ones")
    args = ap.parse_args()

    from segue.data.sources.synthetic import SyntheticConfig, write_weekly_batches

    wd = args.workdir.resolve()
    try:  # someone's folder is refused, never deleted (a mistyped --workdir . or ~)
        check_output(wd, "ops_month folder", lambda p: (p / MARKER).is_file() or (p / "retrain-week0.toml").is_file())
    except SegueError as e:
        raise SystemExit(f"--workdir: {e}") from None
    print(machine_line(), flush=True)  # the reference the figures below are read against
    shutil.rmtree(wd, ignore_errors=True)
    (wd / "incoming").mkdir(parents=True)
    (wd / MARKER).write_text("written by bench/ops_month.py: the next run replaces this folder\n")
    syn = SyntheticConfig(n_playlists=args.users, n_items=args.items, n_genres=args.genres, mean_length=args.length)
    weeks = write_weekly_batches(syn, wd / "batches", 6, shift=args.shift)
    reversed_week = write_weekly_batches(syn, wd / "batches-reversed", 6, shift=args.shift, reverse_week=5)[5]
    train = (ROOT / "configs" / "retrain_transformer.toml").read_text()
    train = train.replace("max_steps = 300", f"max_steps = {args.steps}")
    (wd / "train.toml").write_text(train)
    port = args.port or free_port()
    admin_port = (port + 1 if args.port else free_port()) if args.workers > 1 else None
    url = f"http://127.0.0.1:{port}"
    admin = f"http://127.0.0.1:{admin_port}" if admin_port else None
    cfg = wd / "retrain.toml"
    cfg.write_text(
        f'''name = "segue"
registry = "registry"
work_dir = "work"
incoming = "incoming"
source_options = {{ user = "user", item = "item", timestamp = "ts" }}
feature_log = "feature-log"
thresholds = "{ROOT / 'configs' / 'validation-weekly.toml'}"
train_config = "train.toml"
[gate]
metric = "ndcg@10"
tolerance = 0.005
floor = 0.02
[server]
url = "{url}"
'''
        + (f'admin_url = "{admin}"\n' if admin else "")
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SEGUE_ADMIN_KEY=KEY, SEGUE_REGISTRY=str(wd / "registry"))
    rows: list[dict] = []

    sizes = [len(w.read_text().splitlines()) - 1 for w in weeks]
    print(f"corpus: {args.users} users, {args.items} items, 6 weekly batches of {sizes} events", flush=True)
    shutil.copy(weeks[0], wd / "incoming")
    # Week 0 has no server yet: the promotion sets production and warns that none answered.
    code, st = retrain(cfg, env, wd / "week-0.json")
    if code != 0 or not st.get("promoted"):
        raise SystemExit(f"week 0 failed:\n{st.get('log_tail')}")
    rows.append(st | {"week": 0, "load": load_avg()})
    print(f"week 0: version {st['version']} promoted ({st['wall_seconds']:.0f} s, training {st['train_seconds']:.0f} s; {load_avg()})", flush=True)

    server_log = open(wd / "server.log", "w")  # noqa: SIM115 (the server's whole life)
    serve_args = ["--workers", str(args.workers), "--admin-port", str(admin_port)] if admin_port else []
    server = subprocess.Popen(
        [sys.executable, "-c", "from segue.cli import app; app()", "serve", "--model", "models:/segue@production",
         "--port", str(port), "--feature-log", str(wd / "feature-log"), "--no-access-log", *serve_args],
        env=env, stdout=server_log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 600
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    seen, workers = served_models(url, admin)
                    if not admin or len(workers) == args.workers and all(not w.endswith(":None") for w in workers):
                        break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start; see server.log")
            time.sleep(1)
        print(f"serving {seen} at {url} with {args.workers} worker(s) {workers}", flush=True)
        load = Load(url, args.clients)
        for w in range(1, 5):
            load.send(histories(weeks[w]))
            load.drain()
            shutil.copy(weeks[w], wd / "incoming")
            code, st = retrain(cfg, env, wd / f"week-{w}.json")
            st["week"], st["load"] = w, load_avg()
            st["healthz"] = httpx.get(url + "/healthz", timeout=10).json()["model"]
            st["healthz_seen"], st["workers_after"] = served_models(url, admin)
            rows.append(st)
            if code != 0:
                print(f"week {w}: retrain exit {code}:\n{st['log_tail']}", flush=True)
                continue
            m = "ndcg@10"
            f = st.get("figures", {})
            print(
                f"week {w}: drift {json.dumps({k: v['distances'] for k, v in st.get('validation', {}).items()})}\n"
                f"        candidate {fmt_ci(f.get('candidate', {}).get(m))}  production {fmt_ci(f.get('production', {}).get(m))}"
                f"  diff {fmt_ci(f.get('_comparison', {}).get(m))}\n"
                f"        gate {st['decision']['verdict']} ({'; '.join(st['decision']['reasons'])}); version {st['version']}"
                f" promoted={st['promoted']}; /healthz (20 new connections): {st['healthz_seen']}; workers {st['workers_after']}\n"
                f"        cycle {st['wall_seconds']:.0f} s, training {st['train_seconds']:.0f} s "
                f"({st['train_seconds'] / st['wall_seconds']:.0%}; {st['load']}); warm start {st.get('warm', {})}; "
                f"requests so far {load.ok} ok, {load.failed} failed",
                flush=True,
            )
        prod_before = httpx.get(url + "/healthz", timeout=10).json()["model"]["run_id"]
        # drift injection: week 5 with popularity reversed
        shutil.copy(reversed_week, wd / "incoming" / "week-05.csv")
        code, st = retrain(cfg, env, wd / "drift.json")
        # A drill is judged only when weeks 1-4 were promoted: otherwise their own drift (or
        # anything else) stopped the retrain, and the reversed week decided nothing.
        weeks_ok = all(r.get("promoted") for r in rows if isinstance(r["week"], int) and r["week"] > 0)
        not_judged = "not judged (weeks 1-4 were not all promoted)"
        drift_ok: bool | str = (code == 2 and "aborted" in st["log_tail"]) if weeks_ok else not_judged
        print(f"drift injection: exit {code}; {st['log_tail'].strip().splitlines()[-1][:400]}", flush=True)
        rows.append(st | {"week": "5-reversed"})
        # broken candidate: the true week 5, item ids shuffled before training
        shutil.copy(weeks[5], wd / "incoming" / "week-05.csv")
        code, st = retrain(cfg, env, wd / "broken.json", "--drill", "shuffle_items")
        f = st.get("figures", {})
        broken_ok: bool | str = code == 0 and not st.get("promoted")
        if not st.get("decision"):  # stopped before the gate: it refused nothing
            broken_ok = f"not reached (retrain exit {code} before the gate)"
        elif not weeks_ok:
            broken_ok = not_judged
        print(
            f"broken candidate: candidate {fmt_ci(f.get('candidate', {}).get('ndcg@10'))} production "
            f"{fmt_ci(f.get('production', {}).get('ndcg@10'))}: gate {st.get('decision', {}).get('verdict')} "
            f"({'; '.join(st.get('decision', {}).get('reasons', []))}); exit {code}; promoted {st.get('promoted')}",
            flush=True,
        )
        rows.append(st | {"week": "5-broken"})
        prod_after = httpx.get(url + "/healthz", timeout=10).json()["model"]["run_id"]
        seen_after, workers_after = served_models(url, admin)
        print(f"after the drills: /healthz {seen_after}; workers {workers_after}", flush=True)
        time.sleep(2)  # requests still in flight are counted
        load.close()
        print(
            f"requests: {load.ok} ok, {load.failed} failed{(' e.g. ' + load.errors[0]) if load.errors else ''}; "
            f"production during the drills {prod_before} -> {prod_after}; drift aborted: {drift_ok}; "
            f"broken candidate refused: {broken_ok}",
            flush=True,
        )
    finally:
        server.terminate()
        server.wait(30)
        server_log.close()
    cycles = [r for r in rows if isinstance(r["week"], int) and r["week"] > 0 and r.get("train_seconds")]
    if cycles:
        wall = sum(r["wall_seconds"] for r in cycles) / len(cycles)
        tr = sum(r["train_seconds"] for r in cycles) / len(cycles)
        print(f"cycle wall time (weeks 1-4, mean): {wall:.0f} s, of which training {tr:.0f} s ({tr / wall:.0%}); {load_avg()}")
    print(table(rows))
    (wd / "month.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"written: {wd / 'month.json'}")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
