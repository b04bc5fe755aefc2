"""Run by every rank under torchrun: the data-parallel Train_r program; writes OUT/rank-R.json and .pt."""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from dp_program import bn_program, bn_recalibration, endpoint_program, m2m_program, program  # noqa: E402

from llpf import distributed as D  # noqa: E402

out = Path(sys.argv[1])
device = D.init("cpu", timeout_s=30)
record, fp, model, data = program(D.DataParallelTrainR)
record["rank"], record["world"], record["run_id"] = D.rank(), D.world_size(), D.shared_run_id()
record["test"] = D.evaluate_sharded(model, data.test, 50, F.cross_entropy)
record["test_batches"] = D.evaluate_sharded(model, list(data.test.batches(50)), 50, F.cross_entropy)
record["in_sync"] = D.in_sync(fp.flat)
probe = fp.flat.clone()
if D.rank() == 1:
    probe[7] += 1e-3
record["probe_in_sync"] = D.in_sync(probe)
record["probe_repaired"] = D.ensure_synced_(probe)
record["probe_equal_after"] = torch.equal(probe, fp.flat)
record["m2m_losses"], m2m_flat = m2m_program(D.DataParallelTrainR)
running_mean, running_var = bn_program(D.DataParallelTrainR)
record["endpoint_losses"], endpoint_flat = endpoint_program()  # under a process group: data-parallel
recal_mean, recal_var = bn_recalibration(lambda model, split: D.recompute_bn_stats_sharded(model, split, 64))
try:  # a global batch that does not split over the ranks: refused before the path starts
    from llpf.methods.m2m import M2M
    M2M(model, {"batch_size": 31}, data.train, dest=model)
except D.DistributedError as e:
    record["uneven_batch"] = str(e)
torch.save({"flat": fp.flat, "m2m_flat": m2m_flat, "running_mean": running_mean, "running_var": running_var,
            "endpoint_flat": endpoint_flat, "recal_mean": recal_mean, "recal_var": recal_var},
           out / f"rank-{D.rank()}.pt")
(out / f"rank-{D.rank()}.json").write_text(json.dumps(record))
D.cleanup()
