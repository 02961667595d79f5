"""`segue retrain CONFIG`: the command function (registered lazily by segue.commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def retrain(
    config: Annotated[Path, typer.Argument(help="A retrain config TOML (see configs/retrain.toml).")],
    force: Annotated[bool, typer.Option("--force", help="Retrain even when validation finds drift.")] = False,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Do not warm-start from production's weights.")] = False,
    out: Annotated[Path | None, typer.Option("--json", help="Also write the attempt's figures and decision here.")] = None,
    drill: Annotated[
        str | None, typer.Option(hidden=True, help="shuffle_items: train a deliberately broken candidate (gate drill).")
    ] = None,
) -> None:
    """Gather new data, validate it, train a candidate, gate it against production, promote, reload.

    Steps: gather, validate (drift aborts unless --force), build (temporal split, the newest data
    is the test window), train (warm start), evaluate (candidate vs production, one run), gate
    (>= production - tolerance and >= floor), register, promote, reload the server.
    """
    from segue.errors import ConfigError, SegueError
    from segue.io import atomic_write_text
    from segue.retrain.loop import Retrain, RetrainConfig, outcome

    if drill not in (None, "shuffle_items"):
        raise ConfigError(f"--drill '{drill}': expected shuffle_items")
    cfg = RetrainConfig.load(config)
    job = Retrain(cfg, force=force, from_scratch=from_scratch, drill=drill)
    try:
        state = job.run()
    except KeyboardInterrupt:  # say (and record) where it stopped: exit 130 said nothing
        st = job.state
        st["interrupted"] = True
        done = st.get("steps_done", [])
        prod = st.get("version") if st.get("promoted") else st.get("production")
        promoting = "register" in done and "promote" not in done and (st.get("decision") or {}).get("promote")
        job.say(f"[yellow]interrupted[/] after {', '.join(done) or 'no step'}: production is version {prod or '-'}"
                + (f" or, if the promotion had moved it, {st['version']} (see segue registry show)" if promoting else "")
                + ("; this attempt cannot be resumed: rerun segue retrain to start a new one" if "register" not in done else ""))
        raise
    except Exception as e:
        job.state["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, SegueError) else str(e)
        raise
    finally:
        if out is not None:  # the outcome too: a monitoring job reads error / interrupted here
            atomic_write_text(out, json.dumps(job.state, indent=2, default=str))
    if state.get("stop") and state["stop"] != "validation failed":
        return
    verdict, detail = outcome(state)  # names production's version, not the refused candidate's
    job.say(f"[bold]{verdict}[/]: {detail}; {state['seconds'].get('total', 0):.0f} s (training {state.get('train_seconds', 0):.0f} s)")
