"""The series job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate


class SeriesError(BabelgridError, ValueError):
    """The stores cannot be read as one series: too few, other audio, a folder of another store, bad options."""


@dataclasses.dataclass(frozen=True)
class SeriesConfig:
    """A series of layer stores of the same audio, one per training step or model size, in order.

    stores: the series (its rows, in this order); reference: the store each layer's CKA is taken against (the final
    model; default: the last store); values: each store's place on the x axis (default: the training step its store
    records, else 0, 1, 2, ...); retrieval / probes: a retrieval or probes output folder per store to read instead of
    computing from the store ('' for one = compute it); centred: a retrieval --baseline folder per store whose
    baseline_delta.csv gives the language-mean-removed R@1 delta.
    """

    run: RunOptions = RunOptions()
    stores: tuple[str, ...] = option(
        (), "comma-separated layer stores of the same audio, one per step or size, in series order", parse="list",
        required=True, reads=True,
    )  # fmt: skip
    names: tuple[str, ...] | None = option(None, "a name per store (default: each store's model name)", parse="list")
    values: tuple[float, ...] | None = option(
        None, "each store's value on the x axis: its step, its size (default: the training step the store records, "
        "else 0, 1, 2, ...)", parse="floats",
    )  # fmt: skip
    axis: str | None = option(None, "what the values are, for the figures (default: 'training step' or 'model')")
    reference: str | None = option(
        None, "the layer store of the final model, which CKA is taken against (default: the last of --stores)",
        reads=True,
    )  # fmt: skip
    retrieval: tuple[str, ...] | None = option(
        None, "a jobs.retrieval --out folder per store to read R@1 from ('' for one = cosine of mean-pooled states, "
        "computed)", parse="cells", reads=True,
    )  # fmt: skip
    retrieval_measure: str = option("mean", "measure read from the --retrieval and --centred folders")
    centred: tuple[str, ...] | None = option(
        None, "a jobs.retrieval --baseline output per store (the language-mean-removed similarity against the raw one: "
        "baseline_delta.csv) to read the R@1 delta from ('' for one = computed from mean-pooled states)",
        parse="cells", reads=True,
    )  # fmt: skip
    probes: tuple[str, ...] | None = option(
        None, "a jobs.probes --out folder per store to read lid.csv from ('' for one = the probe run here)",
        parse="cells", reads=True,
    )  # fmt: skip
    langs: tuple[str, ...] | None = option(None, "languages every store holds (default: all they share)", parse="list")
    folds: int = option(5, "language-ID probe folds, split by utterance id (as jobs.probes --folds)", minimum=3)
    seed: int = option(0, "seed of the language-ID folds")

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise SeriesError("series needs an output folder: run.out (--out)")
        if len(self.stores) < 2:
            raise SeriesError(f"a series needs 2 or more layer stores, got {len(self.stores)}")
        for what, given in (("names", self.names), ("values", self.values), ("retrieval", self.retrieval),
                            ("centred", self.centred), ("probes", self.probes)):  # fmt: skip
            if given is not None and len(given) != len(self.stores):
                raise SeriesError(f"--{what} needs one entry per store ({len(self.stores)}), got {len(given)}")
        if self.names is not None and len(set(self.names)) != len(self.names):
            raise SeriesError(f"--names must differ from each other, got {', '.join(self.names)}")
