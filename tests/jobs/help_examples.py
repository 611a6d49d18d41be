"""Checks the examples of one job's --help: ``python tests/jobs/help_examples.py JOB``.

Every ``python -m jobs.JOB ...`` line of the job's docstring (with its backslash continuations) is parsed by the job's
own flags and, unless it asks for --plan, turned into the job's config, so a misspelt flag, a bad value or a missing
required flag fails here. Prints one line per example, then whether JAX was loaded; exits 1 if any failed.
"""

import importlib
import re
import shlex
import sys

from absl import flags


def examples(doc: str, job: str) -> list[list[str]]:
    text = re.sub(r"\\\n\s*", " ", doc)
    found = []
    for line in text.splitlines():
        line = line.split("  #", 1)[0].strip()
        if line.startswith(f"python -m jobs.{job} "):
            found.append(shlex.split(line)[3:])
    return found


def main(job: str) -> int:
    sys.argv = [f"jobs.{job}"]
    module = importlib.import_module(f"jobs.{job}")
    from jobs import common

    config_cls = next(v for v in vars(module).values() if isinstance(v, type) and v.__name__.endswith("Config"))
    bad = 0
    found = examples(module.__doc__, job)
    if not found:
        print(f"{job}: no example in the docstring")
        return 1
    for args in found:
        flags.FLAGS.unparse_flags()
        try:
            flags.FLAGS([f"jobs.{job}", *args])
            flags.FLAGS.validate_all_flags()
            if not ("plan" in flags.FLAGS and flags.FLAGS.plan):
                common.config_from_flags(config_cls)
            print("ok  ", " ".join(args))
        except Exception as e:  # noqa: BLE001 - every failure is reported
            bad += 1
            print("FAIL", " ".join(args), f"-> {type(e).__name__}: {e}")
    # --help and the config need no JAX, TensorStore-backed kernels or model: the job loads them after its flags.
    print("jax loaded:", "jax" in sys.modules)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
