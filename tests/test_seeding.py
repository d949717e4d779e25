"""Random number generators: every stream seeded, captured and restored through a checkpoint file."""
import random

import numpy as np
import torch

from amanita.checkpoint import load_checkpoint, save_checkpoint
from amanita.seeding import capture_rng, restore_rng, seed_everything


def test_rng_capture_restores_every_stream_through_a_checkpoint_file(tmp_path):
    seed_everything(5)
    np.random.randn()  # odd count: numpy now holds a cached gaussian, which must be captured too
    save_checkpoint({"model": {}, "rng": capture_rng()}, tmp_path / "r.pth")
    first = (random.random(), np.random.randn(), np.random.rand(), torch.rand(2).tolist())
    seed_everything(99)
    restore_rng(load_checkpoint(tmp_path / "r.pth")["rng"])
    assert (random.random(), np.random.randn(), np.random.rand(), torch.rand(2).tolist()) == first




def test_the_same_seed_gives_the_same_draws_and_a_seed_past_32_bits_is_taken():
    seed_everything(2**32 + 3)  # numpy takes seeds below 2**32 only: it gets the seed modulo 2**32
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(2**32 + 3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    seed_everything(4)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) != first
