"""`segue retrain`: gather new data, validate it, build a store, train a candidate, evaluate it
against production on the newest window, gate, register, promote, reload the server.

Steps (STEPS; the Metaflow flow in segue.flows.retrain runs the same methods, one per step):
  gather    the production version's data files and the incoming files it lacks (by name), and
            the serving feature log's records newer than production's `data_until`
  validate  each new file against the file before it (the first against the last file production
            was trained on, or its store's training part), the feature log against the newest
            file: schema and drift checks of segue.ops.validation; a failure aborts unless
            --force (reports in the attempt folder)
  build     a new store from all the files (and the log, with train_on_feature_log) with a
            temporal split whose test window is the newest `test_days` (cut at a midnight)
  train     the candidate: the base train config on that split, warm-started from production
            (segue.retrain.train) unless warm_start = false or --from-scratch
  evaluate  candidate and production on the same test window, in one evaluation run (CIs)
  gate      promote iff candidate >= production - tolerance and >= floor (retrain_eval.gate)
  register  a new registry version (the candidate alias) carrying the figures and the decision
  promote   when the gate said so: the production alias moves to the new version, then a running
            server ([server] url, or admin_url for several workers: see ServerConfig) reloads it
            through /admin/reload; a refused reload puts the alias back (switch_production)
  reload    /healthz confirms what the server now serves (recorded on the version)

Crash safety: nothing outside the attempt folder (work_dir/attempts/<time>) changes before
`register`, which creates the version in one call; `promote` is one alias update. A crash at any
step before `promote` leaves production as it was. SEGUE_RETRAIN_CRASH_AT=<step> kills the
process (SIGKILL) as that step starts: the tests use it to check exactly this.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from segue.config import Config, read_toml
from segue.errors import ConfigError, SegueError
from segue.io import file_digest
from segue.retrain.evaluate import GateConfig

STEPS = ("gather", "validate", "build", "train", "evaluate", "gate", "register", "promote", "reload")
CRASH_ENV = "SEGUE_RETRAIN_CRASH_AT"
DAY = 86400


class ServerConfig(Config):
    """The running server a promotion reloads.

    One worker (`segue serve`): `url` only; the promotion posts /admin/reload there.
    Several workers (`segue serve --workers N --admin-port P`): also `admin_url =
    "http://HOST:P"`, the supervisor's admin port, which takes the same /admin/reload and rolls
    every worker onto the new model (each replacement ready before its predecessor drains) before
    it answers; `url` still gives /healthz, and the reload step lists every worker's model
    (/admin/workers). Either way with the same key ($SEGUE_ADMIN_KEY, or the variable
    admin_key_env names); the alias moves just before the reload and back if the server refuses
    it, so a reload interrupted on our side (which the server finishes) leaves both on the new
    version. The first promotion with no server up sets production and warns."""

    url: str | None = None  # a running server to reload after a promotion
    admin_url: str | None = None  # where /admin/reload is, when not on `url` (several workers)
    admin_key_env: str = "SEGUE_ADMIN_KEY"  # the environment variable holding its admin key
    # The reload loads and warms the model before answering; on a busy 2-core machine it took
    # over 120 s (the month benchmark under load): a timeout leaves production as it was.
    reload_timeout: float = Field(600.0, gt=0)


class RetrainConfig(Config):
    """configs/retrain.toml; relative paths are relative to the config file's folder."""

    name: str = "segue"  # the registered model
    registry: str = "registry"  # folder (embedded SQLite) or MLflow tracking URI
    work_dir: str = "retrain"  # attempts: stores, runs, validation reports
    incoming: str = "incoming"  # folder of source files, one per batch
    pattern: str = "*.csv"
    source_kind: str = "csv"
    source_options: dict[str, Any] = {}
    feature_log: str | None = None  # the server's feature log folder
    train_on_feature_log: bool = False  # off: the log is validated only (files hold the same events)
    thresholds: str | None = None  # validation thresholds TOML (default: built in)
    # The candidate: a `segue train` config (its [data] section is replaced), or a baseline family
    # fitted directly (popularity, itemknn, ease, ...; options in family_config).
    train_config: str | None = None
    family: str | None = None
    family_config: dict[str, Any] = {}
    warm_start: bool = True
    test_days: float = Field(7.0, gt=0)
    valid_days: float = Field(1.0, gt=0)
    gate: GateConfig = GateConfig()
    server: ServerConfig = ServerConfig()
    base_dir: str | None = None  # set when loaded: the config file's folder
    _source: str = PrivateAttr("the retrain config")  # the file, named in errors about its fields

    @classmethod
    def load(cls, path: str | Path) -> RetrainConfig:
        path = Path(path)
        cfg = cls.from_dict(read_toml(path), source=str(path))
        cfg = cfg.model_copy(update={"base_dir": str(path.parent.resolve())})
        cfg._source = str(path)
        return cfg

    @model_validator(mode="after")
    def _one_candidate(self) -> RetrainConfig:
        if (self.train_config is None) == (self.family is None):
            raise ValueError("give exactly one of train_config (a neural model) and family (a baseline)")
        return self

    def resolve(self, p: str) -> Path:
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir or ".") / q

    def registry_location(self) -> str:
        return self.registry if "://" in self.registry else str(self.resolve(self.registry))

    def check(self) -> None:
        """ConfigError naming this file and the field, for what the steps would otherwise find only
        after gathering, building and training (or never: thresholds without a production version)."""
        import difflib

        from segue.data.sources import (
            canonical_kind,
            check_values,
            required_options,
            source_options,
        )
        from segue.models.base import families
        from segue.retrain.evaluate import measured_metrics

        src = self._source
        try:
            canonical_kind(self.source_kind)
        except ConfigError as e:
            raise ConfigError(f"{src}: field 'source_kind': {e}") from None
        valid = source_options(self.source_kind)
        for key in self.source_options:
            if key not in valid:
                close = difflib.get_close_matches(key, list(valid), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"{src}: field 'source_options': unknown key '{key}' for source '{self.source_kind}' "
                    f"(expected one of: {', '.join(valid)}{hint})"
                )
        missing = [k for k in required_options(self.source_kind) if k not in self.source_options]
        if missing:
            raise ConfigError(f"{src}: field 'source_options': missing key(s) {', '.join(missing)} for source '{self.source_kind}'")
        try:
            check_values(self.source_kind, self.source_options)
        except ConfigError as e:
            raise ConfigError(f"{src}: field 'source_options': {e}") from None
        if self.family is not None and self.family not in families():
            raise ConfigError(f"{src}: field 'family': '{self.family}' is not a model family (expected one of: {', '.join(families())})")
        if self.train_config is not None and not self.resolve(self.train_config).is_file():
            raise ConfigError(f"{src}: field 'train_config': {self.resolve(self.train_config)} does not exist (expected a segue train config .toml file)")
        if self.thresholds is not None:
            path = self.resolve(self.thresholds)
            if not path.is_file():
                raise ConfigError(f"{src}: field 'thresholds': {path} does not exist (expected a validation thresholds .toml file)")
            from segue.ops.thresholds import load_thresholds

            load_thresholds(path)  # its own errors name it
        measured = measured_metrics("temporal")  # step_evaluate's protocol
        if self.gate.metric not in measured:
            raise ConfigError(
                f"{src}: field 'gate.metric': '{self.gate.metric}' is not measured (expected e.g. ndcg@10, hr@10; "
                f"measured: {', '.join(measured)})"
            )
        if self.gate.floor > 1 and self.gate.metric != "clicks":  # every other one is a rate in [0, 1]
            raise ConfigError(
                f"{src}: field 'gate.floor': {self.gate.floor} can never be reached ({self.gate.metric} is at most 1); "
                "no candidate would ever be promoted"
            )


class RetrainAborted(SegueError):
    """Validation failed (drift or schema) and --force was not given."""


def crash_point(step: str) -> None:
    """Kill this process with SIGKILL when $SEGUE_RETRAIN_CRASH_AT names `step` (crash tests)."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def registry_config(model_folder: str | Path) -> dict[str, Any]:
    """The config to record for a model folder: its train config.toml, else its model.toml."""
    folder = Path(model_folder)
    for name in ("config.toml", "model.toml"):
        if (folder / name).exists():
            return read_toml(folder / name)
    return {}


@dataclass
class Retrain:
    """One retrain attempt; `state` (JSON-able) carries everything between steps."""

    cfg: RetrainConfig
    force: bool = False
    from_scratch: bool = False
    # "shuffle_items": a deliberately broken candidate, trained on item ids shuffled before the test
    # window (a copy of the store); evaluated like any candidate, the gate must refuse it
    drill: str | None = None
    console: Any = None
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.console is None:
            from rich.console import Console

            self.console = Console()
        if not self.state:
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
            attempt = self.cfg.resolve(self.cfg.work_dir) / "attempts" / f"{stamp}-{os.getpid()}"
            self.state = {"attempt": str(attempt.resolve()), "seconds": {}, "steps_done": []}
        self._registry: Any = None

    # --- helpers -------------------------------------------------------------------------------
    @property
    def attempt(self) -> Path:
        return Path(self.state["attempt"])

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from segue.ops.registry import Registry

            self._registry = Registry(self.cfg.registry_location())
        return self._registry

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def _source(self, path: str) -> Any:
        from segue.data.sources import open_source

        return open_source(self.cfg.source_kind, path, **self.cfg.source_options)

    def _spec(self, path: str) -> Any:
        from segue.ops.eventset import Spec

        return Spec(kind=self.cfg.source_kind, path=path, options=dict(self.cfg.source_options))

    def run_step(self, step: str) -> None:
        crash_point(step)
        t = time.perf_counter()
        getattr(self, "step_" + step)()
        self.state["seconds"][step] = round(time.perf_counter() - t, 2)
        self.state["steps_done"].append(step)

    def locked(self) -> Any:
        """The retrain lock of this model in this registry (segue.retrain.lock): a second retrain
        exits naming the holder. A read-only registry is refused here, before any work."""
        from segue.retrain.lock import retrain_lock

        self.registry.require_writable("retrain")
        return retrain_lock(self.registry, self.cfg.name, self.attempt)

    def run(self) -> dict[str, Any]:
        """Every step in order, holding the retrain lock; returns the state (figures, decision,
        version, timings). The attempt folder's retrain.json records how it ended (`status`:
        finished, stopped, aborted, interrupted or failed), also when it did not."""
        t = time.perf_counter()
        self.cfg.check()  # a config mistake creates nothing, not even the lock's registry folder
        with self.locked():
            status = "failed"
            try:
                for step in STEPS:
                    self.run_step(step)
                    if self.state.get("stop"):
                        self.say(f"[yellow]stopped after {step}:[/] {self.state['stop']}")
                        break
                status = "stopped" if self.state.get("stop") else "finished"
            except RetrainAborted as e:
                status, self.state["error"] = "aborted", str(e)
                raise
            except KeyboardInterrupt:
                status = "interrupted"
                self.state["interrupted"] = True
                raise
            except Exception as e:
                self.state["error"] = str(e) if isinstance(e, SegueError) else f"{type(e).__name__}: {e}"
                raise
            finally:
                self.state["seconds"]["total"] = round(time.perf_counter() - t, 2)
                self._finish(status)
        return self.state

    def _finish(self, status: str) -> None:
        """Write the attempt's retrain.json. An attempt that ended before `register` can never be
        resumed: `note` says so (rerun segue retrain: a new attempt), and an aborted or interrupted
        one's store and checkpoints are removed (no version records them; a failed one keeps them
        for a look at what failed)."""
        import shutil

        from segue.io import atomic_write_text

        st = self.state
        st["status"] = status
        if status in ("aborted", "interrupted", "failed") and "register" not in st["steps_done"]:
            removed = []
            heavy = (self.attempt / "store.duckdb", self.attempt / "store-shuffled.duckdb", self.attempt / "run" / "checkpoints")
            for p in heavy if status != "failed" else ():
                for q in (p, p.with_name(f".{p.name}.lock"), p.with_name(p.name + ".arrays")):
                    if q.exists():
                        shutil.rmtree(q) if q.is_dir() else q.unlink()
                        removed.append(q.name)
            st["note"] = (
                f"{status} after {', '.join(st['steps_done']) or 'no step'}: this attempt cannot be resumed; rerun "
                "segue retrain to start a new one" + (f" (removed: {', '.join(removed)})" if removed else "")
            )
        if st["steps_done"] or self.attempt.exists():  # a gather that failed at once left no attempt
            self.attempt.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.attempt / "retrain.json", json.dumps(st, indent=2, default=str))

    # --- steps ---------------------------------------------------------------------------------
    def step_gather(self) -> None:
        from segue.ops.registry import PRODUCTION, default_cache

        self.cfg.check()  # before any work (here, not in run(): the Metaflow flow starts at this step too)
        cfg, reg, st = self.cfg, self.registry, self.state
        prod = reg.alias(cfg.name, PRODUCTION)
        st["production"] = prod
        known: list[str] = []
        known_sums: dict[str, str] = {}  # path -> sha256 when production was trained (older versions: none)
        since = -math.inf
        if prod is not None:
            info = reg.version(cfg.name, prod)
            known = json.loads(info.tags.get("files") or "[]")
            known_sums = json.loads(info.tags.get("file_sha256") or "{}")
            since = float(info.tags.get("data_until") or -math.inf)
            st["production_folder"] = str(reg.download(cfg.name, prod, default_cache(reg)))
            st["production_store"] = info.tags.get("store_path") or None
            st["production_split"] = info.tags.get("split") or None
        incoming = cfg.resolve(cfg.incoming)
        # A mistyped path must not read as "nothing new" (an exit 0 that hides every new batch);
        # an existing, empty folder still does.
        if not incoming.is_dir():
            what = "is not a folder" if incoming.exists() else "does not exist"
            raise ConfigError(
                f"{cfg._source}: field 'incoming': {incoming} {what} (expected the folder the new source files arrive in)"
            )
        present = sorted(str(p.resolve()) for p in incoming.glob(cfg.pattern))
        # Gone files first: a known file that is gone is not one the pattern "misses".
        missing = [f for f in known if not Path(f).exists()]
        if missing:
            raise SegueError(f"files production was trained on are gone: {', '.join(missing)} (restore them, or register anew)")
        unmatched = _check_pattern(cfg, incoming, present, known)
        # Known by content, not only by path: a file changed since production was trained on it
        # (corrected, re-delivered, still being copied then) holds data production has not seen,
        # so it is new again: validated and trained on, not skipped as "nothing new".
        sums = {f: file_digest(f) for f in present}
        changed = [f for f in present if f in known_sums and known_sums[f] != sums[f]]
        new = [f for f in present if f not in known or f in changed]
        st["known_files"], st["new_files"], st["changed_files"] = [f for f in known if f not in changed], new, changed
        st["files"] = st["known_files"] + new
        st["file_sha256"] = {f: sums.get(f) or file_digest(f) for f in st["files"]}
        # The feature log: records newer than what production has seen.
        st["log_records"], st["data_until"] = 0, (since if math.isfinite(since) else None)
        if cfg.feature_log:
            n, until = _copy_log_since(cfg.resolve(cfg.feature_log), since, self.attempt / "feature-log")
            st["log_records"] = n
            if n:
                st["log_folder"] = str(self.attempt / "feature-log")
                st["data_until"] = until
        self.say(
            f"gather: production {prod or 'none'}; {len(known)} files known, {len(new)} new"
            + (f" ({len(changed)} changed since production: {', '.join(Path(f).name for f in changed)})" if changed else "")
            + (f"; {st['log_records']} feature-log records since the last version" if cfg.feature_log else "")
        )
        if not new and not st["log_records"]:
            st["stop"] = "nothing new since the production version" + (f" ({unmatched})" if unmatched else "")
        elif not new and not cfg.train_on_feature_log:
            st["stop"] = "no new source file (the feature log is validated, not trained on)"

    def step_validate(self) -> None:
        """Each new file against the file before it (a week against the previous week, the first
        new one against the last file production was trained on, or production's training data),
        and the feature log against the newest file (the same period: a difference is skew
        between serving and training data). Each comparison spans one step of the data's history,
        so a gradual shift passes week after week instead of adding up against an old reference,
        also when an earlier candidate was not promoted."""
        from segue.ops.eventset import Spec
        from segue.ops.thresholds import load_thresholds
        from segue.ops.validation import validate, write_result

        cfg, st = self.cfg, self.state
        st["validation"] = {}
        if st["production"] is None:
            self.say("validate: no production version yet: nothing to compare with")
            return
        limits = load_thresholds(cfg.resolve(cfg.thresholds) if cfg.thresholds else None)
        previous: tuple[str, Any] | None = None  # (label, spec) of the data just before
        if st["known_files"]:
            previous = (Path(st["known_files"][-1]).name, self._spec(st["known_files"][-1]))
        elif st.get("production_store"):
            previous = (
                "production's training data",
                Spec(kind="store", path=st["production_store"], split=st["production_split"], part="train"),
            )
        pairs: list[tuple[str, Any, tuple[str, Any] | None]] = []
        for f in st["new_files"]:
            pairs.append((Path(f).name, self._spec(f), previous))
            previous = (Path(f).name, self._spec(f))
        if st.get("log_folder"):
            pairs.append(("feature-log", Spec(kind="log", path=st["log_folder"]), previous))
        failed = []
        for label, spec, ref in pairs:
            if ref is None:
                self.say(f"validate: {label}: production records no data to compare with: skipped")
                continue
            ref_label, ref_spec = ref
            result = validate(ref_spec, spec, limits)
            out = self.attempt / "validation" / label
            write_result(result, out / "validation.json", out / "validation.html")
            st["validation"][label] = {
                "reference": ref_label,
                "passed": result.passed,
                "distances": {f.name: None if f.skipped else round(f.distance, 4) for f in result.features},
                "failures": [f"{f.name} {f.distance:.4f} > {f.limit:.4f}" for f in result.failures()]
                + [x.message() for x in result.schema_errors],
                "report": str(out / "validation.html"),
            }
            verdict = "pass" if result.passed else "FAIL: " + "; ".join(st["validation"][label]["failures"])
            self.say(f"validate: {label} against {ref_label}: {verdict}")
            if not result.passed:
                failed.append(label)
        if failed and not self.force:
            st["stop"] = "validation failed"
            raise RetrainAborted(
                "retrain aborted: "
                + "; ".join(
                    f"{lab} failed validation against {st['validation'][lab]['reference']} "
                    f"({', '.join(st['validation'][lab]['failures'])})"
                    for lab in failed
                )
                + f"; reports in {self.attempt / 'validation'}; pass --force to retrain anyway"
            )
        if failed:
            self.say(f"[yellow]validate: {', '.join(failed)} failed; continuing (--force)[/]")

    def step_build(self) -> None:
        from segue.data.splits import TemporalSplit, add_split
        from segue.data.store import BuildConfig, Store, build_store

        cfg, st = self.cfg, self.state
        sources = [self._source(f) for f in st["files"]]
        if cfg.train_on_feature_log and st.get("log_folder"):
            from segue.data.sources.feature_log import FeatureLogSource

            sources.append(FeatureLogSource(st["log_folder"]))
        store = self.attempt / "store.duckdb"
        store.parent.mkdir(parents=True, exist_ok=True)
        build_store(sources, store, BuildConfig(splits=[]))
        with Store.open(store) as s:
            min_ts, max_ts = s.con.execute("SELECT min(ts), max(ts) FROM events").fetchone()
        if max_ts is None:
            raise SegueError("the gathered data has no timestamps: a temporal split needs them")
        # The newest test_days, cut at the midnight (UTC) before: weekly batches split at their
        # start. At most the newer half of the data (a first version has a single batch).
        start = max(max_ts - cfg.test_days * DAY, (min_ts + max_ts) / 2)
        test_cut = int(math.ceil(start / DAY) * DAY)
        valid_cut = int(max(test_cut - cfg.valid_days * DAY, min_ts + 1))
        split = TemporalSplit(name="temporal", test_cut=test_cut, valid_cut=valid_cut)
        if self.drill == "shuffle_items":
            # The candidate trains on a copy whose events before the test window have their item
            # ids permuted; both models are evaluated on the true store (the same histories and
            # test window as any week), so the gate compares a broken model with a sound one.
            import shutil

            drill_store = self.attempt / "store-shuffled.duckdb"
            shutil.copy(store, drill_store)
            _shuffle_training_items(drill_store, test_cut)
            add_split(str(drill_store), split)
            st["train_store"] = str(drill_store)
        add_split(str(store), split)
        with Store.open(store) as s:
            st["store_checksum"] = s.checksum
            counts = s.counts()
        st["store"], st["split"], st["test_cut"], st["valid_cut"] = str(store), "temporal", test_cut, valid_cut
        self.say(
            f"build: {store} ({counts.get('events', 0):,} events from {len(sources)} sources); test window from "
            f"{time.strftime('%Y-%m-%d', time.gmtime(test_cut))}"
        )

    def step_train(self) -> None:
        cfg, st = self.cfg, self.state
        if cfg.family is not None:
            t = time.perf_counter()
            train_store = st.get("train_store", st["store"])  # the drill's shuffled copy, else the store
            st["run"] = str(_fit_baseline(cfg.family, cfg.family_config, train_store, st["split"], self.attempt / "run"))
            st["train_seconds"] = round(time.perf_counter() - t, 2)
            st["warm"] = {"warm_start": False, "why": f"family {cfg.family} is fitted from scratch"}
            st["train_config"] = {"family": cfg.family, "config": cfg.family_config}
            self.say(f"train: {cfg.family} fitted in {st['train_seconds']:.1f} s")
            return
        from segue.retrain.train import train_candidate
        from segue.training.trainer import DataConfig, load_train_config

        assert cfg.train_config is not None
        base = load_train_config(cfg.resolve(cfg.train_config))
        tc = base.model_copy(
            update={"name": "candidate", "runs_dir": str(self.attempt), "data": DataConfig(store=st.get("train_store", st["store"]), split=st["split"])}
        )
        warm_from, asked = None, None
        if st.get("production_folder"):
            # the registry records why a candidate did not start from production: the flag, when
            # it was asked for (not "no production model", which an audit would read as a fact)
            if self.from_scratch:
                asked = "asked (--from-scratch)"
            elif not cfg.warm_start:
                asked = f"asked (warm_start = false in {cfg._source})"
            else:
                warm_from = Path(st["production_folder"])
        t = time.perf_counter()
        run, warm = train_candidate(tc, self.attempt / "run", warm_from=warm_from, console=self.console, cold_reason=asked)
        st["train_seconds"] = round(time.perf_counter() - t, 2)
        st["run"], st["warm"] = str(run), warm
        st["train_config"] = tc.model_dump(mode="json")
        how = (
            f"warm start ({warm['rows_copied']} item rows copied, {warm['rows_fresh']} new, {warm['rows_dropped']} dropped)"
            if warm.get("warm_start")
            else f"from scratch ({warm.get('why') or 'asked'})"
        )
        self.say(f"train: {run}, {how}, {st['train_seconds']:.0f} s")

    def step_evaluate(self) -> None:
        from segue.models.base import load_model
        from segue.retrain.evaluate import Revocabulary, evaluate_models

        st = self.state
        cand = load_model(st["run"])
        vocab = cand.vocab
        models: dict[str, Any] = {"candidate": cand}
        if st.get("train_store"):  # the drill's candidate learnt the shuffled copy's vocabulary
            from segue.data.store import Store
            from segue.data.vocab import Vocabulary

            with Store.open(st["store"]) as s:
                vocab = Vocabulary.from_store(s.con, st["split"])
            models["candidate"] = Revocabulary(cand, vocab)
        if st.get("production_folder"):
            models["production"] = Revocabulary(load_model(st["production_folder"]), vocab)
        figures = evaluate_models(
            models, st["store"], st["split"], protocol="temporal", reference="production" if "production" in models else None
        )
        st["figures"] = figures
        m = self.cfg.gate.metric
        line = ", ".join(f"{n} {v[m][0]:.4f} [{v[m][1]:.4f}, {v[m][2]:.4f}]" for n, v in figures.items() if not n.startswith("_"))
        self.say(f"evaluate: {m} on the newest window ({figures['_queries']} queries): {line}")

    def step_gate(self) -> None:
        from segue.retrain.evaluate import gate

        st, m = self.state, self.cfg.gate.metric
        figures = st["figures"]
        if m not in figures["candidate"]:
            raise ConfigError(f"gate.metric '{m}' was not measured (measured: {', '.join(figures['candidate'])})")
        prod = figures.get("production", {}).get(m, [None])[0]
        decision = gate(figures["candidate"][m][0], prod, self.cfg.gate)
        st["decision"] = decision.to_dict()
        self.say(f"gate: {decision.verdict.upper()}: " + "; ".join(decision.reasons))

    def step_register(self) -> None:
        st, cfg = self.state, self.cfg
        decision = dict(st["decision"])
        decision["production_figures"] = st["figures"].get("production", {}).get(cfg.gate.metric)
        decision["comparison"] = st["figures"].get("_comparison", {}).get(cfg.gate.metric)
        decision["drift"] = {k: v["distances"] for k, v in st.get("validation", {}).items()}
        info = self.registry.register(
            cfg.name,
            st["run"],
            store_checksum=st["store_checksum"],
            split=st["split"],
            config=st["train_config"],
            evaluation=st["figures"]["candidate"],
            eval_split=f"{st['split']}/test (from {time.strftime('%Y-%m-%d', time.gmtime(st['test_cut']))})",
            parent=st["production"],
            tags={
                "files": json.dumps(st["files"]),
                "file_sha256": json.dumps(st["file_sha256"]),
                "data_until": str(st["data_until"] if st["data_until"] is not None else time.time()),
                "store_path": st["store"],
                "decision": json.dumps(decision, default=float),
                "warm_start": json.dumps(st["warm"]),
                "attempt": str(self.attempt),
            },
            description=f"segue retrain: {decision['verdict']}",
        )
        st["version"] = info.version
        self.say(f"register: {cfg.name} version {info.version} (alias candidate)")

    def step_promote(self) -> None:
        from segue.ops.registry import switch_production

        st, server = self.state, self.cfg.server
        st["promoted"] = False
        if not st["decision"]["promote"]:
            self.say(f"promote: production stays at version {st['production']}")
            return
        reason = "retrain gate: " + "; ".join(st["decision"]["reasons"])
        # The alias moves, then the server (if any) reloads; a refused reload puts the alias back
        # (switch_production). The first promotion with no server up keeps the alias, with a warning.
        # Only over the production the gate compared with (expected_production): one that moved
        # meanwhile (a manual promotion, a Metaflow run beside this one) refuses, naming both.
        try:
            out = switch_production(
                self.registry,
                self.cfg.name,
                st["version"],
                server=server.admin_url or server.url,
                admin_key=os.environ.get(server.admin_key_env),
                reason=reason[:4000],
                timeout=server.reload_timeout,
                expected_production=st["production"],
            )
        except SegueError as e:  # recorded on the version: `registry show` tells it from a kept candidate
            from segue.ops.registry import mark_failed

            st["promotion_failed"] = str(e)
            mark_failed(self.registry, self.cfg.name, st["version"], str(e))
            raise
        st["promoted"], st["served"] = True, out["served"]
        if out.get("workers"):
            st["workers"] = out["workers"]
        self.say(f"promote: production {st['production'] or '-'} -> {st['version']}")
        if out.get("warning"):
            st["warning"] = out["warning"]
            self.say(f"warning: {out['warning']}")

    def step_reload(self) -> None:
        """Confirm what the server serves after the promotion (/healthz) and record it."""
        import httpx

        st, server = self.state, self.cfg.server
        if not st.get("promoted") or not server.url or st.get("served") is None:
            return  # nothing promoted, no server configured, or none answered the reload
        health = httpx.get(server.url.rstrip("/") + "/healthz", timeout=30).json()["model"]
        st["healthz"] = health
        served: dict[str, Any] = {"healthz": health}
        if server.admin_url:  # several workers: what each one serves
            r = httpx.get(
                server.admin_url.rstrip("/") + "/admin/workers",
                headers={"X-API-Key": os.environ.get(server.admin_key_env) or ""},
                timeout=30,
            )
            if r.status_code == 200:
                st["workers"] = served["workers"] = r.json()["workers"]
        self.registry.set_tag(self.cfg.name, st["version"], "served", json.dumps(served))
        each = "; workers " + ", ".join(f"{w['pid']}: {(w.get('model') or {}).get('run_id')}" for w in st.get("workers", []))
        self.say(f"reload: {server.url} now serves {health['run_id']} ({health['version']})" + (each if st.get("workers") else ""))


def outcome(state: dict[str, Any]) -> tuple[str, str]:
    """(verdict, detail) of a finished attempt: the version production now serves, and the
    candidate when the gate kept production (state["version"] is the candidate, promoted or not)."""
    prod, cand = state.get("production"), state.get("version")
    if state.get("promoted"):
        return "promoted", f"version {cand} (production was {prod or 'none'})"
    kept = f"version {prod}" if prod is not None else "none"
    return "kept production", kept + (f" (candidate version {cand} not promoted)" if cand is not None else "")


def _fit_baseline(family: str, options: dict[str, Any], store: str, split: str, run: Path) -> Path:
    """Fit a baseline family on the split's training part and save it as a model folder."""
    from segue.data.arrays import SplitData
    from segue.data.store import Store
    from segue.models.base import model_class

    cls = model_class(family)
    model = cls(cls.config_class.from_dict(options, source="family_config"))
    with Store.open(store) as s:
        model.fit(SplitData.load(s, split))
        model.meta = dict(getattr(model, "meta", {}) or {}) | {"store_checksum": s.checksum}
    return model.save(run)


def _check_pattern(cfg: RetrainConfig, incoming: Path, present: list[str], known: list[str]) -> str | None:
    """A `pattern` that misses the folder's files must not read as "nothing new" either: it must
    match every file production was trained on from this folder that still exists (a ConfigError
    otherwise). A folder whose files it matches none of, with no such file involved (a first batch
    not yet landed, a README), is not an error: the note naming them is returned for the
    "nothing new" line (None when the pattern matches something or the folder is empty)."""
    here = str(incoming.resolve())
    missed = [f for f in known if str(Path(f).parent) == here and Path(f).exists() and f not in present]
    if missed:
        raise ConfigError(
            f"{cfg._source}: field 'pattern': '{cfg.pattern}' in {incoming} misses {Path(missed[0]).name}, "
            "a file production was trained on (expected a glob such as *.csv)"
        )
    others = [] if present else sorted(p.name for p in incoming.iterdir() if p.is_file() and not p.name.startswith("."))
    if not others:
        return None
    names = f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}"
    return f"pattern '{cfg.pattern}' matches none of the {len(others)} file(s) in {incoming}: {names}"


def _copy_log_since(folder: Path, since: float, out: Path) -> tuple[int, float | None]:
    """Copy the feature-log records with ts > since into out/features.jsonl; (count, newest ts)."""
    from segue.data.sources.feature_log import LOG_NAME, log_files
    from segue.io import atomic_path

    n, newest = 0, None
    if not folder.exists():
        return 0, None
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / LOG_NAME) as tmp, open(tmp, "w", encoding="utf-8") as w:
        for path in log_files(folder):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        ts = float(json.loads(line).get("ts") or 0)
                    except (json.JSONDecodeError, AttributeError):
                        continue
                    if ts > since:
                        w.write(line if line.endswith("\n") else line + "\n")
                        n += 1
                        newest = ts if newest is None else max(newest, ts)
    return n, newest


def _shuffle_training_items(store: Path, test_cut: int) -> None:
    """The drill: permute the item ids of every event before the test window in `store` (a copy
    the candidate trains on: it learns a scrambled catalogue)."""
    import numpy as np
    import pyarrow as pa

    from segue.data.store import modify_store

    with modify_store(store) as con:
        ids = [r[0] for r in con.execute("SELECT item_id FROM items ORDER BY item_id").fetchall()]
        perm = np.random.default_rng(0).permutation(ids)
        con.register("perm", pa.table({"old": pa.array(ids, pa.int64()), "new": pa.array(perm, pa.int64())}))
        con.execute("UPDATE events SET item_id = perm.new FROM perm WHERE events.item_id = perm.old AND events.ts < ?", [test_cut])
        con.unregister("perm")


def load_config(path: str | Path) -> RetrainConfig:
    return RetrainConfig.load(path)
