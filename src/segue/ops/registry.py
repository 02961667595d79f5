"""The model registry: MLflow's Model Registry over segue's model folders.

Where it lives: `--registry DIR` (or $SEGUE_REGISTRY) names a folder, which holds an embedded
SQLite backend (DIR/registry.db) and the artifacts (DIR/artifacts): nothing to start. A value with
a scheme (http://host:5000, sqlite:///x.db, databricks, ...) is used as the MLflow tracking and
registry URI as is, for teams that share a server.

What a version records (one MLflow run per version, the version points at the run's `model`
artifact folder):
  artifact `model/`      the model folder (checkpoints, TensorBoard files and index caches left out)
  run params             the config, flattened ("model.d_model" = 64)
  run metrics            evaluation means and 95% CI bounds ("ndcg_at_10", "ndcg_at_10_ci_low", ...)
  version tags           store_checksum, split, eval_split, parent (the production version it
                         was trained from), previous_production (set when it is promoted),
                         evaluation (JSON: metric -> [mean, low, high]), decision (JSON), and any
                         extra tags the caller gives (retrain: files, data_until)
Aliases: `production` (served) and `candidate` (the last one registered).

Crash safety: a version is created by one `create_model_version` call carrying all its tags (the run
and its artifacts are written first; a crash before leaves an orphan run, never a half-recorded
version), and a promotion or rollback is one alias update.

`import mlflow` is deferred to first use: `segue --help` must not pay its ~2 s.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segue.errors import ConfigError, SegueError

REGISTRY_ENV = "SEGUE_REGISTRY"
PRODUCTION = "production"
CANDIDATE = "candidate"
# Set on a version whose promotion was undone or refused (its reload failed, production moved
# meanwhile): `registry show` tells it from a candidate the gate kept. Removed when promoted.
PROMOTION_FAILED = "promotion_failed"
_UNSET: Any = object()
EXPERIMENT = "segue"
# Parts of a run folder that are not the model: resumable state and caches rebuilt on load.
SKIP_IN_ARTIFACT = ("checkpoints", "tensorboard", "serving")


@dataclass
class VersionInfo:
    """One registered version, as `segue registry list/show` print it."""

    name: str
    version: str
    run_id: str
    source: str
    created_ms: int
    aliases: list[str]
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    @property
    def parent(self) -> str | None:
        return self.tags.get("parent") or None

    def evaluation(self) -> dict[str, list[float]]:
        """metric -> [mean, CI low, CI high] on `eval_split` (empty if none was recorded)."""
        return json.loads(self.tags.get("evaluation", "{}"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "source": self.source,
            "created_ms": self.created_ms,
            "aliases": self.aliases,
            "tags": self.tags,
            "metrics": self.metrics,
        }


def tracking_uri(location: str | Path | None) -> tuple[str, str | None]:
    """(MLflow URI, artifact folder or None) for a registry location: a folder becomes an embedded
    SQLite backend; a value with a scheme is a URI used as is. None reads $SEGUE_REGISTRY."""
    loc = str(location) if location is not None else os.environ.get(REGISTRY_ENV, "")
    if not loc:
        raise ConfigError(f"no model registry given: pass --registry DIR (or a tracking URI), or set {REGISTRY_ENV}")
    if "://" in loc or loc.startswith("databricks"):
        return loc, None
    folder = Path(loc).expanduser().resolve()
    return f"sqlite:///{folder / 'registry.db'}", str(folder / "artifacts")


def metric_key(key: str) -> str:
    """An MLflow-safe metric name: 'ndcg@10' -> 'ndcg_at_10' (MLflow refuses '@')."""
    return key.replace("@", "_at_")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"} (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, key + ".")
        elif v is not None:
            out[key] = json.dumps(v) if isinstance(v, list | bool) else str(v)
    return out


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """'models:/NAME@alias' -> (NAME, None, alias); 'models:/NAME/3' -> (NAME, '3', None)."""
    if not uri.startswith("models:/"):
        raise ConfigError(f"'{uri}': not a registry model URI (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    rest = uri[len("models:/") :].strip("/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        if name and alias:
            return name, None, alias
    else:
        name, _, version = rest.partition("/")
        if name and version.isdigit():
            return name, version, None
    raise ConfigError(f"'{uri}': expected models:/NAME@ALIAS or models:/NAME/VERSION")


class Registry:
    """segue's view of an MLflow Model Registry (see the module docstring)."""

    def __init__(self, location: str | Path | None = None, *, create: bool = True) -> None:
        """`create=False` (read-only commands): a folder without registry.db is an error, not a new,
        empty registry that a mistyped path would leave behind."""
        self.uri, self.artifact_root = tracking_uri(location)
        self.location = str(location) if location is not None else os.environ.get(REGISTRY_ENV, "")
        self._client: Any = None
        if self.artifact_root is not None:
            folder = Path(self.artifact_root).parent
            expected = "expected a folder made by segue registry register, or a tracking URI"
            if folder.exists() and not folder.is_dir():
                raise ConfigError(f"{self.location}: is a file, not a registry ({expected})")
            if not create and not (folder / "registry.db").is_file():
                raise ConfigError(f"{self.location}: no registry here ({expected})")

    @property
    def client(self) -> Any:
        if self._client is None:
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            import logging

            logging.getLogger("alembic").setLevel(logging.WARNING)  # schema set-up chatter
            # it logs every failed statement at ERROR before raising: the failure is reported once,
            # by _writing (one line) or the traceback of an unexpected one
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            from mlflow import MlflowClient

            if self.artifact_root is not None:
                Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    def require_writable(self, what: str) -> None:
        """SegueError (one line naming the registry and `what` could not be done) when an embedded
        registry cannot be written: checked before the first write, so a refused change changes
        nothing (a read-only registry.db failed deep in SQLAlchemy with a 500-line traceback,
        after the artifacts of a registration had been written)."""
        if self.artifact_root is None:
            return  # a tracking server: its own answer says (see _writing)
        folder = Path(self.artifact_root).parent
        for path, name in ((folder / "registry.db", "registry.db"), (folder, "its folder"), (Path(self.artifact_root), "artifacts/")):
            if path.exists() and not os.access(path, os.W_OK):
                raise SegueError(f"registry {self.location}: {name} is read-only (cannot {what})")

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Around a change: require_writable first, and a write the backend refuses anyway (a
        database locked or read-only underneath, a server's refusal) as one line naming `what`."""
        self.require_writable(what)
        try:
            yield
        except SegueError:
            raise
        except Exception as e:
            if not _is_backend_error(e):
                raise
            cause = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise SegueError(f"registry {self.location}: could not {what} ({cause})") from None

    def experiment_id(self, name: str = EXPERIMENT) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return str(exp.experiment_id)
        location = None
        if self.artifact_root is not None:
            location = Path(self.artifact_root).as_uri()
        return str(self.client.create_experiment(name, artifact_location=location))

    # --- reading -------------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return True
        except MlflowException:
            return False

    def names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models())

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version of `name`, newest first."""
        if not self._exists(name):
            raise SegueError(f"registry {self.location}: no model named '{name}' (models: {', '.join(self.names()) or 'none'})")
        aliases = self._aliases(name)
        out = [self._info(mv, aliases) for mv in self.client.search_model_versions(f"name='{name}'")]
        return sorted(out, key=lambda v: -int(v.version))

    def _aliases(self, name: str) -> dict[str, list[str]]:
        by_version: dict[str, list[str]] = {}
        for alias, version in self.client.get_registered_model(name).aliases.items():
            by_version.setdefault(str(version), []).append(alias)
        return by_version

    def _info(self, mv: Any, aliases: dict[str, list[str]] | None = None, *, with_run: bool = False) -> VersionInfo:
        aliases = aliases if aliases is not None else self._aliases(mv.name)
        metrics: dict[str, float] = {}
        params: dict[str, str] = {}
        if with_run and mv.run_id:
            run = self.client.get_run(mv.run_id)
            metrics, params = dict(run.data.metrics), dict(run.data.params)
        return VersionInfo(
            name=mv.name,
            version=str(mv.version),
            run_id=mv.run_id or "",
            source=mv.source,
            created_ms=int(mv.creation_timestamp or 0),
            aliases=sorted(aliases.get(str(mv.version), [])),
            tags=dict(mv.tags or {}),
            metrics=metrics,
            params=params,
        )

    def version(self, name: str, ref: str, *, with_run: bool = False) -> VersionInfo:
        """A version by number ('3') or alias ('production')."""
        from mlflow.exceptions import MlflowException

        if not self._exists(name):
            raise SegueError(f"registry {self.location}: no model named '{name}' (models: {', '.join(self.names()) or 'none'})")
        try:
            mv = self.client.get_model_version(name, ref) if str(ref).isdigit() else self.client.get_model_version_by_alias(name, ref)
        except MlflowException:
            what = f"version {ref}" if str(ref).isdigit() else f"alias '{ref}'"
            raise SegueError(f"registry {self.location}: model '{name}' has no {what}") from None
        return self._info(mv, with_run=with_run)

    def alias(self, name: str, alias: str) -> str | None:
        """The version an alias points at, or None (also when the model does not exist yet)."""
        if not self._exists(name):
            return None
        return self._aliases_map(name).get(alias)

    def _aliases_map(self, name: str) -> dict[str, str]:
        return {a: str(v) for a, v in self.client.get_registered_model(name).aliases.items()}

    # --- writing -------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        model_folder: str | Path,
        *,
        store_checksum: str,
        split: str,
        config: dict[str, Any] | None = None,
        evaluation: dict[str, list[float]] | None = None,
        eval_split: str | None = None,
        parent: str | None = None,
        tags: dict[str, str] | None = None,
        description: str = "",
        set_candidate: bool = True,
    ) -> VersionInfo:
        """Record `model_folder` as a new version of `name` (see the module docstring for what is
        kept); `evaluation` is metric -> [mean, CI low, CI high] on `eval_split`."""
        folder = Path(model_folder)
        if not (folder / "model.toml").exists():
            raise SegueError(f"{folder}: not a model folder (no model.toml)")
        with self._writing(f"register a version of '{name}'"):
            return self._register(
                name, folder, store_checksum=store_checksum, split=split, config=config, evaluation=evaluation,
                eval_split=eval_split, parent=parent, tags=tags, description=description, set_candidate=set_candidate,
            )

    def _register(
        self,
        name: str,
        folder: Path,
        *,
        store_checksum: str,
        split: str,
        config: dict[str, Any] | None,
        evaluation: dict[str, list[float]] | None,
        eval_split: str | None,
        parent: str | None,
        tags: dict[str, str] | None,
        description: str,
        set_candidate: bool,
    ) -> VersionInfo:
        client = self.client
        run = client.create_run(self.experiment_id(), run_name=f"{name}-{folder.name}", tags={"segue.model": name})
        rid = run.info.run_id
        from mlflow.entities import Metric, Param

        params = [Param(k[:250], v[:6000]) for k, v in flatten(config or {}).items()]
        metrics = []
        import time

        now = int(time.time() * 1000)
        for key, (mean, low, high) in (evaluation or {}).items():
            base = metric_key(key)
            metrics += [Metric(base, mean, now, 0), Metric(f"{base}_ci_low", low, now, 0), Metric(f"{base}_ci_high", high, now, 0)]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(rid, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(rid, metrics=metrics[i : i + 1000])
        with tempfile.TemporaryDirectory(prefix="segue-register-") as tmp:
            staged = Path(tmp) / "model"
            shutil.copytree(folder, staged, ignore=shutil.ignore_patterns(*SKIP_IN_ARTIFACT))
            client.log_artifacts(rid, str(staged), "model")
        client.set_terminated(rid)
        if not self._exists(name):
            import contextlib

            from mlflow.exceptions import MlflowException

            with contextlib.suppress(MlflowException):  # created meanwhile by another process
                client.create_registered_model(name, description="segue recommender")
        all_tags = {
            "store_checksum": store_checksum,
            "split": split,
            "eval_split": eval_split or "",
            "parent": parent or "",
            "evaluation": json.dumps(evaluation or {}),
            "model_folder": str(folder.resolve()),
        } | (tags or {})
        mv = client.create_model_version(name, f"runs:/{rid}/model", run_id=rid, tags=all_tags, description=description)
        if set_candidate:
            client.set_registered_model_alias(name, CANDIDATE, mv.version)
        return self.version(name, str(mv.version))

    def set_tag(self, name: str, version: str, key: str, value: str) -> None:
        with self._writing(f"tag version {version} of '{name}'"):
            self.client.set_model_version_tag(name, version, key, value)

    def promote(self, name: str, version: str, *, reason: str = "manual") -> str | None:
        """Point `production` at `version`; returns the version it pointed at before. The previous
        production is recorded on the promoted version first (the rollback target), so the alias
        update that follows is the one step that changes what is served."""
        target = self.version(name, version)
        previous = self.alias(name, PRODUCTION)
        if previous == target.version:
            return previous
        with self._writing(f"promote version {target.version} of '{name}'"):
            self.client.set_model_version_tag(name, target.version, "previous_production", previous or "")
            self.client.set_model_version_tag(name, target.version, "promotion", reason)
            if PROMOTION_FAILED in target.tags:  # an earlier attempt's failure: this one stands
                self.client.delete_model_version_tag(name, target.version, PROMOTION_FAILED)
            self.client.set_registered_model_alias(name, PRODUCTION, target.version)
        return previous

    def rollback_target(self, name: str) -> tuple[str, str]:
        """(current production, the version it replaced): what a rollback would do."""
        current = self.alias(name, PRODUCTION)
        if current is None:
            if not self._exists(name):  # not "no production": there is no such model at all
                raise SegueError(f"registry {self.location}: no model named '{name}' (models: {', '.join(self.names()) or 'none'})")
            raise SegueError(f"registry {self.location}: model '{name}' has no production version to roll back")
        previous = self.version(name, current).tags.get("previous_production") or ""
        if not previous:
            raise SegueError(f"model '{name}': production version {current} replaced no earlier version; nothing to roll back to")
        return current, previous

    def rollback(self, name: str) -> tuple[str, str]:
        """Point `production` back at the version it replaced; returns (from, to)."""
        current, previous = self.rollback_target(name)
        with self._writing(f"roll '{name}' back from version {current} to {previous}"):
            self.client.set_registered_model_alias(name, PRODUCTION, previous)
            self.client.set_model_version_tag(name, current, "rolled_back", "true")
        return current, previous

    # --- model folders -------------------------------------------------------------------------
    def download(self, name: str, ref: str, cache: str | Path) -> Path:
        """The model folder of a version, downloaded once into cache/NAME-vN (atomically; reused
        after). The folder's name is what /healthz reports as the run id."""
        info = self.version(name, ref)
        dest = Path(cache) / f"{name}-v{info.version}"
        # NAME-vN alone does not tell two registries (or a rebuilt one) apart: the run id it came
        # from is kept beside it, and a folder from another run is downloaded again, not served
        marker = dest.with_name(dest.name + ".run_id")
        held = marker.read_text().strip() if marker.is_file() else None
        if (dest / "model.toml").exists() and held in (None, info.run_id):  # None: cached before the marker
            return dest
        from segue.io import atomic_path, atomic_write_text

        with atomic_path(dest, is_dir=True) as tmp:
            got = Path(self.client.download_artifacts(info.run_id, "model", str(tmp)))
            for p in got.iterdir():
                p.rename(tmp / p.name)
            got.rmdir()
        atomic_write_text(marker, info.run_id + "\n")
        return dest

    def resolve(self, uri: str, cache: str | Path) -> tuple[Path, VersionInfo]:
        """A models:/ URI -> (local model folder, version)."""
        name, version, alias = parse_model_uri(uri)
        info = self.version(name, version or alias or "")
        return self.download(name, info.version, cache), info


def _is_backend_error(e: BaseException) -> bool:
    """An MLflow or SQLAlchemy failure, or an OSError writing the artifacts: the backend refused."""
    from mlflow.exceptions import MlflowException

    if isinstance(e, MlflowException | OSError):
        return True
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # a tracking-server client without SQLAlchemy
        return False
    return isinstance(e, SQLAlchemyError)


def default_cache(registry: Registry) -> Path:
    """Where downloaded versions go: beside an embedded registry, else ~/.cache/segue/models/<a
    digest of the tracking URI> (one folder per server: versions of two servers never share one)."""
    if registry.artifact_root is not None:
        return Path(registry.artifact_root).parent / "cache"
    import hashlib

    return Path.home() / ".cache" / "segue" / "models" / hashlib.sha256(registry.uri.encode()).hexdigest()[:12]


class ServerUnreachable(SegueError):
    """No server answered the reload (nothing listening, a timeout): nothing was refused."""


class ProductionMoved(SegueError):
    """Production is no longer the version the caller compared the candidate with."""


def notify_reload(server: str, key: str | None, folder: str | Path, timeout: float = 600.0) -> dict[str, Any]:
    """POST /admin/reload {"model": folder} to a running server with its admin key; returns the
    server's answer (previous and new model) or raises SegueError with the server's reason
    (ServerUnreachable when no server answered)."""
    import httpx

    key = key or os.environ.get("SEGUE_ADMIN_KEY")
    if not key:
        raise ConfigError("reloading the server needs its admin key (--admin-key or SEGUE_ADMIN_KEY)")
    url = server.rstrip("/") + "/admin/reload"
    try:
        r = httpx.post(url, json={"model": str(Path(folder).resolve())}, headers={"X-API-Key": key}, timeout=timeout)
    except httpx.HTTPError as e:
        raise ServerUnreachable(f"{url}: could not reach the server ({e})") from None
    if r.status_code != 200:
        raise SegueError(f"{url}: reload refused ({r.status_code}: {r.text[:300]})")
    return dict(r.json())


def switch_production(
    registry: Registry,
    name: str,
    version: str | None,
    *,
    server: str | None = None,
    admin_key: str | None = None,
    reason: str = "manual",
    cache: str | Path | None = None,
    timeout: float = 600.0,
    expected_production: str | None = _UNSET,
) -> dict[str, Any]:
    """Promote `version` (None: roll back) and make a running server serve it.

    The model folder is downloaded first (nothing changed yet), then the alias moves, then the
    server reloads. Alias first because a reload, once asked for, is not cancelled when the
    caller goes away (Ctrl-C, a killed cron job): the server finishes it on its own, so the
    registry must already name the version the server is moving to. A reload the server refuses
    (wrong key, bad folder) or that reaches no server puts the alias (and the version's tags)
    back and raises: the registry is unchanged. One exception: with no production version
    before (the first promotion) an unreachable server cannot be serving a registry version, so
    the alias stays and `warning` says that no server answered.
    `expected_production` (a promotion): the production version (None: none) the candidate was
    gated against; when production is another one now (a second retrain, a manual promotion
    meanwhile) nothing moves and ProductionMoved names both. A switch whose reload fails says
    which version production stays at (the registry is as before: a caller that keeps a record,
    as segue retrain does, tags the version with mark_failed).
    Returns {"from", "to", "served" (the server's model or None), "workers" (several workers:
    each one's pid and model, from the supervisor's admin port; else None), "warning"}."""
    if version is None:
        old, new = registry.rollback_target(name)
    else:
        new, old = registry.version(name, version).version, registry.alias(name, PRODUCTION)
    registry.require_writable("roll back" if version is None else f"promote version {new}")  # before the download too
    if version is not None and expected_production is not _UNSET and old != expected_production:
        msg = (
            f"production of '{name}' is version {old or 'none'} now, not version {expected_production or 'none'} that "
            f"version {new} was gated against (another promotion meanwhile): version {new} is registered but not "
            f"promoted; production stays at version {old or 'none'} (rerun segue retrain to gate against it, or promote "
            f"by hand: segue registry promote {name} {new})"
        )
        raise ProductionMoved(msg)
    folder = registry.download(name, new, cache or default_cache(registry)) if server else None
    changed = old if version is None else new  # the version whose tags the switch writes
    before = dict(registry.version(name, changed).tags)
    if version is None:
        registry.rollback(name)
    else:
        registry.promote(name, new, reason=reason)
    out: dict[str, Any] = {"from": old, "to": new, "served": None, "workers": None, "warning": None}
    if folder is None:
        return out
    try:
        answer = notify_reload(server or "", admin_key, folder, timeout=timeout)
    except ServerUnreachable as e:
        if old is None:
            out["warning"] = f"{e}; production is version {new}: start the server with models:/{name}@{PRODUCTION}"
            return out
        _undo_switch(registry, name, old, changed, before)
        raise ServerUnreachable(_failed_switch(name, version, old, new, server or "", e, "once the server is up")) from None
    except SegueError as e:
        _undo_switch(registry, name, old, changed, before)
        raise SegueError(_failed_switch(name, version, old, new, server or "", e, "once the server takes it")) from None
    except KeyboardInterrupt:  # say what state this leaves: the reload goes on without us
        undo = f" (undo: segue registry promote {name} {old}{' --server ' + server if server else ''})" if old else ""
        logging.getLogger("segue.registry").warning(
            "interrupted while %s reloads: production is version %s (was %s); the server, asked to reload it, "
            "finishes on its own: check its /healthz%s", server, new, old or "-", undo
        )
        raise
    out["served"], out["workers"] = answer["model"], answer.get("workers")
    return out


def _failed_switch(
    name: str, version: str | None, old: str | None, new: str, server: str, e: SegueError, when: str
) -> str:
    """The message of a switch undone after its reload failed: what production is now (the
    alias was put back) and how to try again."""
    if version is None:
        return (
            f"{e}; production stays at version {old}, not rolled back to version {new} "
            f"(segue rollback {name} --server {server} {when})"
        )
    return (
        f"{e}; production stays at version {old or 'none'}; version {new} is registered but not promoted "
        f"(segue registry promote {name} {new} --server {server} {when})"
    )


def mark_failed(registry: Registry, name: str, version: str, msg: str) -> None:
    """Tag `version` PROMOTION_FAILED (UTC time: reason); a registry that refuses the tag does not
    hide the failure itself, which the caller raises."""
    import time

    with contextlib.suppress(SegueError):
        registry.set_tag(name, version, PROMOTION_FAILED, time.strftime("%Y-%m-%d %H:%M:%S UTC: ", time.gmtime()) + msg[:4000])


def _undo_switch(registry: Registry, name: str, old: str | None, changed: str, tags: dict[str, str]) -> None:
    """Put production back on `old` and `changed`'s switch tags as they were (a refused reload)."""
    if old is None:
        registry.client.delete_registered_model_alias(name, PRODUCTION)
    else:
        registry.client.set_registered_model_alias(name, PRODUCTION, old)
    now = registry.version(name, changed).tags
    for key in ("previous_production", "promotion", "rolled_back", PROMOTION_FAILED):
        if key in tags:
            if now.get(key) != tags[key]:
                registry.set_tag(name, changed, key, tags[key])
        elif key in now:
            registry.client.delete_model_version_tag(name, changed, key)


def tensorboard_scalars(folder: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in a TensorBoard folder's event files (TFRecord: length,
    crc, an Event proto, crc), read with tensorboardX's protos (no TensorFlow needed)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            ev = event_pb2.Event()
            ev.ParseFromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.append((v.tag, int(ev.step), float(v.simple_value)))
    return out


def _experiment_id(reg: Registry, experiment: str) -> str:
    """The MLflow experiment named `experiment`, created (artifacts beside the registry) if new."""
    exp = reg.client.get_experiment_by_name(experiment)
    if exp is not None:
        return str(exp.experiment_id)
    root = Path(reg.artifact_root).as_uri() if reg.artifact_root else None
    return str(reg.client.create_experiment(experiment, artifact_location=root))


def log_training_run(location: str | Path | None, run: str | Path, config: dict[str, Any], experiment: str = "segue-train") -> str:
    """Log a finished `segue train` run folder to MLflow: the config as params, the summary in
    metrics.json as metrics, the TensorBoard curves (train/*, valid/*) step by step, and
    curves.png, metrics.json and config.toml as artifacts. Returns the MLflow run id."""
    import time

    from mlflow.entities import Metric, Param

    run = Path(run)
    reg = Registry(location)
    client = reg.client
    exp_id = _experiment_id(reg, experiment)
    mrun = client.create_run(exp_id, run_name=run.name, tags={"segue.run_folder": str(run.resolve())})
    rid = mrun.info.run_id
    params = [Param(k[:250], v[:6000]) for k, v in flatten(config).items()]
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i : i + 100])
    now = int(time.time() * 1000)
    metrics = []
    summary = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    for k, v in summary.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and v == v:
            metrics.append(Metric(metric_key(k), float(v), now, 0))
    if (run / "tensorboard").is_dir():
        for tag, step, value in tensorboard_scalars(run / "tensorboard"):
            metrics.append(Metric(metric_key(tag), value, now, step))
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i : i + 1000])
    for name in ("curves.png", "metrics.json", "config.toml"):
        if (run / name).exists():
            client.log_artifact(rid, str(run / name))
    client.set_terminated(rid)
    return str(rid)


def log_tuning_session(location: str | Path | None, session: str | Path, experiment: str = "segue-tune") -> str:
    """Log a finished `segue tune` session folder to MLflow: one parent run (the best config as
    params, the test means of the tuned and the default model as metrics, summary.json,
    trials.json, card.html and tune.html as artifacts) and one nested run per trial (its params,
    status, validation metric, every validation metric, seconds, peak RSS, and the intermediate
    validation curve step by step; a failed trial is a FAILED run tagged with its error).
    Returns the parent run id."""
    import time

    from mlflow.entities import Metric, Param, RunStatus

    session = Path(session)
    summary = json.loads((session / "summary.json").read_text())
    trials = json.loads((session / "trials.json").read_text())
    reg = Registry(location)
    client = reg.client
    exp_id = _experiment_id(reg, experiment)
    now = int(time.time() * 1000)
    tags = {"segue.tune_session": str(session.resolve()), "segue.metaflow_run_id": str(summary.get("run_id", ""))}
    parent = client.create_run(exp_id, run_name=session.name, tags=tags).info.run_id
    best = summary.get("best") or {}
    params = [Param(f"best.{k}"[:250], str(v)[:6000]) for k, v in flatten(best.get("params") or {}).items()]
    if best:
        params.append(Param("best.trial", str(best["number"])))
    client.log_batch(parent, params=params)
    metrics = [Metric("best_valid", float(best["value"]), now, 0)] if best.get("value") is not None else []
    for model, means in ((summary.get("test") or {}).get("means") or {}).items():
        for k, v in means.items():
            if isinstance(v, int | float) and v == v:
                metrics.append(Metric(metric_key(f"test.{model}.{k}"), float(v), now, 0))
    for i in range(0, len(metrics), 1000):
        client.log_batch(parent, metrics=metrics[i : i + 1000])
    for name in ("summary.json", "trials.json", "card.html", "tune.html"):
        if (session / name).exists():
            client.log_artifact(parent, str(session / name))
    for t in trials:
        child = client.create_run(
            exp_id, run_name=f"trial-{t['number']}", tags={"mlflow.parentRunId": parent, "segue.status": t["status"]}
            | ({"segue.error": str(t["error"])[:5000]} if t.get("error") else {}),
        ).info.run_id
        tp = [Param(k[:250], str(v)[:6000]) for k, v in flatten(t.get("params") or {}).items()]
        tp += [Param("trial", str(t["number"])), Param("round", str(t.get("round", 0)))]
        tm = [Metric(metric_key(f"valid.{k}"), float(v), now, 0) for k, v in (t.get("metrics") or {}).items() if isinstance(v, int | float) and v == v]
        for k in ("value", "seconds", "peak_rss_mb"):
            if isinstance(t.get(k), int | float):
                tm.append(Metric("valid_metric" if k == "value" else k, float(t[k]), now, 0))
        tm += [Metric("valid_metric_curve", float(v), now, int(step)) for step, v in (t.get("intermediate") or {}).items()]
        client.log_batch(child, params=tp, metrics=tm)
        ok = t["status"] in ("ok", "pruned")
        client.set_terminated(child, status=RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED))
    client.set_terminated(parent)
    return str(parent)
