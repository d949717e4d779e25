"""Test set-up: the hub is offline (the tests never download; ``HF_HUB_OFFLINE=1``).

The package is importable through pytest's ``pythonpath`` setting (pyproject.toml) or the
editable install of ``make install``; shared helpers live in ``tests/helpers.py``.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
