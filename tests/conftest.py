"""Test setup: interpret Triton kernels on the CPU when there is no GPU, and poison outputs.

TRITON_INTERPRET must be set before Triton is first imported, so it happens here at import;
Inductor's cache directory before torch is.
"""

import os
import tempfile

# Inductor's compiled graphs in a directory of this run's own: a cache left on the machine by
# another checkout (other fakes, other kernels) must not answer for this one's graphs.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="lottalora-inductor-"))

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Every output the library allocates starts as NaN, so an element a kernel forgets to write
# shows (lottalora_kernels.runtime.new_output).
os.environ["LOTTALORA_POISON_OUTPUTS"] = "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")
