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
`publish`, as in `segue retrain`. A refused week (or another error segue raises on purpose)
fails the step with its reason as one message, not as an internal error with a traceback.
"""

from __future__ import annotations

from segue.flows.metaflow_user import name_metaflow_user

name_metaflow_user()  # before Metaflow is imported: it reads the user name then

from metaflow import FlowSpec, Parameter, schedule, step  # noqa: E402
from metaflow.exception import MetaflowException  # noqa: E402


class RetrainStopped(MetaflowException):
    """A retrain step refused to go on (drift, bad config): Metaflow prints the headline and the
    message alone (any other exception is printed as an "Internal error" with a traceback)."""

    headline = "Retrain failed"

    def __init__(self, message: str, headline: str | None = None) -> None:
        super().__init__(message)
        if headline:
            self.headline = headline


def _job(flow: RetrainFlow, state: dict | None = None):  # noqa: ANN202 (segue imported in the step's process)
    from segue.retrain.loop import Retrain, RetrainConfig

    return Retrain(
        RetrainConfig.load(flow.config),
        force=bool(flow.force),
        from_scratch=bool(flow.from_scratch),
        state=dict(state or {}),
    )


def _run(flow: RetrainFlow, *steps: str) -> None:
    from segue.errors import SegueError
    from segue.retrain.loop import RetrainAborted

    job = _job(flow, flow.state)
    try:
        # The lock spans one Metaflow step (each is a process); `promote` re-checks that
        # production is the version the gate compared with, which covers the gaps between them.
        with job.locked():
            for name in steps:
                if job.state.get("stop"):
                    break
                job.run_step(name)
    except RetrainAborted as e:  # an expected refusal: the reason alone (the flow's flag takes a value)
        reason = str(e).removeprefix("retrain aborted: ").replace("pass --force ", "pass --force true ")
        raise RetrainStopped(reason, "Retrain aborted") from None
    except SegueError as e:  # bad input: one message, as `segue retrain` prints it
        raise RetrainStopped(str(e)) from None
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
        from segue.retrain.loop import outcome

        s = self.state
        if s.get("stop"):
            print(f"retrain: {s['stop']}")
            return
        verdict, detail = outcome(s)  # the version production serves, not the refused candidate
        print(f"retrain: {verdict}: {detail}; decision {s.get('decision', {}).get('reasons')}")


if __name__ == "__main__":
    RetrainFlow()
