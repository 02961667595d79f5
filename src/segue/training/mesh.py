"""Training on many devices and hosts: the mesh, the shardings of the train state and batches,
and starting JAX's distributed runtime from the environment.

The mesh has two axes over `jax.devices()` (every process's devices): "data" x "model".

    batch arrays [B, ...]                        P("data")        rows of the batch split
    item table E [V, D], its Adam moments m, v,  P("model", None) rows of the table split
      and its moving average (ema_items)
    every other leaf (dense weights, optax state, counters, RNG key)   P()  replicated

The step is the same jitted function, compiled with these shardings (out_shardings keep the
state's layout from step to step). No collective is written by hand: XLA's SPMD partitioner
derives them from the annotations. The loss is a masked mean over the global batch, so the
gradient is the all-reduce over "data" of the shards' partial sums and the update equals the
one-device update up to the order of float additions. With a row-split table the sparse step's
gather E[U] / m[U] / v[U] and the scatter back become, on each model shard, a masked local
gather or scatter of the rows it owns plus an all-reduce of the [|U|, D] rows: only touched rows
travel, the [V, D] table never does. (bench/sharding_collectives.py lists them: on a 2 x 2 mesh
over a 4096 x 32 table, all-reduces of the [|U|, 32] rows and their moments, all-gathers of the
ids, no table-sized collective.)

data x model = 1 (a single device) gives no mesh: nothing is placed or annotated, and training
is exactly what it was before meshes existed.

Multi-host (`init_distributed`): every process runs the same command; JAX's own runtime connects
them (coordinator address, process count and id from the environment, or SLURM's variables); each
process reads its rows of every batch (Grain `ShardOptions`, segue.data.loader) and
`jax.make_array_from_process_local_data` joins them into one global batch. Before anything is
written the processes compare their configs (`same_everywhere`, through the distributed runtime's
key-value store): a process started with another config would otherwise meet a collective of
another shape and abort inside gloo. A peer that dies mid-run surfaces in the survivors as a
failed collective (`peer_lost`), reported as `PeerLost`: which process, and that the run resumes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from segue.errors import ConfigError, SegueError
from segue.models.train_config import MeshConfig

T = TypeVar("T")
TABLE_KEYS = ("items", "item_m", "item_v", "ema_items")  # train-state entries holding [V, D] tables


def mesh_shape(config: MeshConfig, n_devices: int) -> tuple[int, int]:
    """(data, model) sizes; ConfigError naming the field when the devices do not fit."""
    model = config.model
    if model > n_devices:
        raise ConfigError(f"trainer.mesh.model: {model} devices asked, {n_devices} available")
    data = config.data if config.data is not None else n_devices // model
    if data * model > n_devices:
        raise ConfigError(f"trainer.mesh: data {data} x model {model} = {data * model} devices asked, {n_devices} available")
    return data, model


def make_mesh(config: MeshConfig, devices: list[Any] | None = None) -> Mesh | None:
    """The ("data", "model") mesh, or None on a single device (training as without a mesh)."""
    devices = jax.devices() if devices is None else devices
    data, model = mesh_shape(config, len(devices))
    if data * model == 1:
        return None
    # Auto axes: the SPMD partitioner propagates shardings (Explicit, make_mesh's default in this
    # JAX, would make every op's sharding part of its type).
    grid = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def check_fit(mesh: Mesh, batch_size: int, vocab_size: int) -> None:
    """ConfigError unless the batch splits evenly over "data" and the table's rows over "model"."""
    data, model = mesh.shape["data"], mesh.shape["model"]
    if batch_size % data:
        raise ConfigError(f"trainer.loader.batch_size: {batch_size} does not split over trainer.mesh data = {data} devices")
    if vocab_size % model:
        raise ConfigError(
            f"trainer.mesh.model: the item table's {vocab_size} rows (vocabulary size) do not split over {model} devices; "
            "choose a model axis that divides it"
        )


def state_shardings(mesh: Mesh, state: Mapping[str, Any]) -> dict[str, Any]:
    """NamedSharding of every leaf of a train state (see the module docstring)."""
    rows = NamedSharding(mesh, P("model", None))
    replicated = NamedSharding(mesh, P())
    return {
        k: jax.tree_util.tree_map(lambda _, s=(rows if k in TABLE_KEYS else replicated): s, v) for k, v in state.items()
    }


def place_state(mesh: Mesh, state: dict[str, Any]) -> dict[str, Any]:
    """The state's arrays laid out on the mesh."""
    return jax.device_put(state, state_shardings(mesh, state))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(mesh: Mesh, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays split over "data" along their first axis.

    One process: `local` is the whole batch. Several: each passes its own rows (in process order)."""
    out: dict[str, jax.Array] = {}
    for k, v in local.items():
        v = np.asarray(v)
        spec = P("data") if v.ndim else P()
        out[k] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), v)
    return out


# ---------------------------------------------------------------------------------------------
# multi-host start


def distributed_args(env: Mapping[str, str]) -> dict[str, Any] | None:
    """Arguments of `jax.distributed.initialize` read from the environment, or None for one process.

    Explicit (any launcher): SEGUE_COORDINATOR ("host:port"), SEGUE_NUM_PROCESSES, SEGUE_PROCESS_ID
    (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID are read too).
    Kubernetes (an Indexed Job or JobSet): the process id defaults to JOB_COMPLETION_INDEX, so the
    manifest sets only the coordinator (the pod of index 0) and the count.
    SLURM (srun with more than one task, nothing explicit): {} -- JAX's own SLURM detection reads
    SLURM_JOB_ID (the port), SLURM_STEP_NODELIST (its first node), SLURM_NTASKS, SLURM_PROCID and
    SLURM_LOCALID (one GPU per task unless JAX_LOCAL_DEVICE_IDS says otherwise).
    """

    def get(*names: str) -> str | None:
        return next((env[n] for n in names if env.get(n)), None)

    coord = get("SEGUE_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
    count = get("SEGUE_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    pid = get("SEGUE_PROCESS_ID", "JAX_PROCESS_ID", "JOB_COMPLETION_INDEX")
    if coord or count:
        missing = [n for n, v in (("SEGUE_COORDINATOR", coord), ("SEGUE_NUM_PROCESSES", count), ("SEGUE_PROCESS_ID", pid)) if v is None]
        if missing:
            raise ConfigError(f"multi-host: environment variable(s) {', '.join(missing)} not set (a multi-process run needs all three)")
        try:
            n, i = int(count), int(pid)  # type: ignore[arg-type]
        except ValueError:
            raise ConfigError(f"multi-host: SEGUE_NUM_PROCESSES={count!r} and SEGUE_PROCESS_ID={pid!r} must be integers") from None
        if not 0 <= i < n:
            raise ConfigError(f"multi-host: process id {i} is outside 0..{n - 1}")
        if n == 1:
            return None
        return {"coordinator_address": coord, "num_processes": n, "process_id": i}
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env:
        return {}
    return None


def init_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Start JAX's distributed runtime when the environment describes several processes (once per
    process, before any computation); True when it did."""
    args = distributed_args(os.environ if env is None else env)
    if args is None or jax.distributed.is_initialized():
        return False
    jax.distributed.initialize(**args)
    return True


def process_shard() -> Any:
    """Grain shard options of this process: which slice of every batch's rows it reads."""
    import grain

    return grain.sharding.ShardByJaxProcess(drop_remainder=False)


# ---------------------------------------------------------------------------------------------
# agreement between processes, and a lost process


class PeerLost(SegueError):
    """A process of a multi-process run stopped (a collective failed): the run cannot go on here."""


EXCHANGE_TIMEOUT_S = 120.0  # processes reach an exchange seconds apart (all have just joined)
_exchanges = 0  # exchanges so far in this process: every process makes them in the same order


def exchange(payload: str, *, timeout_s: float = EXCHANGE_TIMEOUT_S) -> list[str]:
    """Every process's `payload`, in process order ([payload] in a single process).

    Through the distributed runtime's key-value store (strings of any length, no XLA computation),
    so it works before any device agrees on anything."""
    n = jax.process_count()
    if n == 1:
        return [payload]
    from jax._src.distributed import global_state

    client = global_state.client
    if client is None:  # several processes not started by jax.distributed: nothing to exchange through
        return [payload] * n
    global _exchanges
    _exchanges += 1
    key = f"segue/exchange/{_exchanges}"
    client.key_value_set(f"{key}/{jax.process_index()}", payload)
    out = []
    for i in range(n):
        try:
            out.append(client.blocking_key_value_get(f"{key}/{i}", int(timeout_s * 1000)))
        except Exception:  # noqa: BLE001 -- the runtime's timeout/unavailable error, said in segue's words
            raise PeerLost(
                f"multi-host: process {i} did not reach the config check within {timeout_s:.0f} s (stopped, or started "
                "with another command); start every process with the same command"
            ) from None
    return out


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of nested dicts (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _processes(ids: list[int]) -> str:
    """'process 1', 'processes 0 and 2', 'processes 0, 1 and 3'."""
    if len(ids) == 1:
        return f"process {ids[0]}"
    return f"processes {', '.join(map(str, ids[:-1]))} and {ids[-1]}"


def config_differences(configs: list[Mapping[str, Any]], limit: int = 5) -> list[str]:
    """'field: value on process i, other on process j' for each field whose value differs between
    processes (at most `limit`, then a count)."""
    flats = [_flat(c) for c in configs]
    keys = sorted(set().union(*flats), key=lambda k: (k.count("."), k))
    out = []
    for k in keys:
        by_value: dict[str, list[int]] = {}
        for i, f in enumerate(flats):
            by_value.setdefault(json.dumps(f[k]) if k in f else "(not set)", []).append(i)
        if len(by_value) > 1:
            parts = [f"{v} on {_processes(ps)}" for v, ps in by_value.items()]
            out.append(f"{k}: {', '.join(parts)}")
    if len(out) > limit:
        out = [*out[:limit], f"and {len(out) - limit} more field(s)"]
    return out


def same_everywhere(load: Callable[[], T], fingerprint: Callable[[T], Mapping[str, Any]]) -> T:
    """`load()` (a config), checked to be the same in every process of a multi-process run.

    Each process sends its config's JSON (or its load error) to all; a ConfigError in every
    process names the differing fields, or the process whose config did not load, so all stop
    together before anything is written (a lone failure would leave the others waiting for it)."""
    if not jax.distributed.is_initialized():  # one process (and JAX's backend not started for a config error)
        return load()
    error: SegueError | None = None
    try:
        value = load()
        payload = json.dumps({"config": fingerprint(value)}, sort_keys=True, default=str)
    except SegueError as e:
        error, payload = e, json.dumps({"error": str(e)})
    got = [json.loads(p) for p in exchange(payload)]
    if error is not None:
        raise error
    me = jax.process_index()
    failed = [(i, g["error"]) for i, g in enumerate(got) if "error" in g and i != me]
    if failed:
        i, text = failed[0]
        raise ConfigError(f"multi-host: process {i} stopped: {text}")
    diff = config_differences([g["config"] for g in got])
    if diff:
        raise ConfigError(
            "multi-host: the processes were started with different configs (every process must run the same command "
            "with the same config): " + "; ".join(diff)
        )
    return value


# A collective whose peer went away: gloo's socket errors (CPU), NCCL's remote errors (GPU), the
# coordination service's barrier/unavailable errors.
_PEER_GONE = re.compile(
    r"gloo|connection (reset|closed|refused)|broken pipe|socket closed|remote process|peer|heartbeat|unavailable|barrier",
    re.IGNORECASE,
)


def peer_lost(e: BaseException) -> bool:
    """Whether `e` is a collective that failed because another process of the run went away."""
    # JaxRuntimeError (a RuntimeError) from a step; a ValueError when it comes through
    # multihost_utils.process_allgather (Orbax's barrier before a checkpoint is saved).
    return jax.process_count() > 1 and isinstance(e, (RuntimeError, ValueError)) and bool(_PEER_GONE.search(str(e)))


def newest_checkpoint(run: Path) -> int | None:
    """The newest complete checkpoint step of a run folder (Orbax's unfinished saves carry a suffix)."""
    steps = [int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit() and p.is_dir()]
    return max(steps) if steps else None


def lost_text(run: Path, step: int | None, error: BaseException) -> str:
    """PeerLost's message (`step`: the last step this process completed): which process was lost, when,
    what the run folder keeps, how to resume."""
    n, me = jax.process_count(), jax.process_index()
    who = f"process {1 - me}" if n == 2 else "another process"
    when = f" after step {step}" if step is not None else ""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    reason = re.sub(r"^\w+: ", "", reason)[:160]
    kept = newest_checkpoint(run)
    resume = (
        f"{run} holds the newest checkpoint, step {kept}: rerun the same command on every process to resume from it"
        if kept is not None
        else f"no checkpoint was written yet in {run}: rerun the same command on every process to start again"
    )
    return f"process {me} of {n}: lost {who}{when} (a collective failed: {reason}); {resume}"
