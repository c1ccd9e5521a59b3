"""NASA-T's trainer on several processes (nasa_core.vsd.DataParallel): two CPU processes under torchrun (gloo) with
half the batch each train the tiny NASA-T trainer to the weights one process trains with the whole batch, and a
two-process run stopped after two iterations and resumed from its checkpoint ends where the straight run ends."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nasa_test_support as support
from nasa_core import vsd

T = support.load_by_path("vsd_nasa_t_tests_dp", Path(__file__).parent / "test_vsd_nasa_t.py")
WORKER = Path(__file__).parent / "vsd_dp_worker.py"


def _torchrun(procs, out, steps, resume=None):
    support.launch(procs, WORKER, [out, steps] + ([resume] if resume else []), timeout=300)
    return torch.load(out, weights_only=False), json.loads(Path(str(out) + ".json").read_text())


def _close(a, b):
    for net in ("student", "lora"):
        for k, v in a[net].items():
            assert torch.allclose(v, b[net][k], rtol=1e-5, atol=1e-6), (net, k, (v - b[net][k]).abs().max())


def test_two_processes_train_the_one_process_weights(tmp_path):
    one = T.make("nasa-t", seed=2)
    logs = [one.step(T.PROMPTS) for _ in range(3)]
    two, two_logs = _torchrun(2, tmp_path / "two.pt", 3)
    _close(one.state_dict(), two)
    assert two["steps"] == 3 and torch.equal(two["generator"], one.generator.get_state())
    for a, b in zip(logs, two_logs):           # the logs are the whole batch's, gathered
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 * (1 + abs(a[k])) for k in a), (a, b)
    assert not torch.equal(one.state_dict()["student"]["inp.weight"], T.make("nasa-t", seed=2).student.inp.weight)
    # stopped after 2 iterations, resumed by new processes: where the straight run ends
    first, _ = _torchrun(2, tmp_path / "first.pt", 2)
    assert first["steps"] == 2
    resumed, _ = _torchrun(2, tmp_path / "resumed.pt", 1, resume=tmp_path / "first.pt")
    _close(two, resumed)


def test_shares_and_bad_worlds():
    dp = [vsd.DataParallel(r, 2, lambda ts: None) for r in range(2)]
    assert [d.share(4) for d in dp] == [slice(0, 2), slice(2, 4)]
    with pytest.raises(ValueError, match="batch of 5 does not split into 2 equal shares"):
        dp[0].share(5)
    with pytest.raises(ValueError, match="rank 2 is not in 0 .. 1"):
        vsd.DataParallel(2, 2, lambda ts: None)
    trainer = T.make("nasa-t", seed=2)
    trainer.data_parallel = vsd.DataParallel(0, 2, lambda ts: None)
    with pytest.raises(ValueError, match="regression warm start runs in one process"):
        trainer.regression_step(4)
