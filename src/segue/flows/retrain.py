"""The weekly retrain as a Metaflow flow: the steps of `segue retrain` (segue.retrain.loop), for
schedulers. `@schedule(weekly=True)` takes effect when the flow is deployed:

    python src/segue/flows/retrain.py argo-workflows create      # Argo Workflows
    python src/segue/flows/retrain.py step-functions create      # AWS Step Functions

Locally (or from cron on one machine, see README):

    python src/segue/flows/retrain.py run --config configs/retrain.toml [--force true]

Each Metaflow step runs one or more retrain steps on the state the previous one left (a Metaflow
artifact): start = gather + validate + build, train, evaluate = evaluate + gate, publish =
register + promote + reload (each Metaflow step is a process: few steps keep a run cheap). A drift failure fails the flow at `start` (unless --force true);
"nothing new" runs the remaining steps as no-ops. The registry and production change only in
`publish`, as in `segue retrain`.
"""

from __future__ import annotations

from metaflow import FlowSpec, Parameter, schedule, step


def _job(flow: RetrainFlow, state: dict | None = None):  # noqa: ANN202 (segue imported in the step's process)
    from segue.retrain.loop import Retrain, RetrainConfig

    return Retrain(
        RetrainConfig.load(flow.config),
        force=bool(flow.force),
        from_scratch=bool(flow.from_scratch),
        state=dict(state or {}),
    )


def _run(flow: RetrainFlow, *steps: str) -> None:
    job = _job(flow, flow.state)
    for name in steps:
        if job.state.get("stop"):
            break
        job.run_step(name)
    flow.state = job.state


@schedule(weekly=True)
class RetrainFlow(FlowSpec):
    """Weekly: gather and validate new data, train a candidate, gate it against production,
    promote and reload the server (segue retrain's steps)."""

    config = Parameter("config", help="A retrain config TOML (configs/retrain.toml)", required=True)
    force = Parameter("force", help="Retrain even when validation finds drift", type=bool, default=False)
    from_scratch = Parameter("from_scratch", help="Do not warm-start from production", type=bool, default=False)

    @step
    def start(self) -> None:
        self.state = {}
        _run(self, "gather", "validate", "build")
        self.next(self.train)

    @step
    def train(self) -> None:
        _run(self, "train")
        self.next(self.evaluate)

    @step
    def evaluate(self) -> None:
        _run(self, "evaluate", "gate")
        self.next(self.publish)

    @step
    def publish(self) -> None:
        _run(self, "register", "promote", "reload")
        self.next(self.end)

    @step
    def end(self) -> None:
        s = self.state
        verdict = s.get("stop") or ("promoted" if s.get("promoted") else "kept production")
        print(f"retrain: {verdict}; version {s.get('version')}; decision {s.get('decision', {}).get('reasons')}")


if __name__ == "__main__":
    RetrainFlow()
