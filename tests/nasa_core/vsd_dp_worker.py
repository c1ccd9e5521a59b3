"""One process of the data-parallel trainer check (test_vsd_data_parallel.py runs it under torchrun on CPU):
the tiny NASA-T trainer of test_vsd_nasa_t.py with nasa_core.vsd.DataParallel over a gloo group.

    python -m torch.distributed.run --nproc_per_node N vsd_dp_worker.py OUT STEPS [RESUME_FROM]

Rank 0 writes the trainer's state after STEPS iterations (from RESUME_FROM's state, if given) to OUT, and the
per-step logs to OUT.json."""
import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent


def main(out, steps, resume=None):
    spec = importlib.util.spec_from_file_location("nasa_conftest", HERE.parent / "conftest.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))   # nasa_core, nasa_test_support, ... by path
    tests = sys.modules["nasa_test_support"].load_by_path("vsd_nasa_t_tests", HERE / "test_vsd_nasa_t.py")
    from nasa_core import vsd
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    def all_reduce(tensors):
        for t in tensors:
            dist.all_reduce(t)
    trainer = tests.make("nasa-t", seed=2)
    trainer.data_parallel = vsd.DataParallel(rank, world, all_reduce)
    if resume:
        trainer.load_state_dict(torch.load(resume, weights_only=False))
    logs = [trainer.step(tests.PROMPTS) for _ in range(steps)]
    if rank == 0:
        torch.save(trainer.state_dict(), out)
        Path(out + ".json").write_text(json.dumps(logs))
    dist.barrier()
    dist.destroy_process_group()
    sys.modules["nasa_runner.comfy_env"].exit_process(0)    # as the pack's scripts end under torchrun


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
