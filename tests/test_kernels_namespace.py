"""Our top-level ``kernels`` package next to transformers, which probes for PyPI's unrelated ``kernels``.

transformers' ``is_kernels_available()`` finds a module named ``kernels`` (ours), resolves its
version through the distribution that ships it (babelgrid) and enables its hub-kernel
integration only for versions in ``[KERNELS_MIN_VERSION, KERNELS_MAX_VERSION)``. If babelgrid's
own version ever fell into that window, transformers would ``from kernels import get_kernel``
and break. These tests run in fresh interpreters so that import order is really exercised.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=patient(300),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("ours_first", [True, False])
def test_transformers_and_our_kernels_coexist(ours_first):
    first, second = (
        ("import kernels", "import transformers") if ours_first else ("import transformers", "import kernels")
    )
    out = run_python(
        f"""
        {first}
        {second}
        import pathlib, sys, torch
        from transformers.utils.import_utils import is_kernels_available
        import transformers.integrations.hub_kernels  # the module that probes for PyPI's kernels
        # transformers must not take our package for PyPI's hub-kernels library ...
        assert not is_kernels_available(), "transformers thinks babelgrid's kernels is the hub 'kernels' package"
        # ... and `kernels` must still be ours, with our modules importable.
        import kernels
        here = pathlib.Path(kernels.__file__).resolve().parent
        assert here == pathlib.Path("{REPO}/kernels").resolve(), kernels.__file__
        # A Whisper forward pass through transformers still works.
        cfg = transformers.WhisperConfig(vocab_size=100, num_mel_bins=8, encoder_layers=1, decoder_layers=1, d_model=16,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
            max_source_positions=4, max_target_positions=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1)
        m = transformers.WhisperModel(cfg).eval()
        out = m(torch.zeros(1, 8, 8), decoder_input_ids=torch.tensor([[1, 3]])).last_hidden_state
        print("ok", tuple(out.shape))
        """
    )
    assert "ok (1, 2, 16)" in out


def test_babelgrid_version_outside_transformers_kernels_window():
    from importlib.metadata import version

    from packaging.version import Version
    from transformers.utils import import_utils

    ours = Version(version("babelgrid"))
    lo, hi = Version(import_utils.KERNELS_MIN_VERSION), Version(import_utils.KERNELS_MAX_VERSION)
    assert not (lo <= ours < hi), (
        f"babelgrid {ours} falls in transformers' hub-kernels window [{lo}, {hi}): transformers would import "
        "`kernels` expecting PyPI's package; pick another version"
    )
