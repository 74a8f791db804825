import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # test helpers: stat_tests, asd_eval_fakes


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small models on a shared 2-core machine run many times faster on one torch thread than two."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
