"""prod2vec, done properly: tune gensim Word2Vec over playlists, test the best once, show a card.

The Metaflow recsys tutorial's use case written with segue's API, as an example of a flow of your
own. Playlists (or any sequences) come from a segue store, read through DuckDB; each trial is
segue's item2vec family (gensim Word2Vec, items as words) fitted with one combination of window,
vector size, negatives, min_count and epochs, and scored with segue's harness (HitRate@K on the
validation part, full ranking). The best combination is refitted and evaluated on the test part
once, beside the defaults, with bootstrap CIs.

    segue data build mpd mpd.slice.0-999.json -o mpd.duckdb -s random_sequence
    python flows/prod2vec.py run --store mpd.duckdb --max-workers 4
    python flows/prod2vec.py card view best      # or `card get` to save the HTML

Options: --split (default random), --protocol (playlist_continuation; leave_last_out for user
histories), --k (HitRate@K, default 10), --trials (random draws of the grid below, default 12).
The Metaflow user is METAFLOW_USER, else the login name ('root' becomes 'segue'), as for
`segue tune`: the flow runs without USERNAME set (containers, cron).
"""

from segue.flows.metaflow_user import name_metaflow_user

name_metaflow_user()  # before Metaflow is imported: it reads the user name then

from metaflow import FlowSpec, IncludeFile, Parameter, card, current, resources, step  # noqa: E402
from metaflow.exception import MetaflowException  # noqa: E402


class Prod2VecStopped(MetaflowException):
    """A bad option, or no trial finished: Metaflow prints the headline and the message alone
    (any other exception is an "Internal error" with a traceback)."""

    headline = "prod2vec stopped"

# The search space, in the same TOML `segue tune` reads.
SPACE = """
family = "item2vec"
store = "(included)"
split = "{split}"
protocol = "{protocol}"
metric = "hr@{k}"
ks = [{k}, 100]
strategy = "random"
seed = 0
[budget]
trials = {trials}
[base]
workers = 1
[params.window]
choices = [2, 3, 5, 10]
[params.vector_size]
choices = [32, 64, 128]
[params.negative]
choices = [5, 10, 20]
[params.min_count]
choices = [1, 2, 5]
[params.epochs]
choices = [10, 20, 40]
"""


class Prod2VecFlow(FlowSpec):
    """Tune Word2Vec item embeddings over a store's sequences; test the best once."""

    store = IncludeFile("store", is_text=False, help="A segue store (.duckdb).")
    split = Parameter("split", default="random", help="Split of the store.")
    protocol = Parameter("protocol", default="playlist_continuation", help="segue evaluation protocol.")
    k = Parameter("k", type=int, default=10, help="HitRate@K is the validation metric.")
    trials = Parameter("trials", type=int, default=12, help="Combinations tried.")

    @resources(cpu=1, memory=4096)
    @step
    def start(self):
        """Read the playlists through DuckDB, pack the split once, draw the combinations."""
        from segue.tuning.snapshot import opened_snapshot, snapshot_split
        from segue.tuning.space import SearchSpace, random_configs

        # checked before any trial: --k 0 failed every trial, and the run still ended "Done!"
        for option, value in (("--k", self.k), ("--trials", self.trials)):
            if value < 1:
                raise Prod2VecStopped(f"{option} is {value} (expected a positive integer)")
        self.space_text = SPACE.format(split=self.split, protocol=self.protocol, k=self.k, trials=self.trials)
        space = SearchSpace.parse(self.space_text, source="prod2vec's search space")
        self.split_blob, self.split_info = snapshot_split(self.store, space.split, space.protocol)
        with opened_snapshot(self.split_blob) as store:  # the store is DuckDB: plain SQL works
            self.sequences = store.con.execute(
                "SELECT count(*), avg(n), max(n) FROM (SELECT seq_id, count(*) AS n FROM events GROUP BY seq_id)"
            ).fetchone()
        self.proposals = [{"number": i, "params": p} for i, p in enumerate(random_configs(space))]
        self.next(self.trial, foreach="proposals")

    @resources(cpu=1, memory=4096)
    @step
    def trial(self):
        """Fit Word2Vec with one combination; HitRate@K on the validation part."""
        from segue.data.arrays import SplitData
        from segue.tuning.snapshot import opened_snapshot
        from segue.tuning.space import SearchSpace
        from segue.tuning.trial import ValidationOnly, run_trial

        space = SearchSpace.parse(self.space_text)
        with opened_snapshot(self.split_blob) as store:
            data = ValidationOnly.of(SplitData.load(store, space.split))  # the test part stays shut
            self.record = run_trial(space, data, self.input["params"], number=self.input["number"])
        self.next(self.join)

    @resources(cpu=1, memory=2048)
    @step
    def join(self, inputs):
        """Every trial's record; the best by HitRate@K on validation."""
        from segue.tuning.trial import best_record

        self.merge_artifacts(inputs, exclude=["record"])
        self.records = sorted((i.record for i in inputs), key=lambda r: r["number"])
        self.best_record = best_record(self.records)
        self.next(self.best)

    @card(type="blank", id="prod2vec")
    @resources(cpu=1, memory=4096)
    @step
    def best(self):
        """Refit the best and the defaults, evaluate both on the test part once; the card."""
        from metaflow.cards import Markdown

        from segue.tuning.card import card_components
        from segue.tuning.final import test_best
        from segue.tuning.snapshot import opened_snapshot
        from segue.tuning.space import SearchSpace

        space = SearchSpace.parse(self.space_text)
        self.test = None
        self.best_toml = ""
        if self.best_record is not None:
            with opened_snapshot(self.split_blob) as store:
                out = test_best(space, store, self.best_record["params"])
            self.test, self.best_toml, self.best_model_tar = out["test"], out["best_toml"], out["model_tar"]
        n, mean, longest = self.sequences
        current.card.append(Markdown(f"**{n} sequences** in the store (mean length {mean:.1f}, longest {longest})"))
        meta = {"store": f"checksum {self.split_info['checksum'][:12]}"}
        for component in card_components(space, self.records, self.best_record, self.best_toml, self.test, meta):
            current.card.append(component)
        self.next(self.end)

    @resources(cpu=1, memory=1024)
    @step
    def end(self):
        """Print the outcome; no finished trial fails the run (the card of `best` shows each error)."""
        from segue.tuning.trial import no_trial_finished

        failure = no_trial_finished(self.records)
        if failure is not None:
            raise Prod2VecStopped(failure)
        if self.test:
            for model, per in self.test["intervals"].items():
                metric = self.test["columns"][0]
                print(f"{model}: test {metric} {per[metric]['mean']:.4f} [{per[metric]['low']:.4f}, {per[metric]['high']:.4f}]")


if __name__ == "__main__":
    Prod2VecFlow()
