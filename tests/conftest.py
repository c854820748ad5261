import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_space():
    from compress.space import SearchSpace

    return SearchSpace.from_yaml(FIXTURES / "tiny_space.yaml")


@pytest.fixture(scope="session")
def tiny_supernet(tiny_space):
    """A tiny supernet with non-trivial BatchNorm statistics (a few forward passes in train mode)."""
    from compress.supernet import HybridSupernet

    torch.manual_seed(0)
    net = HybridSupernet(tiny_space, in_channels=3, num_classes=5, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    rng = random.Random(0)
    net.train()
    with torch.no_grad():
        for _ in range(8):
            net.set_active(tiny_space.sample(rng))
            net(torch.rand(8, 3, 16, 16))
    return net.eval()
