"""Run by every rank under torchrun: the data-parallel Train_r program; writes OUT/rank-R.json and .pt."""
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from dp_program import program  # noqa: E402

from llpf import distributed as D  # noqa: E402

out = Path(sys.argv[1])
device = D.init("cpu", timeout_s=30)
record, fp, model, data = program(D.DataParallelTrainR)
record["rank"], record["world"] = D.rank(), D.world_size()
record["test"] = D.evaluate_sharded(model, data.test, 50, F.cross_entropy)
record["in_sync"] = D.in_sync(fp.flat)
probe = fp.flat.clone()
if D.rank() == 1:
    probe[7] += 1e-3
record["probe_in_sync"] = D.in_sync(probe)
record["probe_repaired"] = D.ensure_synced_(probe)
record["probe_equal_after"] = torch.equal(probe, fp.flat)
torch.save(fp.flat, out / f"rank-{D.rank()}.pt")
(out / f"rank-{D.rank()}.json").write_text(json.dumps(record))
D.cleanup()
