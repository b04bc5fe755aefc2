import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """The embedded default data, loaded once."""
    from llpf.config import DataConfig
    from llpf.data import load_data

    return load_data(DataConfig())
