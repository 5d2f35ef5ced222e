"""MACs and parameters of every catalogue case (exact counts: they change only with the code)."""

from decomp.experiments.catalog import case_by_id
from decomp.measure import count_macs, count_params

from .common import case_ids


class Counts:
    params = [case_ids()]
    param_names = ["case"]

    def setup(self, case_id):
        case = case_by_id(case_id)
        self.module = case.build(fit=False, device="meta")  # shapes only: nothing allocated
        self.shape = case.layer.batched_shape(1)

    def track_macs(self, case_id):
        return count_macs(self.module, self.shape)

    track_macs.unit = "MACs (batch 1)"

    def track_params(self, case_id):
        return count_params(self.module)

    track_params.unit = "parameters"
