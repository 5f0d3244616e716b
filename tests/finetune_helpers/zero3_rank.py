"""One rank of the 2-process ZeRO-3 test (run by torchrun from tests/integration/test_finetune_zero3.py).

Trains through the real worker, then records what ZeRO-3 did to this rank's parameters and, on
rank 0, the parameters gathered from both ranks (to compare with the consolidated saved model).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main() -> None:
    from rtune.components.finetune.worker import TrainingJob, train

    job_path, report_dir = sys.argv[1], Path(sys.argv[2])
    trained = train(TrainingJob.load(job_path))
    import deepspeed

    rank = int(os.environ["RANK"])
    model = trained.trainer.model
    partitions = {
        name: {"full": int(p.ds_numel), "local": int(p.ds_tensor.numel()), "now": p.numel()}
        for name, p in model.named_parameters()
    }
    (report_dir / f"partition-rank{rank}.json").write_text(json.dumps(partitions))
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        if rank == 0:
            gathered = {name: p.detach().clone() for name, p in model.named_parameters()}
            torch.save(gathered, report_dir / "gathered.pt")


if __name__ == "__main__":
    main()
