"""A trainable whose module leaves torch's CUDA state initialised at import (test_engine_devices.py).

On a CPU machine nothing can initialise CUDA, so the flag is set by hand: the zygote reports it
and the runner spawns the workers instead of forking them.
"""

import torch

from pbtune.testing.trainables import DeviceRecorder

torch.cuda._initialized = True  # as if this module had created a CUDA tensor at import


class CudaAtImport(DeviceRecorder):
    pass
