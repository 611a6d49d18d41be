"""The finetune job's library side (``jobs/finetune.py``): data, split, loop, evaluation, checkpoints, export.

Output folder ``OUT`` (local):

- ``config.json``: the run's hyperparameters and ``padding`` (the model's ``Trainer.padding``: how the frames past an
  utterance are filled, Whisper's ``silence_fill_approximate``); a resume with different ones is refused, naming
  them.
- ``split.csv``: ``id, split`` (train | held_out) of every id used, from the seeded split.
- ``checkpoints/<step>/``: orbax checkpoints of ``{"step", "params", "opt_state"}`` (trainable parameters only)
  with a sha256 manifest, written to a temporary folder and renamed when complete, so a SIGKILL leaves the last
  complete one; a rerun verifies it, resumes from the newest good one (falling back past a damaged one, with a
  warning) and, with the seeded batch order, ends bitwise where an uninterrupted run ends
  (``engine.pipelines.stages.checkpoints``).
- ``metrics.csv``: ``step, split, source_lang, target_lang, task, metric, value, n`` (training loss: split=train,
  metric=loss, n = target tokens; evaluation: split=held_out, metric bleu|chrf, n = utterances).
- ``model/``: the fine-tuned model in the layout its family's loader reads (``Trainer.export``; Whisper's: Hugging
  Face's), unless ``export`` is off; whether it can be written is checked before training
  (``engine.pipelines.finetune.export``).
- ``loss.png``, ``bleu.png`` and the before/after table printed.

Evaluation: greedy decoding (``Trainer.greedy``) of the held-out ids of every evaluation language ``X`` (padded as in
``engine.pipelines.finetune.data``) with the training prompt (``X -> Y``, transfer) and with the prompt of language
``en`` and task translate (``X -> en``, forgetting; Whisper's ``<|en|><|translate|>``), scored with
``engine.text.metrics`` (sacrebleu BLEU, chrF) against the target texts and the store's English transcriptions; before
training (step 0) and after (the last step).

The model comes from the registry: the store's family's ``trainer`` loader (``engine.models.interface.Trainer``); a
store whose family has none is refused before anything is written.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from engine import captions
from engine.axes import DATA
from engine.data.sources import dataset_translations
from engine.dtypes import DTYPES
from engine.languages import is_english, language_key
from engine.models.common.parallel import data_mesh
from engine.models.family import FAMILIES, refuse_without_head
from engine.models.interface import DECODER
from engine.pipelines.finetune import data as D
from engine.pipelines.finetune import ewc as E
from engine.pipelines.finetune import step as S
from engine.pipelines.finetune.config import FinetuneConfig, local_path
from engine.pipelines.finetune.export import MODEL, check_export
from engine.pipelines.finetune.report import before_after_table, write_figures
from engine.pipelines.stages import checkpoints as C
from engine.runtime.runs import RunSummary, job_lease
from engine.stores.integrity import read_output, repair_hint, write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.provenance import FINETUNED_FROM, identity, not_the_stores_model
from engine.stores.reader import open_store
from engine.stores.records import csv_bytes
from engine.text import metrics as text_metrics

log = logging.getLogger(__name__)
METRIC_FIELDS = ("step", "split", "source_lang", "target_lang", "task", "metric", "value", "n")
METRICS = "metrics.csv"  # the training loss and held-out scores, rewritten whole at every checkpoint


@dataclasses.dataclass
class FinetuneSummary(RunSummary):
    steps_done: int = 0
    resumed_from: int = 0
    n_train: int = 0
    n_held_out: int = 0
    table: list = dataclasses.field(default_factory=list)
    padding: str = ""  # the model's Trainer.padding, and the same in words
    padding_note: str = ""
    written: list = dataclasses.field(default_factory=list)  # names under OUT that this run wrote, in order

    def report(self) -> str:
        lines = [
            f"finetune: {self.steps_done} steps (resumed from {self.resumed_from}), {self.n_train} train / "
            f"{self.n_held_out} held-out recordings, {self.seconds:.0f} s",
            f"padding: {self.padding} ({self.padding_note})",
        ]
        return "\n".join(lines + self.table + self.skip_lines())

    def wrote(self, out) -> str:
        """The job's closing line: what this run wrote under ``out``, and only that (``--noexport``: no model/)."""
        return f"wrote {out}/{', '.join(self.written)}"


def _check_resume(out: pathlib.Path, config: FinetuneConfig, padding: str, store: dict) -> None:
    """Refuses a run into ``out`` whose ``config.json`` records other hyperparameters, or another layer store
    (``store``: its ``provenance.identity``, so one encoded again at the same path is another)."""
    path = out / "config.json"
    mine = {**config.hyperparameters(padding), "layer_store_identity": store}
    if path.is_file():
        stored = json.loads(path.read_text())
        differ = sorted(k for k in set(stored) | set(mine) if not _same(k, stored, mine))
        if differ:
            what = ", ".join(f"{k} (was {stored.get(k)!r}, now {mine.get(k)!r})" for k in differ)
            raise D.FinetuneError(f"'{out}' holds a run with other hyperparameters: {what}; use another --out "
                                  "or the same flags to resume")  # fmt: skip
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(mine, indent=2))


def _same(key: str, stored: dict, mine: dict) -> bool:
    """Whether a resume's ``mine[key]`` is the run's ``stored[key]``: paths by the places they name (a task requeued
    in another working folder names the store otherwise); the model, whose weights ``_prepare`` found to be the
    store's, by the store's identity, which a run recorded before it lacks (then: by path, as it was)."""
    if key == "layer_store_identity" and key not in stored:
        return True
    if key == "model" and "layer_store_identity" in stored:
        return True
    if key in ("store", "model"):
        return local_path(stored.get(key)) == local_path(mine.get(key))
    return stored.get(key) == mine.get(key)


def _targets(config, reader) -> dict[str, str]:
    if config.target_dataset:
        return _dataset_targets(config)
    if config.targets:
        targets = D.read_targets_tsv(pathlib.Path(config.targets).read_bytes(), config.targets)
    else:
        targets = D.store_texts(reader, config.target_lang)
    if not targets:
        raise D.FinetuneError(f"target language {config.target_lang!r} has no texts"
                              + ("" if config.targets else " in the store; pass --targets id<TAB>text"))  # fmt: skip
    return targets


def _dataset_targets(config) -> dict[str, str]:
    """The translations of ``--target_dataset`` by id, checked to be in ``--target_lang`` (CoVoST's zh-CN is zh)."""
    lang, targets = dataset_translations(config.target_dataset)
    key = language_key(lang)
    if key != language_key(config.target_lang):
        raise D.FinetuneError(f"--target_dataset {config.target_dataset!r} translates into {lang!r} (language "
                              f"{key!r}), not --target_lang {config.target_lang!r}: pass "
                              f"--target_lang {key}")  # fmt: skip
    if not targets:
        raise D.FinetuneError(f"--target_dataset {config.target_dataset!r} has no translations")
    return targets


def _english(reader) -> str | None:
    return next((lang for lang in reader.languages() if is_english(lang)), None)


def _read_metrics(out: pathlib.Path, upto: int) -> list[dict]:
    """The rows of ``out/metrics.csv`` up to step ``upto``, its digest checked; none when it is not there yet."""
    _, kv = open_kvstore(str(out))
    data = read_output(kv, METRICS, str(out), fix=repair_hint(str(out), "finetune"))
    if data is None:
        return []
    return [r for r in csv.DictReader(io.StringIO(data.decode())) if int(r["step"]) <= upto]


def _write_metrics(out: pathlib.Path, rows: list[dict]) -> None:
    """``out/metrics.csv`` and its digest (``write_outputs``), rewritten whole."""
    text = io.StringIO()
    w = csv.DictWriter(text, METRIC_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_outputs(open_kvstore(str(out))[1], {METRICS: text.getvalue().encode()}, str(out))


def evaluate(trainer, pairs: D.Pairs, refs: list[str], lang: str, task: str, batch_size: int) -> tuple[float, float]:
    """(BLEU, chrF) of greedy decoding ``pairs.xa`` with the prompt of ``lang`` (a ``language_key``) and ``task``
    against ``refs``."""
    prompt = trainer.prompt(task, trainer.language(lang))
    hyps = []
    for i in range(0, len(pairs.ids), batch_size):
        hyps += trainer.greedy(pairs.xa[i : i + batch_size], pairs.valid[i : i + batch_size], prompt, 128)
    norm = text_metrics.normalizer_for(lang)
    r, h = [norm(x) for x in refs], [norm(x) for x in hyps]
    return text_metrics.bleu(r, h, lang), text_metrics.chrf(r, h)


def run_finetune(config: FinetuneConfig, model=None) -> FinetuneSummary:
    """Trains, evaluates and writes (module docstring), holding the output folder's writer lease; a store whose model
    has no decoder, or one finetune cannot train, is refused before it. ``model``: the store's model already loaded
    (what its family's trainer loader takes as a source), instead of loading ``config.model``."""
    reader = open_store(config.store)
    refuse_without_head(
        "finetune", DECODER, None if model is not None else config.model, reader.info,
        "finetune trains a model's text decoder on its own encoder's states: encode the data with such a model first",
    )  # fmt: skip
    if FAMILIES[reader.info.family].trainer is None:
        trained = ", ".join(name for name, f in FAMILIES.items() if f.trainer is not None)
        raise D.FinetuneError(
            f"finetune needs a decoder it can train; the layer store was written by {reader.info.model_name!r}, a "
            f"{reader.info.family} model, whose decoder finetune does not train (it trains those of {trained}). "
            "Encode the data with one of those models first"
        )
    trainer, targets = _prepare(config, model, reader)
    with job_lease(config, "finetune"):
        return _finetune(config, reader, trainer, targets)


def _prepare(config: FinetuneConfig, model, reader):
    """(the trainer, the target texts by id), and every refusal the store's tables, the model and the machine can
    give before the lease: dimensions, targets, what can be trained on and held out, the batch against the devices,
    the --trainable groups, EWC's English texts, an export the model cannot make. So a corrected rerun into the same
    folder is not refused as another run's, and nothing is made for a run that cannot go."""
    D.top_layer(reader)
    trainer = FAMILIES[reader.info.family].trainer(model if model is not None else config.model)
    if trainer.store_dims != reader.info.dims.to_dict():
        raise D.FinetuneError(f"--model has dims {trainer.store_dims}, the store's model "
                              f"{reader.info.dims.to_dict()}; pass the "
                              "store's model with --model")  # fmt: skip
    if trainer.sha256 != reader.info.checkpoint_sha256:  # same shape, other weights: its states are not these
        raise D.FinetuneError(not_the_stores_model(reader.info, trainer.name, trainer.sha256, config.model))
    if config.export and trainer.export_problem() is not None:
        raise D.FinetuneError(f"{trainer.export_problem()}, or pass --noexport to train without exporting")
    trainer.language(config.target_lang)  # LanguageError for a target language the model has no prompt for
    targets = _targets(config, reader)
    usable = {u for lang in config.source_langs
              for ids, keep in [D.usable(reader, lang, targets, trainer.memory_frames, RunSummary())]
              for u in (ids[i] for i in keep)}  # fmt: skip
    D.split_ids(usable, config.held_out, config.seed)
    n_dev = data_mesh().devices.size
    if config.batch_size % n_dev:
        raise D.FinetuneError(f"--batch_size {config.batch_size} must be a multiple of the {n_dev} devices")
    try:
        S.trainable_names(trainer.split()[1], config.trainable, trainer.groups)
    except ValueError as e:
        raise D.FinetuneError(str(e)) from None
    english = _english(reader)
    if config.ewc_lambda > 0 and not set(D.store_texts(reader, english) if english else ()) & usable:
        raise D.FinetuneError("--ewc_lambda: EWC needs source recordings with an English text in the store (its "
                              "Fisher is of X -> en); no usable id has one: pass --ewc_lambda 0")  # fmt: skip
    return trainer, targets


def _finetune(config: FinetuneConfig, reader, trainer, targets) -> FinetuneSummary:
    t0 = time.time()
    summary = FinetuneSummary()
    out = pathlib.Path(config.run.out)
    summary.padding, summary.padding_note = trainer.padding, trainer.padding_note
    if config.export:
        check_export(trainer, out)  # under the lease, which made the folder it tries a file in
    y = language_key(config.target_lang)  # metrics.csv's target_lang, and how its texts are scored
    _check_resume(out, config, trainer.padding, identity(reader.manifest))
    english = _english(reader)
    en_texts = D.store_texts(reader, english) if english else {}

    sources = {lang: D.load_pairs(reader, lang, targets, trainer, summary) for lang in config.source_langs}
    held = D.split_ids([u for p in sources.values() for u in p.ids], config.held_out, config.seed)
    split_rows = [(u, "held_out" if u in held else "train") for u in sorted({u for p in sources.values()
                                                                               for u in p.ids})]  # fmt: skip
    write_outputs(open_kvstore(str(out))[1], {"split.csv": csv_bytes(("id", "split"), split_rows)}, str(out))
    train = [p.take(np.array([u not in held for u in p.ids])) for p in sources.values()]
    xa = np.concatenate([p.xa for p in train])
    valid = np.concatenate([p.valid for p in train])
    ids = [u for p in train for u in p.ids]
    prompt = trainer.prompt(config.task_token, trainer.language(config.target_lang))
    max_text = trainer.n_text_ctx - len(prompt) - 1
    texts = []
    for p in train:
        for uid, t in zip(p.ids, p.texts, strict=True):
            enc = trainer.tokens(t)
            if len(enc) > max_text:
                summary.skip("target_truncated", p.lang, uid)
            texts.append(enc[:max_text])
    summary.n_train = len(ids)
    summary.n_held_out = sum(len(p.ids) - len(t.ids) for p, t in zip(sources.values(), train, strict=True))

    # evaluation sets: held-out ids of each evaluation language that has them
    eval_langs = config.eval_langs or tuple(reader.languages())
    evals = {}
    for lang in eval_langs:
        try:
            pairs = D.load_pairs(reader, lang, {u: targets[u] for u in held if u in targets}, trainer, RunSummary())
        except D.FinetuneError:
            continue
        if config.max_eval:
            pairs = pairs.take(np.arange(len(pairs.ids)) < config.max_eval)
        evals[lang] = pairs

    def eval_rows(model, step):
        rows = []
        for lang, pairs in evals.items():
            for task, target, refs in (
                (config.task_token, y, list(pairs.texts)),
                ("translate", "en", [en_texts.get(u) for u in pairs.ids]),
            ):
                keep = np.array([r is not None for r in refs])
                if not keep.any():
                    continue
                sub = pairs.take(keep)
                b, c = evaluate(model, sub, [r for r in refs if r is not None], target, task, config.batch_size)
                for metric, value in (("bleu", b), ("chrf", c)):
                    rows.append(dict(step=step, split="held_out", source_lang=lang, target_lang=target, task=task,
                                     metric=metric, value=float(value), n=len(sub.ids)))  # fmt: skip
        return rows

    # model, state, sharding
    mesh = data_mesh()  # its devices divide the batch (_prepare)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA))
    graph, params = trainer.split()
    names = S.trainable_names(params, config.trainable, trainer.groups)
    trainable, frozen = S.partition(params, names)
    optim = config.optim()
    compute = jnp.dtype(DTYPES[config.compute_dtype])
    frozen = jax.device_put(frozen, replicated)
    ewc = None
    if config.ewc_lambda > 0:
        ewc = jax.device_put(E.fisher_from_pairs(trainer, graph, trainable, frozen, list(sources.values()),
                                                 en_texts, held, config.ewc_examples), replicated)  # fmt: skip

    checkpoints = out / "checkpoints"
    state = S.init_state(trainable, optim)
    start, restored = C.restore(checkpoints, state)
    state = state if restored is None else restored
    summary.resumed_from = start
    state = jax.device_put(state, replicated)
    rows = _read_metrics(out, start)
    if not any(r["split"] == "held_out" and int(r["step"]) == 0 for r in rows):
        rows = eval_rows(trainer, 0) + rows
        _write_metrics(out, rows)

    step_fn = S.jit_train_step(graph, optim, compute, config.ewc_lambda)
    order = D.batch_order(np.array([len(t) for t in texts]), config.batch_size, config.steps, config.seed)
    source_label = "+".join(config.source_langs)
    for s in range(start, config.steps):
        idx = order[s]
        longest = max(len(texts[i]) for i in idx) + len(prompt)
        length = -(-longest // 8) * 8  # a few padded shapes, not one compile per length
        batch = S.make_batch(prompt, [texts[i] for i in idx], trainer.eot, min(length, trainer.n_text_ctx))
        batch["xa"], batch["valid"] = xa[idx], valid[idx]
        batch = jax.device_put(batch, sharded)
        state, m = step_fn(state, frozen, batch, ewc)
        step = s + 1
        if step % config.log_every == 0 or step == config.steps:
            rows.append(dict(step=step, split="train", source_lang=source_label, target_lang=y, task=config.task_token,
                             metric="loss", value=float(m["loss"]), n=int(m["tokens"])))  # fmt: skip
            if config.ewc_lambda > 0:
                rows.append({**rows[-1], "metric": "ewc_penalty", "value": float(m["ewc"])})
            log.info("step %d loss %.4f", step, float(m["loss"]))
        if step % config.checkpoint_every == 0 or step == config.steps:
            _write_metrics(out, rows)  # the metrics up to a step are on disk before its checkpoint
            C.save(checkpoints, step, state)
    summary.steps_done = config.steps - start

    tuned = trainer.tuned(state["params"])
    if not any(r["split"] == "held_out" and int(r["step"]) == config.steps for r in rows):
        rows += eval_rows(tuned, config.steps)
        _write_metrics(out, rows)
    summary.written += ["config.json", "split.csv", "metrics.csv", "checkpoints/"]
    if config.export:
        tuned.export(out / MODEL)
        base = {"model_name": trainer.name, "checkpoint_sha256": trainer.sha256, "trained": "the text decoder",
                "layer_store": reader.url}  # fmt: skip
        (out / MODEL / FINETUNED_FROM).write_text(json.dumps(base, indent=1))  # what the store checks name
        summary.written.append(f"{MODEL}/")
    summary.table = before_after_table(rows, config.steps)
    source = captions.source_line(trainer.name, reader.manifest.get("created"))
    summary.written += write_figures(rows, out, config.steps, source)
    summary.seconds = time.time() - t0
    return summary
