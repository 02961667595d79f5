"""A simulated month of operations: weekly batches, a real server, `segue retrain` every week.

The synthetic generator writes weekly batches (segue.data.sources.synthetic.weekly_batches: a
gradual popularity shift and 2% new items a week). Then:
  week 0   `segue retrain` builds, trains and promotes the first version (nothing to compare with);
           `segue serve --model models:/segue@production` serves it (a real server process, with
           a feature log and an admin key)
  week w   (1..4) every user's week-w history is sent to /v1/recommend, so the feature log fills;
           the week's file lands in the incoming folder; `segue retrain` validates the file and
           the log, trains a warm-started candidate, evaluates it against production on week w,
           gates, promotes and reloads the server. Printed per week: drift distances,
           candidate vs production (NDCG@10 with 95% CIs), the decision, the promotion, and the
           model /healthz shows after it
  drills   week 5 with popularity reversed: the retrain must abort without --force (exit 2);
           the true week 5 with a deliberately broken candidate (training item ids shuffled,
           `--drill shuffle_items`): the gate must refuse it and production stays
A client thread sends requests the whole time (reloads included); every failed request is counted.
Each cycle's wall time is reported with its training share.

    .venv/bin/python bench/ops_month.py                     # ~15-30 min on 2 cores
    .venv/bin/python bench/ops_month.py --users 600 --items 800 --steps 100   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "ops-month-key"


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
        with httpx.Client(timeout=60) as c:
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


def fmt_ci(v: list[float] | None) -> str:
    return "-" if not v else f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("ops-month"))
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--genres", type=int, default=8)
    ap.add_argument("--length", type=float, default=30.0)
    ap.add_argument("--shift", type=float, default=0.05)
    ap.add_argument("--steps", type=int, default=300, help="training steps per candidate")
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()

    from segue.data.sources.synthetic import SyntheticConfig, write_weekly_batches

    wd = args.workdir.resolve()
    shutil.rmtree(wd, ignore_errors=True)
    (wd / "incoming").mkdir(parents=True)
    syn = SyntheticConfig(n_playlists=args.users, n_items=args.items, n_genres=args.genres, mean_length=args.length)
    weeks = write_weekly_batches(syn, wd / "batches", 6, shift=args.shift)
    reversed_week = write_weekly_batches(syn, wd / "batches-reversed", 6, shift=args.shift, reverse_week=5)[5]
    train = (ROOT / "configs" / "retrain_transformer.toml").read_text()
    train = train.replace("max_steps = 300", f"max_steps = {args.steps}")
    (wd / "train.toml").write_text(train)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
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
    )
    # Week 0 has no server to reload yet: the same config without [server].
    bootstrap = wd / "retrain-week0.toml"
    bootstrap.write_text(cfg.read_text().split("[server]")[0])
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), SEGUE_ADMIN_KEY=KEY, SEGUE_REGISTRY=str(wd / "registry"))
    rows: list[dict] = []

    sizes = [len(w.read_text().splitlines()) - 1 for w in weeks]
    print(f"corpus: {args.users} users, {args.items} items, 6 weekly batches of {sizes} events", flush=True)
    shutil.copy(weeks[0], wd / "incoming")
    code, st = retrain(bootstrap, env, wd / "week-0.json")
    if code != 0 or not st.get("promoted"):
        raise SystemExit(f"week 0 failed:\n{st.get('log_tail')}")
    rows.append(st | {"week": 0})
    print(f"week 0: version {st['version']} promoted ({st['wall_seconds']:.0f} s, training {st['train_seconds']:.0f} s)", flush=True)

    server_log = open(wd / "server.log", "w")  # noqa: SIM115 (the server's whole life)
    server = subprocess.Popen(
        [sys.executable, "-c", "from segue.cli import app; app()", "serve", "--model", "models:/segue@production",
         "--port", str(port), "--feature-log", str(wd / "feature-log")],
        env=env, stdout=server_log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 300
        while True:
            try:
                health = httpx.get(url + "/healthz", timeout=5).json()
                break
            except httpx.HTTPError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start; see server.log") from None
                time.sleep(1)
        print(f"serving {health['model']['run_id']} at {url}", flush=True)
        load = Load(url, args.clients)
        for w in range(1, 5):
            load.send(histories(weeks[w]))
            load.drain()
            shutil.copy(weeks[w], wd / "incoming")
            code, st = retrain(cfg, env, wd / f"week-{w}.json")
            st["week"] = w
            st["healthz"] = httpx.get(url + "/healthz", timeout=10).json()["model"]
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
                f" promoted={st['promoted']}; /healthz: {st['healthz']['run_id']}\n"
                f"        cycle {st['wall_seconds']:.0f} s, training {st['train_seconds']:.0f} s "
                f"({st['train_seconds'] / st['wall_seconds']:.0%}); warm start {st.get('warm', {})}",
                flush=True,
            )
        prod_before = httpx.get(url + "/healthz", timeout=10).json()["model"]["run_id"]
        # drift injection: week 5 with popularity reversed
        shutil.copy(reversed_week, wd / "incoming" / "week-05.csv")
        code, st = retrain(cfg, env, wd / "drift.json")
        drift_ok = code == 2 and "aborted" in st["log_tail"]
        print(f"drift injection: exit {code}; {st['log_tail'].strip().splitlines()[-1][:400]}", flush=True)
        rows.append(st | {"week": "5-reversed"})
        # broken candidate: the true week 5, item ids shuffled before training
        shutil.copy(weeks[5], wd / "incoming" / "week-05.csv")
        code, st = retrain(cfg, env, wd / "broken.json", "--drill", "shuffle_items")
        f = st.get("figures", {})
        broken_ok = code == 0 and not st.get("promoted")
        print(
            f"broken candidate: candidate {fmt_ci(f.get('candidate', {}).get('ndcg@10'))} production "
            f"{fmt_ci(f.get('production', {}).get('ndcg@10'))}: gate {st.get('decision', {}).get('verdict')}",
            flush=True,
        )
        rows.append(st | {"week": "5-broken"})
        prod_after = httpx.get(url + "/healthz", timeout=10).json()["model"]["run_id"]
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
        print(f"cycle wall time (weeks 1-4, mean): {wall:.0f} s, of which training {tr:.0f} s ({tr / wall:.0%})")
    (wd / "month.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"written: {wd / 'month.json'}")


if __name__ == "__main__":
    main()
