"""Forward latency of each catalogue case on CPU and CUDA, NCHW and channels_last.

Random weights (seeded): latency depends on shapes only. Every setup puts the module in eval
mode, enters ``torch.inference_mode`` and fixes the thread count (``common.set_threads``);
the timed body is one forward call (plus a CUDA synchronisation on the GPU).
"""

import torch

from .common import BATCH_SIZES, MEMORY_FORMATS, InferenceMode, case_by_id, case_ids, set_threads


class _Forward(InferenceMode):
    params = [case_ids(), list(BATCH_SIZES), list(MEMORY_FORMATS)]
    param_names = ["case", "batch", "memory_format"]
    device = "cpu"
    # Big convs at batch 32 take seconds per call.
    timeout = 600
    repeat = (2, 10, 10.0)
    warmup_time = 0.1

    def setup(self, case_id, batch, memory_format):
        self._check_device()
        case = case_by_id(case_id)
        if memory_format == "channels_last" and case.layer.kind != "conv":
            raise NotImplementedError("channels_last applies to 4-D conv inputs only")
        set_threads()
        gen = torch.Generator().manual_seed(0)
        self.module = case.build(fit=False, device=self.device)
        x = torch.randn(case.layer.batched_shape(batch), generator=gen).to(self.device)
        if memory_format == "channels_last":
            self.module = self.module.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.x = x
        self._enter_inference()
        self.module(self.x)  # first call: oneDNN / cuDNN pick their kernels

    def _check_device(self):
        pass


class ForwardCPU(_Forward):
    def time_forward(self, case_id, batch, memory_format):
        self.module(self.x)


class ForwardCUDA(_Forward):
    device = "cuda"

    def _check_device(self):
        if not torch.cuda.is_available():
            raise NotImplementedError("no CUDA device")

    def time_forward(self, case_id, batch, memory_format):
        self.module(self.x)
        torch.cuda.synchronize()  # asv times wall clock: wait for the kernels
