import pytest
import torch

from imagesynth import ImagesynthError
from imagesynth.seeding import randn, randn_per_sample, seed_everything


def test_randn_is_a_function_of_the_seed():
    assert torch.equal(randn((2, 3, 4, 4), 7), randn((2, 3, 4, 4), 7))
    assert not torch.equal(randn((2, 3), 7), randn((2, 3), 8))
    # drawn on the CPU, so the values do not depend on where they are used
    assert randn((3,), 1, device="cpu").device.type == "cpu"
    assert torch.equal(randn((3,), 1, dtype=torch.float64), randn((3,), 1).double())


def test_per_sample_noise_is_independent_of_batch_size():
    big = randn_per_sample((4, 3, 8, 8), [10, 11, 12, 13])
    small = randn_per_sample((2, 3, 8, 8), [12, 13])
    assert torch.equal(big[2:], small)
    with pytest.raises(ImagesynthError, match="3 seeds for a batch of 4"):
        randn_per_sample((4, 1), [1, 2, 3])


def test_bad_seeds():
    for bad in (-1, 2**63, 1.5, "3", True):
        with pytest.raises(ImagesynthError, match="seed must be"):
            randn((1,), bad)


def test_seed_everything():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))
