"""OWSM's shared fixture: ``owsm_reference``'s random v3.1 model (real base widths, seed 0) in ESPnet's layout, which
the parity, checkpoint, cost and training modules of this folder all read. Session-scoped and written once for all
xdist workers: read it, do not change it (a test that edits one copies it first, as test_owsm_checkpoints does).
"""

import pathlib

import pytest


@pytest.fixture(scope="session")
def owsm_v31_dir(fleurs_dir, tmp_path_factory, worker_id) -> pathlib.Path:
    """``ref.write_model(root, fleurs_dir)``, once per session: the first xdist worker to ask writes it under a file
    lock in the session's shared temporary folder, the others find it there (``tests.conftest.written_once``). ESPnet
    builds the model, SentencePiece trains its BPE and ESPnet's frontend takes the normalisation statistics: each
    module built its own copy of the same files before."""
    from tests.conftest import written_once
    from tests.models.owsm import owsm_reference as ref

    return written_once(tmp_path_factory, worker_id, "owsm-v3.1", lambda root: ref.write_model(root, fleurs_dir))
