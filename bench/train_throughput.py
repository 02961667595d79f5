"""Training throughput of the transformer against the machine's own float32 matmul peak.

For each catalogue size (default 50,000 and 2,000,000 items) and batch size (16, 128, 256), runs
the real jitted training step (segue.training.step) on full-length random sequences and prints
tokens/s, step time, model FLOPs per token and the achieved fraction of the peak measured in the
same run. Targets (issue 4): >= 20% of peak at batch 128 on 50k; the 2M step time within 1.25x
of the 50k one (the lazy row-sparse Adam makes the step independent of the catalogue size).

    .venv/bin/python bench/train_throughput.py                     # trecs defaults
    .venv/bin/python bench/train_throughput.py --items 50000 --batches 128 --steps 10
    .venv/bin/python bench/train_throughput.py --items 50000 --batches 128 --feedback

--feedback also times the model with feedback and context (ARGUS' two heads: rating, two
feedback columns and two context columns as inputs, the next-item head joined with the next
event's context, a feedback head on three outputs) at the same batch, interleaved with the plain
model, and prints its step time against the plain one. Measured 2026-12-07 (2 shared cores, load
16-21; `--items 50000 --batches 128 --steps 10 --feedback`, trecs' 6 layers x 128, 256 shared
negatives): plain 6172 ms a step, with the feedback + context heads 7000 ms = 1.13x in the same
rounds (compile 45.5 s against 69.2 s).

--ridge (with --feedback) adds the same heads with the rating head of
configs/ml100k-temporal-ridge.toml (item biases, a rank-32 term and the ridge fold-in of each
prefix's ratings) to the same rounds. Measured 2026-12-07 (2 shared cores, load 1.5-1.6;
`--items 50000 --batches 128 --steps 10 --feedback --ridge`): plain 590.2 ms a step, the heads
662.2 ms (1.12x), the heads with the ridge fold-in 978.9 ms (1.48x the heads, 1.66x plain): the
batched [128 x 50] solves of 33 x 33 systems and their gradients (a Cholesky solve instead of
jnp.linalg.solve measured 1.8x slower on XLA CPU).

--devices 1 2 times the same step on 1 device and on a data-parallel mesh of 2 (segue.training.mesh),
interleaved. On a CPU the devices are simulated (XLA_FLAGS=--xla_force_host_platform_device_count,
set by re-running this script with it): they share the machine's cores, so this checks that the
sharded step runs and what it costs, not a speed-up.

    .venv/bin/python bench/train_throughput.py --items 50000 --batches 128 --devices 1 2
--features likewise times the model with item side features (segue.models.item_encoder: artist,
album and two genres per item from random feature vocabularies sized like a music catalogue, id
dropout 0.2) against the id-only model in the same rounds.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from _common import numpy_peak  # bench/ is the script's folder, so on sys.path
from segue.data.vocab import N_SPECIAL
from segue.models.events import EventsConfig
from segue.models.item_encoder import ItemEncoderConfig
from segue.models.transformer import ModelConfig, count_flops_per_token
from segue.training.losses import LossConfig
from segue.training.optim import OptimConfig
from segue.training.step import StepSpec, init_state, make_train_step


def matmul_peak(n: int = 1024, reps: int = 20, clock: Callable[[], float] = time.perf_counter) -> float:
    """Best-of float32 GFLOP/s of an n x n matmul through jax (the step's own backend), timed by
    `clock` (wall time by default; bench/step_profile.py passes process CPU time)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = clock()
        f(a).block_until_ready()
        best = min(best, clock() - t)
    return 2 * n**3 / best / 1e9


class Setting:
    """One compiled step over a catalogue at a batch size, with its state and a few batches."""

    def __init__(
        self,
        model: ModelConfig,
        loss: LossConfig,
        optim: OptimConfig,
        n_items: int,
        batch: int,
        events: EventsConfig | None = None,
        devices: int = 1,
        features: bool = False,
    ) -> None:
        self.model, self.loss, self.n_items, self.batch = model, loss, n_items, batch
        self.devices = devices
        self.events = events
        self.features = features
        v = n_items + N_SPECIAL
        feats, shapes = random_item_features(np.random.default_rng(1), v) if features else (None, ())
        self.spec = StepSpec(
            model, loss, optim, vocab_size=v, total_steps=10_000, eop_target=True, events=events or EventsConfig(),
            items=FEATURE_ITEMS if features else ItemEncoderConfig(), item_shapes=shapes,
        )
        self.feats = None if feats is None else {k: jnp.asarray(a) for k, a in feats.items()}
        graphdef, self.state = init_state(self.spec, 0)
        self.mesh = None
        if devices > 1:  # data-parallel mesh: batch split over the devices, parameters replicated
            from segue.models.train_config import MeshConfig
            from segue.training import mesh as M

            self.mesh = M.make_mesh(MeshConfig(data=devices))
            self.state = M.place_state(self.mesh, self.state)
            self.step = make_train_step(self.spec, graphdef, M.state_shardings(self.mesh, self.state), M.replicated(self.mesh))
        else:
            self.step = make_train_step(self.spec, graphdef)
        rng = np.random.default_rng(0)
        t = model.context_length
        self.batches = []
        for _ in range(4):
            seq = rng.integers(N_SPECIAL, n_items + N_SPECIAL, (batch, t + 1)).astype(np.int32)
            b: tuple = (seq[:, :-1], seq[:, 1:], np.ones((batch, t), bool))
            if events is not None:
                b = (*b, random_events(rng, events, batch, t))
            self.batches.append(b)
        self.scale = jnp.float32(1.0)
        self.times: list[float] = []
        self.i = 0
        t0 = time.perf_counter()
        self.run()  # compiles
        self.compile_s = time.perf_counter() - t0
        self.run()  # one more warm step

    def run(self) -> float:
        t0 = time.perf_counter()
        b = self.batches[self.i % 4]
        if self.mesh is not None:  # host rows -> arrays split over the devices (a copy, as on one device)
            from segue.training.mesh import global_batch

            g = global_batch(self.mesh, dict(zip(("inputs", "targets", "mask"), b[:3], strict=True)))
            b = (g["inputs"], g["targets"], g["mask"], *b[3:])
        if self.feats is not None:
            self.state, m = self.step(self.state, *b[:3], self.scale, None, self.feats)
        else:
            self.state, m = self.step(self.state, *b[:3], self.scale, *b[3:])
        jax.block_until_ready(m["loss"])
        self.i += 1
        self.loss_value = float(m["loss"])
        return time.perf_counter() - t0

    def result(self) -> dict:
        st = float(np.median(self.times))
        t = self.model.context_length
        n_cand = 1 + self.loss.n_negatives + (self.loss.n_inbatch if self.loss.kind == "logq" else 0)
        if self.loss.kind == "full":
            n_cand = self.n_items
        flops = count_flops_per_token(self.model, n_cand)
        return {
            "items": self.n_items,
            "batch": self.batch,
            "step_s": st,
            "tokens_per_s": self.batch * t / st,
            "flops_per_token": flops,
            "gflops": self.batch * t * flops / st / 1e9,
            "compile_s": self.compile_s,
            "sparse": self.spec.sparse,
            "loss": self.loss_value,
        }


def random_events(rng: np.random.Generator, ev: EventsConfig, b: int, t: int) -> dict[str, np.ndarray]:
    """Event arrays of the shapes segue.models.events.batch_events makes, with random values."""
    out: dict[str, np.ndarray] = {}
    if ev.rating:
        out["rating_bucket"] = rng.integers(0, ev.rating_buckets + 1, (b, t)).astype(np.int32)
    if ev.feedback:
        f = len(ev.feedback)
        out["fb"] = rng.random((b, t, f)).astype(np.float32)
        out["fb_missing"] = (rng.random((b, t, f)) < 0.1).astype(np.float32)
    if ev.n_context:
        c = ev.n_context
        out["ctx"] = rng.integers(0, ev.context_rows, (b, t, c)).astype(np.int32)
        out["next_ctx"] = rng.integers(0, ev.context_rows, (b, t, c)).astype(np.int32)
    if ev.predict:
        k = len(ev.predict)
        out["fb_target"] = rng.random((b, t, k)).astype(np.float32)
        out["fb_mask"] = rng.random((b, t, k)) < 0.9
    if ev.rating_ridge > 0:  # the ridge fold-in's rated residuals (batch_events' fold_value / fold_rated)
        out["fold_value"] = rng.normal(0.0, 1.0, (b, t)).astype(np.float32)
        out["fold_rated"] = (rng.random((b, t)) < 0.9).astype(np.float32)
    return out


FEATURE_ITEMS = ItemEncoderConfig(features=["artist", "album", "genre"], id_dropout=0.2)


def random_item_features(rng: np.random.Generator, v: int) -> tuple[dict[str, np.ndarray], tuple]:
    """Per-token arrays as segue.data.item_features makes them: ~10 tracks an album, ~2 albums an
    artist, 2 of 20 genres per item; (arrays, encoder shapes)."""
    n_album, n_artist = max(1, v // 10), max(1, v // 20)
    album = rng.integers(2, n_album + 2, (v, 1)).astype(np.int32)
    artist = rng.integers(2, n_artist + 2, (v, 1)).astype(np.int32)
    genre = rng.integers(2, 22, (v, 2)).astype(np.int32)
    feats = {"f_artist": artist, "f_album": album, "f_genre": genre, "id_count": rng.integers(1, 50, v)}
    return feats, (("artist", n_artist + 2, 1), ("album", n_album + 2, 1), ("genre", 22, 2))


FEEDBACK_EVENTS = EventsConfig(
    rating=True,
    feedback={"skip": "flag", "listened": "fraction"},
    context=["platform", "hour"],
    predict={"rating": 1.0, "skip": 0.5, "listened": 0.5},
)
# The same with the rating head of configs/ml100k-temporal-ridge.toml: item biases, a rank-32
# bilinear term and the ridge fold-in of the prefix's ratings (prefix sums of [k+1, k+1] outer
# products and one batched solve per position).
RIDGE_EVENTS = FEEDBACK_EVENTS.model_copy(
    update={"rating_item_bias": 5.0, "rating_rank": 32, "rating_mlp": False, "rating_ridge": 15.0, "rating_min_history": 1}
)


def bench_batch(
    model: ModelConfig,
    loss: LossConfig,
    optim: OptimConfig,
    items: list[int],
    batch: int,
    steps: int,
    events: EventsConfig | None = None,
    features: bool = False,
    ridge: EventsConfig | None = None,
) -> list[dict]:
    """Time the catalogues of one batch size in interleaved rounds, so that a change in machine load
    hits all of them alike (the 2M / 50k ratio is what matters). With `events`, the model with
    feedback and context runs in the same rounds (its results follow, marked "events": True)."""
    settings = [Setting(model, loss, optim, n, batch) for n in items]
    if events is not None:
        settings += [Setting(model, loss, optim, n, batch, events) for n in items]
    if features:
        settings += [Setting(model, loss, optim, n, batch, features=True) for n in items]
    if ridge is not None:
        settings += [Setting(model, loss, optim, n, batch, ridge) for n in items]
    for _ in range(steps):
        for s in settings:
            s.times.append(s.run())
    out = [
        s.result() | {"events": s.events is not None and s.events.rating_ridge == 0, "features": s.features,
                      "ridge": s.events is not None and s.events.rating_ridge > 0}
        for s in settings
    ]  # fmt: skip
    del settings
    return out


def bench_step(model: ModelConfig, loss: LossConfig, optim: OptimConfig, n_items: int, batch: int, steps: int) -> dict:
    return bench_batch(model, loss, optim, [n_items], batch, steps)[0]


def bench_devices(model: ModelConfig, loss: LossConfig, optim: OptimConfig, n_items: int, batch: int, steps: int, devices: list[int]) -> list[dict]:
    """The same step on each device count, timed in interleaved rounds."""
    settings = [Setting(model, loss, optim, n_items, batch, devices=d) for d in devices]
    for _ in range(steps):
        for s in settings:
            s.times.append(s.run())
    return [s.result() | {"devices": s.devices} for s in settings]


def _simulate_devices(n: int) -> None:
    """Re-run this script with n simulated CPU devices when fewer exist (XLA reads the flag once)."""
    flag = f"--xla_force_host_platform_device_count={n}"
    if jax.devices()[0].platform != "cpu" or jax.device_count() >= n or flag in os.environ.get("XLA_FLAGS", ""):
        return
    import sys

    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " + flag).strip())
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, nargs="+", default=[50_000, 2_000_000])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 128, 256])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setting (median reported)")
    ap.add_argument("--loss", default="label_in_denominator", choices=["label_in_denominator", "sampled", "logq", "full"])
    ap.add_argument("--negatives", type=int, default=256)
    ap.add_argument("--sparse", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--feedback", action="store_true", help="also time the feedback/context heads against the plain model")
    ap.add_argument("--devices", type=int, nargs="+", help="time the step on these device counts (data-parallel mesh)")
    ap.add_argument("--features", action="store_true", help="also time item side features (artist, album, genre) against id-only")
    ap.add_argument("--ridge", action="store_true", help="with --feedback: also time the rating head's ridge fold-in (events.rating_ridge)")
    args = ap.parse_args()
    if args.devices:
        _simulate_devices(max(args.devices))

    model = ModelConfig(n_layers=args.layers, d_model=args.width, d_ff=2 * args.width)
    loss = LossConfig(kind=args.loss, n_negatives=args.negatives)
    optim = OptimConfig(sparse_items=args.sparse)
    load = os.getloadavg()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    peak = matmul_peak()
    print(f"float32 matmul peak (1024^3, best of 20): jax {peak:.1f} GFLOP/s, numpy {numpy_peak():.1f} GFLOP/s")
    print(f"model: {model.n_layers} layers, width {model.d_model}, FFN {model.d_ff}, context {model.context_length}; loss {loss.kind} with {loss.n_negatives} shared negatives")
    hdr = f"{'items':>10} {'batch':>6} {'step ms':>9} {'tokens/s':>10} {'MFLOP/tok':>10} {'GFLOP/s':>8} {'compile s':>9}"
    if args.devices:
        print(f"{jax.device_count()} {jax.devices()[0].platform} devices")
        for b in args.batches:
            for n in args.items:
                got = bench_devices(model, loss, optim, n, b, args.steps, args.devices)
                for r in got:
                    print(
                        f"{r['devices']} device(s): {n:,} items, batch {b}: step {1e3 * r['step_s']:.1f} ms, "
                        f"{r['tokens_per_s']:,.0f} tokens/s ({r['tokens_per_s'] / got[0]['tokens_per_s']:.2f}x of "
                        f"{got[0]['devices']} device(s)), compile {r['compile_s']:.1f} s, loss {r['loss']:.4f}",
                        flush=True,
                    )
        return
    print(hdr)
    results, with_events, with_features, with_ridge = [], [], [], []
    events = FEEDBACK_EVENTS if args.feedback else None
    ridge = RIDGE_EVENTS if args.feedback and args.ridge else None
    for b in args.batches:
        for r in bench_batch(model, loss, optim, args.items, b, args.steps, events, args.features, ridge):
            if r["ridge"]:
                with_ridge.append(r)
                continue
            if r["events"]:
                with_events.append(r)
                continue
            if r["features"]:
                with_features.append(r)
                continue
            results.append(r)
            n = r["items"]
            print(
                f"{n:>10,} {b:>6} {1e3 * r['step_s']:>9.1f} {r['tokens_per_s']:>10,.0f} {r['flops_per_token'] / 1e6:>10.2f} "
                f"{r['gflops']:>8.1f} {r['compile_s']:>9.1f}",
                flush=True,
            )
    by = {(r["items"], r["batch"]): r for r in results}
    for b in args.batches:
        if (50_000, b) in by and (2_000_000, b) in by:
            ratio = by[(2_000_000, b)]["step_s"] / by[(50_000, b)]["step_s"]
            print(f"batch {b}: step time 2M / 50k = {ratio:.2f}x (target <= 1.25x)")
    for r in with_events:
        plain = by[(r["items"], r["batch"])]
        print(
            f"feedback + context heads, {r['items']:,} items, batch {r['batch']}: step {1e3 * r['step_s']:.1f} ms against "
            f"{1e3 * plain['step_s']:.1f} ms plain = {r['step_s'] / plain['step_s']:.2f}x (same rounds; compile {r['compile_s']:.1f} s)"
        )
    fb = {(r["items"], r["batch"]): r for r in with_events}
    for r in with_ridge:
        plain, heads = by[(r["items"], r["batch"])], fb[(r["items"], r["batch"])]
        print(
            f"feedback + context heads with the ridge fold-in, {r['items']:,} items, batch {r['batch']}: step "
            f"{1e3 * r['step_s']:.1f} ms = {r['step_s'] / heads['step_s']:.2f}x the heads without it, "
            f"{r['step_s'] / plain['step_s']:.2f}x plain (same rounds; compile {r['compile_s']:.1f} s)"
        )
    for r in with_features:
        plain = by[(r["items"], r["batch"])]
        print(
            f"item side features (artist, album, genre; id dropout 0.2), {r['items']:,} items, batch {r['batch']}: step "
            f"{1e3 * r['step_s']:.1f} ms against {1e3 * plain['step_s']:.1f} ms id-only = {r['step_s'] / plain['step_s']:.2f}x "
            f"(same rounds; compile {r['compile_s']:.1f} s)"
        )
    # The peak again, after the steps. Every fraction uses the higher reading (the conservative
    # one), so each measurement has one "% of peak" (the table's column had used the first).
    peak2 = matmul_peak()
    print(f"float32 matmul peak again at the end: jax {peak2:.1f} GFLOP/s")
    peak = max(peak, peak2)
    for r in results:
        target = " (target >= 20%)" if (r["items"], r["batch"]) == (50_000, 128) else ""
        print(
            f"batch {r['batch']} on {r['items']:,} items: {r['gflops']:.1f} GFLOP/s = {100 * r['gflops'] / peak:.1f}% "
            f"of the measured peak {peak:.1f} GFLOP/s (the higher of start and end){target}"
        )
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    from _common import guarded  # bench/ is the script's folder, so on sys.path

    raise SystemExit(guarded(main))
