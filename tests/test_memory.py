import subprocess
import sys

import pytest

from mrcnn_ref.memory import _glibc, retain_freed_memory

# Five forward + backward passes of a 3x3 convolution on a 2x64x64x64 input (the benchmark's layer:
# a 19 MB column matrix and other large temporaries per pass); prints their page faults.
_SCRIPT = """
import resource, sys
import numpy as np
from mrcnn_ref.memory import retain_freed_memory
from mrcnn_ref.ops.conv import conv2d_backward, conv2d_forward
ok = retain_freed_memory() if sys.argv[1] == "retain" else None
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 64, 64, 64)).astype(np.float32)
w = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
def step():
    out, cache = conv2d_forward(x, w, None, padding=1)
    conv2d_backward(out, cache)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True)
    ok, faults = out.stdout.split()
    return ok, int(faults)


@pytest.mark.skipif(_glibc() is None, reason="needs glibc (Linux) for mallopt")
def test_freed_blocks_are_reused_instead_of_page_faulted_back():
    ok, retained = _faults("retain")
    _, default = _faults("default")
    assert ok == "True"
    # kept, the freed temporaries are simply reused: (almost) no page fault after the first pass.
    # With glibc 2.36's defaults some go back to the kernel and each pass page-faults them in
    # again (~3,500 faults per pass measured on the project's machine; other versions may differ,
    # so only the retained count is held to a bound; `default` is in the message for comparison)
    assert retained <= 100, (retained, default)


def test_bad_limit():
    with pytest.raises(ValueError, match="retain_freed_memory: limit_bytes must be a positive int"):
        retain_freed_memory(0)
    with pytest.raises(ValueError, match="positive int"):
        retain_freed_memory(True)
