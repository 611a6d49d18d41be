"""--plan: a dry run of encode, seqsim and decode that counts the work and estimates its time, writing nothing.

Counts are checked against what the runs then write (utterances, windows, frames); the time estimate's accuracy is
a measurement, not a test (BUILD.md has it).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE
from engine.models.whisper import cost as whisper_cost
from engine.models.whisper.dims import ModelDimensions
from engine.pipelines.decode.config import DecodeConfig, DecodeError
from engine.pipelines.decode.run import check_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.plan import plan_seqsim_run
from engine.pipelines.stages.decode_plan import plan_decode_run
from engine.runtime import plan as plan_lib
from engine.runtime.devices import get_device
from engine.runtime.options import ConfigError, configure
from engine.stores.reader import open_store
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]
SECONDS = {"a": 0.5, "b": 31.0, "c": 1.0}  # b needs two 30 s windows


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("clips")
    for lang in ("en", "de"):
        (root / lang).mkdir()
        for i, (name, seconds) in enumerate(SECONDS.items()):
            t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
            sf.write(
                root / lang / f"{name}.wav",
                (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32),
                SAMPLE_RATE,
            )
    return root


@pytest.fixture(scope="module")
def store(clips, tiny_model_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("store") / "store")
    run_encode(configure(EncodeConfig, out=out, model=str(tiny_model_dir), dataset=f"folder:{clips}", progress=False))
    return out


def test_encode_plan_through_the_flags_counts_and_writes_nothing(clips, tiny_model_dir, store, tmp_path):
    out = tmp_path / "never"
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    args = ["--out", str(out), "--model", str(tiny_model_dir), "--dataset", f"folder:{clips}", "--plan"]
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.encode", *args, "--plan_device", "tpu-v5e"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=patient(300),
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert not out.exists()
    reader = open_store(store)
    frames = sum(int(reader.lengths(lang).sum()) for lang in reader.languages())
    assert "utterances: 6\n" in text, text
    assert "windows: 8 of at most 30 s, each padded to the model's full 30 s" in text, text
    assert f"frames: {frames} valid encoder frames" in text, text
    for needed in (
        "audio -> input",
        "(whisper, L=",
        "bound by",
        "encoder",
        "peak memory per device",
        "TPU v5e",
        "fits on",
        "GFLOP/s",
        "windows per encoder step",
    ):
        assert needed in text, (needed, text)
    assert re.search(r"total\s+\S+ [KMGT]?\s", text), text


def test_seqsim_and_decode_plans_count_the_store(store, tmp_path, tiny_model_dir):
    sim = plan_seqsim_run(configure(SimilarityConfig, store=store, out=str(tmp_path / "s")), get_device("h100"))
    reader = open_store(store)
    lengths = {lang: reader.lengths(lang) for lang in reader.languages()}
    d = reader.info.embed
    useful = 2.0 * lengths["en"].sum() * lengths["de"].sum() * d * len(reader.info.layers)
    assert f"{plan_lib.flops(useful)} on valid frames" in sim.render()
    assert "packed bins of" in sim.render() and sim.seconds_here > 0 and sim.seconds_device > 0
    assert not (tmp_path / "s").exists()
    # "As computed" follows the path taken (issue 80): the blocks pad to the longest, the packed bins barely.
    blocks = plan_seqsim_run(configure(SimilarityConfig, store=store, out=str(tmp_path / "s"), seqsim_kernel="blocks"),
                             get_device("h100"))  # fmt: skip
    padded = 2.0 * len(lengths["en"]) * lengths["en"].max() * len(lengths["de"]) * lengths["de"].max() * d
    assert blocks.stages[0].flops == padded * len(reader.info.layers) and "blocks of" in blocks.render()
    assert useful <= sim.stages[0].flops < blocks.stages[0].flops

    dec = plan_decode_run(
        configure(
            DecodeConfig,
            store=store,
            out=str(tmp_path / "d"),
            model=str(tiny_model_dir),
            decodings=("greedy", "beam:2"),
            ln_post="both",
        ),
        None,
    )
    assert "8 windows" in dec.render() and dec.stages[0].flops > 0 and dec.seconds_device is None
    # The job recomputes the encoder from the audio up to each (layer, ln_post) variant's layer, in batches of 8
    # windows per language (4 windows each here, the batch padded to 8).
    dims, top = ModelDimensions.from_dict(reader.info.dims.to_dict()), reader.info.n_layers_out - 1
    depths = [min(layer, dims.n_audio_layer) for layer in reader.info.layers for _ in range(1 if layer == top else 2)]
    stem, block = whisper_cost.encoder_flops_per_window(dims)
    encoder = dec.stages[0]
    assert encoder.name == "encoder (from audio)" and encoder.seconds_here > 0
    assert encoder.flops == 2 * 8 * sum(stem + depth * block for depth in depths)
    assert not (tmp_path / "d").exists()


def test_decode_plan_refuses_what_the_run_refuses(store, tiny_model_dir, tmp_path):
    """A plan is never printed of a decode that cannot start: --plan checks the model, decodings, tasks, languages
    and layers as the run does (``check_decode``), through the flags too."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    args = ["--store", store, "--out", str(tmp_path / "d"), "--model", str(tiny_model_dir), "--layers", "99", "--plan"]
    proc = subprocess.run([sys.executable, "-m", "jobs.decode", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=patient(300))  # fmt: skip
    assert proc.returncode != 0 and "layers [99] are not in the layer store" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "total" not in proc.stdout, proc.stdout
    given = dict(store=store, out=str(tmp_path / "d"), model=str(tiny_model_dir))
    for settings, message in (
        ({"tasks": ("phones",)}, "task phones: "),
        ({"decodings": ("ctc",)}, "--decoding ctc reads a CTC head"),
        ({"langs": ("sv",)}, "languages ['sv'] are not in the layer store"),
    ):
        with pytest.raises(DecodeError, match=re.escape(message)):
            check_decode(configure(DecodeConfig, **given, **settings))
    assert not (tmp_path / "d").exists()


def test_seqsim_plan_counts_dtw_and_ot(store, tmp_path):
    """dtw and ot are stages of their own, timed on the store's states; their cells are N*M*m*n per pair and layer,
    frames cropped to each language's longest."""
    config = configure(SimilarityConfig, store=store, out=str(tmp_path / "s"), measures=("seqsim", "dtw", "ot", "mean"))
    plan = plan_seqsim_run(config, get_device("h100"))
    reader = open_store(store)
    en, de = (np.asarray(reader.lengths(lang)) for lang in ("en", "de"))
    d, layers = reader.info.embed, len(reader.info.layers)
    cells = len(en) * len(de) * en.max() * de.max() * layers
    stages = {s.name: s for s in plan.stages}
    assert list(stages) == ["seqsim", "dtw", "ot", "mean"]
    for name in ("dtw", "ot"):
        assert stages[name].flops == 2.0 * d * cells and stages[name].seconds_here > 0, name
        assert f"{name} at" in plan.render()
        # Not estimated on --plan_device: the device column says so rather than 0.
        row = next(line for line in plan.render().splitlines() if line.strip().startswith(f"{name} "))
        assert stages[name].seconds_device is None and row.endswith("n/a"), row
    assert "4 matrices per pair and layer" in plan.render()
    assert not (tmp_path / "s").exists()


def test_encoder_flops_by_hand():
    dims = ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)  # whisper-base
    stem, block = whisper_cost.encoder_flops_per_window(dims)
    assert stem == 2 * 3 * (3000 * 80 * 512 + 1500 * 512 * 512)
    # q, k, v, out (4 d^2) and MLP (8 d^2) per position, 2 FLOPs each; scores and weighted sum 2 * 2 * T^2 * d.
    assert block == 2 * 12 * 1500 * 512**2 + 4 * 1500**2 * 512


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="must be one of h100"):
        get_device("k80")


def test_seqsim_plan_prints_the_memory_budget_reads_and_peak(store, tmp_path):
    """--memory_budget in the plan: each language's reads per layer, the peak held; a budget too small for a pair
    says so, naming it, as the job would refuse it."""
    config = configure(SimilarityConfig, store=store, out=str(tmp_path / "s"), measures=("seqsim",))
    text = plan_seqsim_run(dataclasses.replace(config, run=dataclasses.replace(config.run, memory_budget=2**30)),
                           None).render()  # fmt: skip
    assert "memory budget 1 GiB per process (--memory_budget): each language read 1.00 times per layer" in text, text
    assert re.search(r"\S+ \S+ held at most; 0 pairs split into blocks; work units of", text), text
    tiny = dataclasses.replace(config, run=dataclasses.replace(config.run, memory_budget=1024))
    refused = plan_seqsim_run(tiny, None).render()
    assert re.search(r"memory budget 1 KiB .*: NO: .* too small for the pair de:en", refused), refused
    assert not (tmp_path / "s").exists()
    # A budget past this machine's memory is another device's to give: planned for it, refused for a run here
    huge = dataclasses.replace(config, run=dataclasses.replace(config.run, memory_budget=2**50))
    assert "memory budget 1 PiB" in plan_seqsim_run(huge, get_device("h100")).render()
    with pytest.raises(ConfigError, match="more than the .* of this machine's RAM"):
        plan_seqsim_run(huge, None)


def test_sizes_times_and_flops_print_without_exponents():
    """Between 1000 and 1024 of a unit, `:.3g` printed "1.01e+03 MiB": now 3 significant digits, or the whole
    number where those would need an exponent."""
    assert plan_lib.size(1010 * 2**20) == "1010 MiB"
    assert plan_lib.size(1023.9 * 2**20) == "1024 MiB"
    assert plan_lib.size(2**30) == "1 GiB" and plan_lib.size(1.5 * 2**30) == "1.5 GiB"
    assert plan_lib.size(900) == "900 B" and plan_lib.size(31.2 * 1024) == "31.2 KiB"
    assert plan_lib.size(0) == "0 B"
    assert plan_lib.duration(0.9999) == "1000 ms" and plan_lib.duration(0.0123) == "12.3 ms"
    assert plan_lib.flops(999.7e9) == "1000 G"
    for x, seconds in zip(np.geomspace(1, 2**60, 4000), np.geomspace(1e-3, 1e9, 4000), strict=True):
        for text in (plan_lib.size(x), plan_lib.flops(x), plan_lib.duration(seconds)):
            assert "e" not in text.split()[0], text


def test_auto_takes_the_fused_kernel_where_it_was_measured_fastest():
    """--seqsim_kernel auto: the fused Pallas kernel on one H100 or H200 (measured 3.0x the packed bins there, issue
    86), packed bins on any other single device, this CPU included, blocks over several; and a plan for a device
    costs that device's path at the fraction of peak measured for it, the blocks' where that path was not timed."""
    from engine.pipelines.seqsim.measures import seqsim_path
    from engine.runtime.devices import DEVICES

    auto = functools.partial(seqsim_path, "auto", several_devices=False)
    assert auto(device="NVIDIA H100 80GB HBM3") == auto(device="NVIDIA H200") == "pallas"
    assert auto(device="NVIDIA A100-SXM4-80GB") == auto(device="cpu") == auto() == "packed"
    assert seqsim_path("auto", several_devices=True, device="NVIDIA H100") == "blocks"
    assert auto(precision="fp8", device="NVIDIA H100") == "fp8"
    assert seqsim_path("packed", several_devices=False, device="NVIDIA H100") == "packed"
    h200, a100 = DEVICES["h200"], DEVICES["a100"]
    assert h200.seqsim_efficiency_of("pallas") == 334 / 989 and h200.seqsim_efficiency_of("blocks") == 186 / 989
    assert a100.seqsim_efficiency_of("pallas") == a100.seqsim_efficiency  # not timed there: the blocks' (assumed)
    assert "34% (pallas)" in h200.describe() and "19.2 GB/s" in h200.describe()


def test_pallas_rows_count_whole_tiles_then_tails():
    """The fused kernel's frames as computed (engine.pipelines.seqsim.computed): whole tiles, then the rest in tail
    tiles (kernels.seqsim_pallas), counted by hand for lengths 1, 16, 17, 130 and 200 under 64-frame tiles."""
    from engine.pipelines.seqsim.computed import SideRows

    side = SideRows(np.array([1, 16, 17, 130, 200]))
    assert side.rows("pallas", 0, 64) == 64 + 64 + 64 + 192 + 256  # no tail: each rounded up to its tile
    assert side.rows("pallas", 0, 64, 16) == 16 + 16 + 32 + (128 + 16) + (192 + 16)
    assert side.rows("pallas", 0, 64, 64) == side.rows("pallas", 0, 64)
    assert SideRows(np.array([5, 9])).rows("pallas", 0, 64, 32) == 16 + 16  # the tile shrinks to the longest's
