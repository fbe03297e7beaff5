"""Settings shared by the whole suite."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread for the whole suite.

    The tests run tiny models, whose per-op cost is dominated by thread synchronisation: on
    a 2-core machine that is doing anything else, a second OpenMP thread mostly spins, and
    a tiny-model step took ~1 s on two threads against ~14 ms on one. One thread also makes
    float sums reproducible bit for bit, as the resume test needs: bf16 kernels sum in another
    order on two threads. It is set again for every test, because the CLI entry points that
    tests call in-process (``--threads``) change torch's process-wide setting.
    """
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)  # also for the module fixtures that the next test sets up
