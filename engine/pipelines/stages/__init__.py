"""The shared stages: what two or more job rooms of ``engine.pipelines`` use, each once.

A floor below the job rooms and above runtime, stores, models, data and text: a job room imports ``stages`` and
never another job room, and no stage imports a job room (``tests/test_layout.py``).
"""
