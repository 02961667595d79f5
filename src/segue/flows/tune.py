"""The tuning flow: `segue tune` runs it (locally by default); it also runs by hand or remotely.

    start  -> unpack the search space, pack the split once (store + compiled train/valid arrays)
              into the datastore, read earlier rounds' trial records, propose this round's configs
    trial  -> foreach config: fit on the training part, score the validation part with the
              harness; a trial that raises is recorded with its error (the flow goes on)
    join   -> every trial's record (config, metrics, cost), this round's and the earlier ones'
    best   -> after the last round only: refit the best config and the defaults, evaluate both
              on the test part once; the best model folder and the report become artifacts;
              the card (trials, plots, best TOML, test CIs, cost)
    end

TPE runs in rounds, one flow run per round (ask N in `start`, run N in parallel as the foreach,
tell N by the next run reading this run's `records`): Metaflow graphs have no loops, and a run per
round keeps each round resumable on its own. Grid and random search are one round.

By hand (what `segue tune` does; see `segue tune --help` and the README):
    METAFLOW_DATASTORE_SYSROOT_LOCAL=tune-runs USERNAME=me python -m segue.flows.tune run \\
        --space space.toml --store stores/ml100k.duckdb --max-workers 4
On Kubernetes or AWS Batch, with an S3 datastore (segue installed in the image):
    python -m segue.flows.tune --datastore s3 run --with kubernetes --space ... --store ...
    python -m segue.flows.tune --datastore s3 run --with batch --space ... --store ...
"""

from __future__ import annotations

from segue.flows.metaflow_user import name_metaflow_user

name_metaflow_user()  # before Metaflow reads its settings: run by hand as root or in a container

from metaflow import FlowSpec, IncludeFile, Parameter, card, current, resources, step  # noqa: E402


class TuneFlow(FlowSpec):
    """Tune one segue family's hyper-parameters on one split (see the module docstring)."""

    space = IncludeFile("space", is_text=True, help="The search-space TOML file.")
    store = IncludeFile("store", is_text=False, help="The store file (.duckdb); copied into the datastore.")
    round_index = Parameter("round", type=int, default=0, help="Round of a TPE search (0 = the first).")
    previous = Parameter("previous", default="", help="Run id of the previous round (its records are told to TPE).")
    final = Parameter("final", type=bool, default=True, help="Test the best config after this round.")
    deadline = Parameter("deadline", type=float, default=0.0, help="Epoch seconds after which no trial starts (0: none).")
    n_boot = Parameter("n_boot", type=int, default=1000, help="Bootstrap resamples of the test CIs.")

    @resources(cpu=1, memory=4096)
    @step
    def start(self):
        """Pack the split once into the datastore; propose this round's configs."""
        from segue.tuning.snapshot import snapshot_split
        from segue.tuning.space import SearchSpace, check_space
        from segue.tuning.study import propose

        space = SearchSpace.parse(self.space, source="--space")
        check_space(space)
        self.split_blob, self.split_info = snapshot_split(self.store, space.split, space.protocol)
        self.history = previous_records(current.flow_name, self.previous)
        configs = propose(space, self.history, self.round_index)
        if not configs:
            raise ValueError("no trial left to run in this round (the budget is spent)")
        first = len(self.history)
        self.proposals = [{"number": first + i, "params": p} for i, p in enumerate(configs)]
        self.next(self.trial, foreach="proposals")

    @resources(cpu=1, memory=8192)
    @step
    def trial(self):
        """Fit one config on the training part and score the validation part (errors are recorded)."""
        from segue.data.arrays import SplitData
        from segue.tuning.snapshot import opened_snapshot
        from segue.tuning.space import SearchSpace
        from segue.tuning.study import median_pruner
        from segue.tuning.trial import ValidationOnly, run_trial

        space = SearchSpace.parse(self.space)
        with opened_snapshot(self.split_blob) as store:
            data = ValidationOnly.of(SplitData.load(store, space.split))
            self.record = run_trial(
                space,
                data,
                self.input["params"],
                number=self.input["number"],
                round_index=self.round_index,
                report=median_pruner(space, self.history),
                deadline=self.deadline or None,
            )
        self.next(self.join)

    @resources(cpu=1, memory=2048)
    @step
    def join(self, inputs):
        """Gather every trial's record, earlier rounds' included."""
        self.merge_artifacts(inputs, exclude=["record"])
        self.records = sorted(self.history + [i.record for i in inputs], key=lambda r: r["number"])
        self.next(self.best)

    @card(type="blank", id="tune")
    @resources(cpu=1, memory=8192)
    @step
    def best(self):
        """After the last round: test the best config beside the defaults, once; render the card."""
        from segue.tuning.card import card_components, render_page
        from segue.tuning.final import test_best
        from segue.tuning.snapshot import opened_snapshot
        from segue.tuning.space import SearchSpace, family_config
        from segue.tuning.trial import best_record

        space = SearchSpace.parse(self.space)
        self.best_record = best_record(self.records)
        self.test = None
        self.test_evaluations = []  # (step, part) of every evaluation on the test part: one at most
        self.report_tar = self.best_model_tar = None
        self.best_toml = ""
        if self.best_record is not None:
            self.best_toml = family_config(space, self.best_record["params"]).to_toml()
        if self.final and self.best_record is not None:
            with opened_snapshot(self.split_blob) as store:
                out = test_best(space, store, self.best_record["params"], n_boot=self.n_boot)
            self.test, self.best_toml = out["test"], out["best_toml"]
            self.report_tar, self.best_model_tar = out["report_tar"], out["model_tar"]
            self.test_evaluations.append(
                {"step": current.step_name, "trial": self.best_record["number"], "part": "test", "models": list(self.test["intervals"])}
            )
        meta = {"store": f"{space.store} (content checksum {self.split_info['checksum'][:12]})", "rounds": self.round_index + 1}
        for component in card_components(space, self.records, self.best_record, self.best_toml, self.test, meta):
            current.card.append(component)
        self.page = render_page(space, self.records, self.best_record, self.best_toml, self.test, meta)
        self.next(self.end)

    @resources(cpu=1, memory=1024)
    @step
    def end(self):
        """Nothing left: every result is an artifact of `best`."""


def previous_records(flow_name: str, run_id: str) -> list[dict]:
    """The trial records of an earlier round's run (its `join` step), read through the client."""
    if not run_id:
        return []
    from metaflow import Step, namespace

    namespace(None)  # the run id names it; any user's earlier round may be continued
    return list(Step(f"{flow_name}/{run_id}/join").task.data.records)


if __name__ == "__main__":
    TuneFlow()
