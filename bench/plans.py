"""Every job's ``--plan`` against its run, on the demo set: BUILD.md's plan table, reproduced.

For each job the plan is printed first (``--plan``, its "total ... here" read from the printout), then the run is
timed (the wall time of the command, start-up included), one after the other, nothing else running. The inputs are
made first and not timed: the demo's whisper-base store ``S`` (encode, which is also the first row, writes it again),
the demo's words ``W`` (align's output, for probes), its similarity store ``M`` (seqsim and mean, for typology), and a
random-weight Qwen2-Audio tower (``babelgrid random-model``, 4 blocks x 1280, the released width) encoded on 4
languages (``Q``), for compare at the size issue 62 reported: whisper-base against a random Qwen2-Audio tower, 4
languages, 100 permutations.

    python bench/plans.py [--record bench/RESULTS.md] [--tmp /tmp/bench-plans] [--only compare,neurons]

Prints a Markdown table (job, command, plan, run, run / plan) with the machine, the date and the load average
before and after. Run it alone on a quiet machine: a plan calibrates on the machine as it is when it starts.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import Run, record  # noqa: E402

UNITS = {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
LANGS4 = "en,de,es,it"


def rows(tmp: pathlib.Path) -> list[tuple[str, str, list[str]]]:
    """(job, what the table shows, the command's arguments after ``python -m``); S, W, Q as the module docstring."""
    s, w, q, m = tmp / "S", tmp / "W", tmp / "Q", tmp / "M"
    x = str(tmp / "X")  # every job's output, removed before each
    return [
        ("encode", "`encode --out S` (240 utterances)", ["jobs.encode", "--out", str(s)]),
        ("seqsim", "`seqsim --store S --out X` (28 pairs x 8 layers, 4 measures)",
         ["jobs.seqsim", "--store", str(s), "--out", x]),
        ("decode", "`decode --store S --out X --langs en --layers 7 --tasks transcribe --max_new_tokens 64`",
         ["jobs.decode", "--store", str(s), "--out", x, "--langs", "en", "--layers", "7", "--tasks", "transcribe",
          "--max_new_tokens", "64"]),
        ("compare", "`compare --stores S,S --names a,b --out X` (8 languages, the default null: 200 permutations)",
         ["jobs.compare", "--stores", f"{s},{s}", "--names", "a,b", "--out", x]),
        ("compare", f"`compare --stores S,Q --langs {LANGS4} --null_permutations 100 --out X` (Q: a random "
         "Qwen2-Audio tower, 4 blocks x 1280)",
         ["jobs.compare", "--stores", f"{s},{q}", "--langs", LANGS4, "--null_permutations", "100", "--out", x]),
        ("probes", "`probes --store S --words W --out X` (lid, samediff, cca)",
         ["jobs.probes", "--store", str(s), "--words", str(w), "--out", x]),
        ("neurons", "`neurons --out X --intervene en --random_draws 2 --intervene_utterances 10`",
         ["jobs.neurons", "--out", x, "--intervene", "en", "--random_draws", "2", "--intervene_utterances", "10"]),
        ("heads", "`heads --store S --out X --utterances 6 --max_new_tokens 48` (docs/heads.md's demo: 49 passes "
         "over 48 utterances, decoded, both importance losses)",
         ["jobs.heads", "--store", str(s), "--out", x, "--utterances", "6", "--max_new_tokens", "48"]),
        ("sae", "`sae --store S --out X --layers 2,4,7 --epochs 4 --batch_size 2048 --k 32` (docs/sae.md's demo)",
         ["jobs.sae", "--store", str(s), "--out", x, "--layers", "2,4,7", "--epochs", "4", "--batch_size", "2048",
          "--k", "32"]),
        ("typology", "`typology --similarity M --out X` (M: seqsim and mean of S; 8 languages x 8 layers, 9999 "
         "permutations)", ["jobs.typology", "--similarity", str(m), "--out", x]),
        ("interp", "`interp --store S --words W --out X --pairs es:it,en:de,en:ru` (docs/interp.md's demo: 3 pairs x "
         "8 layers)",
         ["jobs.interp", "--store", str(s), "--words", str(w), "--out", x, "--pairs", "es:it,en:de,en:ru"]),
        ("challenge", "`challenge --store S --out X --pairs en:es,en:de,en:ru` (docs/challenge.md's demo: 27 s)",
         ["jobs.challenge", "--store", str(s), "--out", x, "--pairs", "en:es,en:de,en:ru"]),
    ]  # fmt: skip


def seconds_of(text: str) -> float:
    """The plan's total time here, from its printout's ``total`` row (its last column)."""
    for line in text.splitlines():
        if line.strip().startswith("total"):
            value, unit = line.split()[-2:]
            return float(value.replace(",", "")) * UNITS[unit]
    raise ValueError(f"no total in the plan:\n{text}")


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, BABELGRID_STATUS_SECONDS="600")
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, env=env, **kw)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


def inputs(tmp: pathlib.Path) -> None:
    if not (tmp / "S").exists():
        run(["jobs.encode", "--out", str(tmp / "S")])
    if not (tmp / "W").exists():  # the demo's words: align's output (words.parquet per language)
        run(["jobs.align", "--store", str(tmp / "S"), "--out", str(tmp / "W")])
    if not (tmp / "M").exists():  # the demo's similarity store, as docs/typology.md makes it: typology's input
        run(["jobs.seqsim", "--store", str(tmp / "S"), "--out", str(tmp / "M"), "--measure", "seqsim,mean"])
    if not (tmp / "Q").exists():
        run(["jobs.random_model", "--kind", "qwen2-audio", "--out", str(tmp / "q-model"), "--layers", "4",
             "--width", "1280", "--heads", "20"])  # fmt: skip
        run(["jobs.encode", "--model", str(tmp / "q-model"), "--langs", LANGS4, "--out", str(tmp / "Q")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tmp", type=pathlib.Path, default=pathlib.Path("/tmp/bench-plans"))
    parser.add_argument("--record", type=pathlib.Path, default=None)
    parser.add_argument("--only", default="", help="comma-separated jobs")
    args = parser.parse_args()
    only = [j for j in args.only.split(",") if j]
    args.tmp.mkdir(parents=True, exist_ok=True)
    inputs(args.tmp)
    started = Run()
    table = ["| job | command | plan | run | run / plan |", "| --- | --- | ---: | ---: | ---: |"]
    for job, shown, command in rows(args.tmp):
        if only and job not in only:
            continue
        out = pathlib.Path(command[command.index("--out") + 1])
        shutil.rmtree(out, ignore_errors=True)
        planned = seconds_of(run([*command, "--plan"]).stdout)
        began = time.perf_counter()
        run(command)
        took = time.perf_counter() - began
        table.append(f"| {job} | {shown} | {planned:.1f} s | {took:.1f} s | {took / planned:.2f} |")
        print(table[-1], flush=True)
    command = f"python bench/plans.py{' --only ' + args.only if only else ''}"
    text = "\n".join([started.line(), f"Command: `{command}`; plan, then run, one job after the other.", "", *table])
    print(text)
    if args.record:
        record(args.record, "every plan against its run (bench/plans.py)", text)


if __name__ == "__main__":
    main()
