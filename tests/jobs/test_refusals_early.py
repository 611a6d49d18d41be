"""Every refusal before the work (issue 87 item 3): a setting that the inputs' listings, tables or small files can
show to be hopeless is refused before the first pass, in one line, with nothing counted, computed or written.

Each job gets a hopeless setting on a small input and must refuse it: the error's message is one line, the output
folder does not exist afterwards, and where a job would load a model or compute first, that step is replaced by one
that fails the test, so a refusal that came after it could not pass. Most refusals are called in this process (the
jobs' ``run_*``, as the user's flags reach them); one runs through the command line to show the line a user sees.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.runtime.options import configure
from tests.jobs.conftest import REPO, job_env
from tests.jobs.test_compare import N
from tests.jobs.test_compare import make_store as make_compare_store
from tests.jobs.test_typology import planted  # noqa: F401  (the similarity store the typology refusals read)
from tests.jobs.workers import write_clips
from tests.waits import patient

SECONDS = 20.0  # a refusal's bound on a quiet machine (patient() scales it with the load): no pass runs before it


def not_run(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} ran before the refusal")

    return fail


def refused(error: type[Exception], match: str, call, out: pathlib.Path) -> str:
    """Calls ``call()``, which must raise ``error`` matching ``match`` within ``SECONDS`` (scaled), its message one
    line, and leave ``out`` unmade; returns the message."""
    started = time.monotonic()
    with pytest.raises(error, match=match) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message, message
    assert not out.exists(), sorted(str(p) for p in out.rglob("*"))
    assert time.monotonic() - started < patient(SECONDS)
    return message


# -- neurons ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_a_language(tmp_path_factory) -> pathlib.Path:
    """3 languages x 4 clips, ids utt0..utt3 shared across the languages (translations, as FLEURS's ids)."""
    root = tmp_path_factory.mktemp("refusal-clips")
    write_clips(root, ("de", "en", "es"), 4, seed=3)
    return root


def test_neurons_refuses_folds_its_evaluation_set_cannot_fill(four_a_language, tmp_path, monkeypatch):
    """The issue's case: 4 ids a language, the language-ID probe's 5 folds. It ran the counting pass and every
    intervention pass (4 minutes) before ``LidError``; now the listing refuses it, before the model loads."""
    from engine.pipelines.neurons import run as neurons_run
    from engine.pipelines.neurons.config import NeuronsConfig, NeuronsError

    monkeypatch.setattr(neurons_run, "load_encoder", not_run("the model's load (then the counting pass)"))
    out = tmp_path / "out"
    config = configure(NeuronsConfig, out=str(out), dataset=f"folder:{four_a_language}", intervene=("all",),
                       intervene_utterances=4)  # fmt: skip
    message = refused(NeuronsError, r"4 distinct utterance ids.* 5 folds", lambda: neurons_run.run_neurons(config), out)
    assert "--intervene_utterances 4" in message
    # a larger evaluation set cannot hold more ids than the dataset: the same refusal, naming the 4
    config = configure(NeuronsConfig, out=str(out), dataset=f"folder:{four_a_language}", intervene=("de",))
    refused(NeuronsError, "has 4 distinct utterance ids", lambda: neurons_run.run_neurons(config), out)


def test_neurons_refusal_is_one_line_on_the_command_line(four_a_language, tmp_path):
    """Through the flags, as the issue ran it: exit status 1, one line on stderr, no output folder."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "jobs.neurons", "--dataset", f"folder:{four_a_language}", "--out", str(out),
               "--intervene", "all", "--intervene_utterances", "4"]  # fmt: skip
    proc = subprocess.run(command, cwd=REPO, env=job_env(), capture_output=True, text=True, timeout=patient(120))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("neurons: ")]
    assert len(lines) == 1 and "NeuronsError" in lines[0] and "5 folds" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


# -- encode -----------------------------------------------------------------------------------------------------------


def test_encode_refuses_layers_the_model_lacks(four_a_language, tiny_model_dir, tmp_path):
    """--layers past the model's last: refused by the store's schema once the lease had made the output folder."""
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode
    from engine.stores.kv import StoreError

    out = tmp_path / "out"
    config = configure(EncodeConfig, out=str(out), model=str(tiny_model_dir), dataset=f"folder:{four_a_language}",
                       layers=(1, 9), progress=False)  # fmt: skip
    refused(StoreError, r"--layers \[9\] are not layers of .*\(0\.\.3", lambda: run_encode(config), out)


# -- probes -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_lang_store(tmp_path_factory) -> str:
    """compare's planted store: de and en, ids s0..s11 in both, 3 layers."""
    return make_compare_store(tmp_path_factory.mktemp("refusal-store") / "store", "planted", 50.0, list(range(N)))


def test_probes_refuses_folds_the_stores_ids_cannot_fill(two_lang_store, tmp_path, monkeypatch):
    from engine.pipelines.probes import run as probes_run
    from engine.pipelines.probes.config import ProbesConfig, ProbesError

    monkeypatch.setattr(probes_run, "read_blocks", not_run("a read of the store's states"))
    out = tmp_path / "out"
    config = configure(ProbesConfig, store=two_lang_store, out=str(out), folds=N + 1)
    refused(ProbesError, rf"{N + 1} folds by utterance id.* {N} distinct ids .*: lower --folds to {N}, ",
            lambda: probes_run.run_probes(config), out)  # fmt: skip
    config = configure(ProbesConfig, store=two_lang_store, out=str(out), langs=("de",))
    refused(ProbesError, "two or more languages", lambda: probes_run.run_probes(config), out)


def test_probes_refuses_word_probes_without_tokens(two_lang_store, tmp_path, monkeypatch):
    """samediff with one token a language, cca with the tokens of one utterance id: refused from the words."""
    from engine.pipelines.probes import run as probes_run
    from engine.pipelines.probes.config import ProbesConfig, ProbesError

    monkeypatch.setattr(probes_run, "read_blocks", not_run("a read of the store's states"))
    words = tmp_path / "words"
    for lang in ("de", "en"):
        (words / lang).mkdir(parents=True)
        table = {"utterance": [0], "id": ["s0"], "word": [" apple"], "start": [0.0], "end": [0.2], "recording": [0],
                 "word_index": [0], "probability": [1.0]}  # fmt: skip
        pq.write_table(pa.table(table), words / lang / "words.parquet")
    out = tmp_path / "out"
    for probe, match in (("samediff", "no language has two"), ("cca", "come from 1")):
        config = configure(ProbesConfig, store=two_lang_store, out=str(out), words=str(words), probes=(probe,))
        refused(ProbesError, match, lambda config=config: probes_run.run_probes(config), out)


# -- compare ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_lang_stores(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("refusal-compare")
    a = make_compare_store(root / "a", "model-a", 50.0, list(range(N)), langs=("de",))
    b = make_compare_store(root / "b", "model-b", 25.0, list(range(N)), seed=1, langs=("de",))
    return a, b


def test_compare_refuses_a_challenge_table_of_one_language(one_lang_stores, tmp_path, monkeypatch):
    from engine.pipelines.compare import run as compare_run
    from engine.pipelines.compare.config import CompareConfig, CompareError

    monkeypatch.setattr(compare_run, "_compare", not_run("the comparison"))
    challenge = tmp_path / "challenge"
    challenge.mkdir()
    out = tmp_path / "out"
    config = configure(CompareConfig, stores=one_lang_stores, out=str(out), challenge=str(challenge))
    refused(CompareError, r"challenge table .* two languages; the run has \['de'\]",
            lambda: compare_run.run_compare(config), out)  # fmt: skip


def test_compare_refuses_a_retrieval_folder_without_its_table(two_lang_store, tmp_path, monkeypatch):
    """A --retrieval folder was read after the lease and after the other stores' retrieval was computed."""
    from engine.pipelines.compare import run as compare_run
    from engine.pipelines.compare.config import CompareConfig, CompareError

    monkeypatch.setattr(compare_run, "_compare", not_run("the comparison"))
    empty = tmp_path / "retrieval"
    empty.mkdir()
    out = tmp_path / "out"
    config = configure(CompareConfig, stores=(two_lang_store, two_lang_store), names=("a", "b"), out=str(out),
                       retrieval=("", str(empty)))  # fmt: skip
    refused(CompareError, "has no retrieval.csv", lambda: compare_run.run_compare(config), out)


def test_compare_refuses_a_language_of_one_done_utterance(tmp_path, monkeypatch):
    """Every store is compared with itself, where a language of one done utterance was refused mid-run."""
    from engine.pipelines.compare import run as compare_run
    from engine.pipelines.compare.config import CompareConfig, CompareError

    monkeypatch.setattr(compare_run, "_compare", not_run("the comparison"))
    one = make_compare_store(tmp_path / "one", "model-one", 50.0, [0])
    out = tmp_path / "out"
    config = configure(CompareConfig, stores=(one,), out=str(out))
    refused(CompareError, r"one done utterance of \['de', 'en'\]", lambda: compare_run.run_compare(config), out)


# -- typology ---------------------------------------------------------------------------------------------------------


def test_typology_refuses_before_the_mantel_tests(planted, tmp_path, monkeypatch):  # noqa: F811
    """Too few languages URIEL knows, and --probes folders that cannot give a curve, were refused after every
    Mantel test, with the run's manifest written."""
    from engine.pipelines.typology import run as typology_run
    from engine.pipelines.typology.config import TypologyConfig, TypologyError

    monkeypatch.setattr(typology_run, "_typology", not_run("the typology tests"))
    sim, probes, _ = planted
    out = tmp_path / "out"

    def config(**kw):
        return configure(TypologyConfig, similarity=str(sim), out=str(out), permutations=99, **kw)

    refused(TypologyError, r"URIEL has 2 of the store's languages; a Mantel test needs 3\. Left out: xx",
            lambda: typology_run.run_typology(config(langs=("de", "en", "xx"))), out)  # fmt: skip
    refused(TypologyError, r"needs 3 or more languages; --langs leaves \['de', 'en'\]",  # not "the store has"
            lambda: typology_run.run_typology(config(langs=("de", "en"))), out)  # fmt: skip
    refused(TypologyError, "give one, for the similarity store's model",
            lambda: typology_run.run_typology(config(probes=(str(probes), str(probes)))), out)  # fmt: skip
    refused(TypologyError, "is not a probes output folder",
            lambda: typology_run.run_typology(config(probes=(str(sim),))), out)  # fmt: skip


# -- outliers ---------------------------------------------------------------------------------------------------------


def test_outliers_refuses_a_language_with_nothing_done(tmp_path, monkeypatch):
    """A language of no done utterance has no frame to measure: refused from the lengths, before a layer is read or
    the output folder made."""
    from engine.pipelines.outliers import run as outliers_run
    from engine.pipelines.outliers.config import OutliersConfig, OutliersError

    monkeypatch.setattr(outliers_run, "measure_layer", not_run("a layer's measurement"))
    store = make_compare_store(tmp_path / "store", "partial", 50.0, [0], skip=("en", 0))  # de: 1 done, en: none
    out = tmp_path / "out"
    config = configure(OutliersConfig, store=store, out=str(out), progress=False)
    refused(OutliersError, r"\['en'\] have no done utterance", lambda: outliers_run.run_outliers(config), out)


# -- retrieval --------------------------------------------------------------------------------------------------------


def test_retrieval_refuses_before_scoring_or_writing(planted, tmp_path, monkeypatch):  # noqa: F811
    """A --figure_layer the run does not score was refused after every matrix was read; a --baseline of another grid
    after retrieval.csv was written."""
    from engine.pipelines.retrieval import run as retrieval_run
    from engine.pipelines.retrieval.config import RetrievalConfig, RetrievalError
    from engine.stores.similarity import SimilarityStore, new_manifest

    monkeypatch.setattr(retrieval_run, "compute_scores", not_run("the scoring"))
    sim = str(planted[0])
    out = tmp_path / "out"
    config = configure(RetrievalConfig, similarity=sim, out=str(out), figure_layer=9)
    refused(RetrievalError, r"figure layer 9 is not scored", lambda: retrieval_run.run_retrieval(config), out)
    config = configure(RetrievalConfig, similarity=sim, out=str(out), langs=("de", "zz"), measures=("seqsim",))
    unknown = r"--langs: \['zz'\] not in the similarity store"
    refused(RetrievalError, unknown, lambda: retrieval_run.run_retrieval(config), out)
    other = tmp_path / "other"
    SimilarityStore.create_or_open(str(other), new_manifest(layer_store=str(tmp_path / "elsewhere"),
                                   model_name="planted", checkpoint_sha256="0" * 64, layers=(0, 1, 2)))  # fmt: skip
    config = configure(RetrievalConfig, similarity=sim, out=str(out), baseline=str(other))
    refused(RetrievalError, "computed from another layer_store", lambda: retrieval_run.run_retrieval(config), out)


# -- seqsim -----------------------------------------------------------------------------------------------------------


def test_seqsim_refuses_a_language_with_nothing_done(tmp_path, monkeypatch):
    """--allow_partial with a language of no done utterance: nothing of it to score (its --remove_language fit
    failed under the lease)."""
    from engine.pipelines.seqsim import run as seqsim_run
    from engine.pipelines.seqsim.config import SimilarityConfig

    monkeypatch.setattr(seqsim_run, "_similarity", not_run("the similarity pass"))
    store = make_compare_store(tmp_path / "store", "partial", 50.0, [0], skip=("en", 0))  # de: 1 done, en: none
    out = tmp_path / "out"
    config = configure(SimilarityConfig, store=store, out=str(out), measures=("mean",), allow_partial=True,
                       progress=False)  # fmt: skip
    refused(seqsim_run.SimilarityError, r"\['en'\] have no done utterance",
            lambda: seqsim_run.run_similarity(config), out)  # fmt: skip


# -- interp -----------------------------------------------------------------------------------------------------------


def test_interp_refuses_a_language_without_words(two_lang_store, tmp_path):
    """The words of a pair's language were looked for after the lease and the run's manifest."""
    from engine.pipelines.interp.config import InterpConfig
    from engine.pipelines.interp.run import run_interp
    from engine.stores.words import WordsError

    words = tmp_path / "words"
    (words / "de").mkdir(parents=True)
    pq.write_table(pa.table({"utterance": [0], "id": ["s0"], "word": [" apple"], "start": [0.0], "end": [0.2]}),
                   words / "de" / "words.parquet")  # fmt: skip
    out = tmp_path / "out"
    config = configure(InterpConfig, store=two_lang_store, words=str(words), out=str(out))
    refused(WordsError, r"no en/words.parquet under .*it holds the words of \['de'\]", lambda: run_interp(config), out)


# -- challenge --------------------------------------------------------------------------------------------------------


def test_challenge_refuses_a_language_the_store_lacks(two_lang_store, tmp_path):
    from engine.pipelines.challenge.rules import ChallengeError
    from engine.pipelines.challenge.run import ChallengeConfig, run_challenge

    out = tmp_path / "out"
    config = configure(ChallengeConfig, store=two_lang_store, out=str(out), langs=("de", "zz"))
    refused(ChallengeError, r"the store has no language \['zz'\]", lambda: run_challenge(config), out)


# -- heads ------------------------------------------------------------------------------------------------------------


def test_heads_refuses_one_language_before_the_model_loads(two_lang_store, tmp_path, monkeypatch):
    from engine.pipelines.heads import run as heads_run
    from engine.pipelines.heads.config import HeadsConfig, HeadsError

    monkeypatch.setattr(heads_run, "load_encoder", not_run("the model's load (then the ablation passes)"))
    out = tmp_path / "out"
    config = configure(HeadsConfig, store=two_lang_store, out=str(out), langs=("de",))
    refused(HeadsError, "give at least two", lambda: heads_run.run_heads(config), out)


# -- mixing -----------------------------------------------------------------------------------------------------------


def test_mixing_refuses_a_language_the_store_lacks_before_the_model_loads(two_lang_store, tmp_path, monkeypatch):
    from engine.pipelines.mixing import run as mixing_run
    from engine.pipelines.mixing.config import MixingConfig, MixingError

    monkeypatch.setattr(mixing_run, "load_encoder", not_run("the model's load (then the zeroed blocks)"))
    out = tmp_path / "out"
    config = configure(MixingConfig, store=two_lang_store, words=str(tmp_path / "words"), out=str(out),
                       langs=("de", "zz"))  # fmt: skip
    refused(MixingError, r"languages \['zz'\] are not in the layer store", lambda: mixing_run.run_mixing(config), out)


# -- probe ------------------------------------------------------------------------------------------------------------


def test_probe_refuses_one_language_and_a_malformed_relations_file(two_lang_store, tmp_path, monkeypatch):
    """One language wrote an empty probe.csv; a malformed --relations file was read under the lease."""
    from engine.pipelines.probe import run as probe_run
    from engine.pipelines.probe.config import ProbeConfig, ProbeError

    monkeypatch.setattr(probe_run, "similarity_matrices", not_run("a read of the store's states"))
    out = tmp_path / "out"
    config = configure(ProbeConfig, store=two_lang_store, out=str(out), langs=("de",))
    refused(ProbeError, r"two languages; the run has \['de'\]", lambda: probe_run.run_probe(config), out)
    relations = tmp_path / "relations.csv"
    relations.write_text("lang_a,word_a\nde,s0\n")
    config = configure(ProbeConfig, store=two_lang_store, out=str(out), relations=str(relations))
    refused(ProbeError, "has no column", lambda: probe_run.run_probe(config), out)


# -- align, decode, finetune: the store's model checked before the lease ---------------------------------------------


def test_align_and_decode_refuse_another_model_before_the_lease(two_lang_store, tiny_model_dir, tmp_path):
    """The tiny Whisper is not the planted store's model (its checkpoint hash differs): refused once loaded, before
    the lease made the output folder."""
    from engine.pipelines.align.config import AlignConfig
    from engine.pipelines.align.run import AlignError, run_align
    from engine.pipelines.decode.config import DecodeConfig, DecodeError
    from engine.pipelines.decode.run import run_decode

    out = tmp_path / "out"
    config = configure(AlignConfig, store=two_lang_store, model=str(tiny_model_dir), out=str(out))
    refused(AlignError, "pass the store's model with --model", lambda: run_align(config), out)
    config = configure(DecodeConfig, store=two_lang_store, model=str(tiny_model_dir), out=str(out))
    refused(DecodeError, "pass the store's model with --model", lambda: run_decode(config), out)


def test_finetune_refuses_a_store_without_the_decoders_layer(two_lang_store, tiny_model_dir, tmp_path):
    from engine.pipelines.finetune.config import FinetuneConfig
    from engine.pipelines.finetune.data import FinetuneError
    from engine.pipelines.finetune.run import run_finetune

    out = tmp_path / "out"
    config = configure(FinetuneConfig, store=two_lang_store, model=str(tiny_model_dir), out=str(out),
                       source_langs=("de",), target_lang="en")  # fmt: skip
    refused(FinetuneError, "but not 3, the encoder output the decoder reads", lambda: run_finetune(config), out)
