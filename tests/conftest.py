import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need an NVIDIA GPU: skipped without one (`make test` never needs it)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/device_check.sh on one)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
