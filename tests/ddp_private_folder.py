"""Under torchrun: a training script as on nodes that do not share the checkpoint folder.

Rank 1's ``$CHECKPOINT_ARTIFACT_PATH`` is a folder of its own (the first argument: what a node
with local storage sees), rank 0 keeps ``--save-dir``. Usage: ``FOLDER SCRIPT ARGS...``.
"""
import os
import runpy
import sys

if __name__ == "__main__":
    if os.environ.get("RANK") == "1":
        os.environ["CHECKPOINT_ARTIFACT_PATH"] = sys.argv[1]
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
