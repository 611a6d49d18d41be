"""What every model family shares: layers, checkpoint readers, weight files, the sharded encoder.

Families import from here and never from one another (``tests/test_layout.py``).
"""
