"""nasa_core's diffusion helpers and SwiftBrush-v2 (VSD) trainer on a tiny pure-torch network (always run).

The same trainer on the toy world's ComfyUI UNet is exercised in tests/toy/test_toy_models.py.
"""
from __future__ import annotations

import copy

import pytest
import torch

import nasa_test_support as support
from nasa_core import diffusion, vsd


TinyEps = support.TinyEps


WORDS = {"": 0, "red": 1, "a circle": 2, "a square": 3}


def encode(prompts):
    return torch.nn.functional.one_hot(torch.tensor([WORDS[p] for p in prompts]), 8).float()


def eps_fn(module, x, t, cond):
    return module(x, t, cond)


AC = diffusion.scaled_linear_alphas_cumprod()


def make(config=None, seed=0, net_seed=None):
    teacher = TinyEps(seed if net_seed is None else net_seed)
    student = copy.deepcopy(teacher)
    cfg = config or vsd.VSDConfig(student_lr=1e-3, lora_rank=4, lora_scale=8.0, seed=seed)
    return vsd.SBv2Trainer(student, teacher, eps_fn, encode, AC, (3, 8, 8), cfg)


def test_schedule_matches_comfyui_formula():
    # ComfyUI's ModelSamplingDiscrete "linear" schedule: betas linear in sqrt space, 0.00085 .. 0.012.
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    assert torch.allclose(AC, torch.cumprod(1 - betas, 0))
    x0, noise = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    xt = diffusion.add_noise(x0, noise, t, AC)
    assert torch.allclose(diffusion.predict_x0(xt, noise, t, AC), x0, atol=1e-4)
    assert torch.equal(diffusion.cfg(x0, noise, 1.0), noise)


def test_denoising_loss_decreases():
    net = TinyEps()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x0 = torch.rand(8, 3, 8, 8) * 2 - 1
    cond = encode(["a circle"] * 8)
    losses = []
    for i in range(30):
        loss = diffusion.denoising_loss(lambda x, t, c: net(x, t, c), x0, cond, AC, torch.Generator().manual_seed(i % 3))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_lora_starts_as_identity_and_toggles():
    net = TinyEps()
    x, t, c = torch.randn(2, 3, 8, 8), torch.tensor([5, 900]), encode(["red", ""])
    before = net(x, t, c)
    lora = vsd.LoRA(net, rank=2, scale=4.0)
    assert lora.layers == 3                                   # two Conv2d and the one Linear (FiLM)
    assert torch.equal(net(x, t, c), before)
    changed = before
    for key in ("film", "inp", "out"):                        # each adapter reaches the output
        torch.nn.init.normal_(lora.up[key].weight)
        previous, changed = changed, net(x, t, c)
        assert not torch.allclose(changed, previous), key
    with lora.disabled():
        assert torch.equal(net(x, t, c), before)
    assert torch.equal(net(x, t, c), changed)
    lora.remove()
    assert torch.equal(net(x, t, c), before)
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        vsd.LoRA(torch.nn.Conv1d(1, 1, 1), 2, 4.0)
    only_linear = vsd.LoRA(TinyEps(), 2, 4.0, select=lambda name, m: isinstance(m, torch.nn.Linear))
    assert only_linear.layers == 1


def test_vsd_gradient_vanishes_when_student_equals_teacher():
    """kappa = 1 and a fresh LoRA: the frozen and the LoRA teacher agree, so the student gets no gradient."""
    trainer = make(vsd.VSDConfig(student_lr=1e-2, lora_rank=4, lora_scale=8.0, kappa_range=(1.0, 1.0), weighting="eps"))
    before = copy.deepcopy(trainer.student.state_dict())
    out = trainer.step(["a circle", "a square"])
    assert out["grad_abs"] == 0.0
    for k, v in trainer.student.state_dict().items():
        assert torch.equal(v, before[k]), k
    # ... and the teacher's weights never move (only its adapters train).
    assert trainer.lora.up["film"].weight.abs().sum() > 0


@pytest.mark.parametrize("weighting", ["normalized", "eps"])
def test_vsd_steps_are_finite_and_move_the_student(weighting):
    trainer = make(vsd.VSDConfig(student_lr=1e-3, lora_rank=4, lora_scale=8.0, weighting=weighting,
                                 student_timesteps=(999, 499)))
    teacher_before = copy.deepcopy(trainer.teacher.state_dict())
    student_before = copy.deepcopy(trainer.student.state_dict())
    for _ in range(4):
        out = trainer.step(["a circle", "a square", "red", ""])
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), out
    assert any(not torch.equal(v, student_before[k]) for k, v in trainer.student.state_dict().items())
    with trainer.lora.disabled():
        for k, v in trainer.teacher.state_dict().items():
            assert torch.equal(v, teacher_before[k]), k


def test_lora_teacher_learns_the_student_distribution():
    """With the student frozen (lr 0), the LoRA teacher's denoising loss on the student's samples falls."""
    trainer = make(vsd.VSDConfig(student_lr=0.0, lora_lr=3e-2, lora_rank=4, lora_scale=8.0))
    losses = [trainer.step(["a circle"] * 8)["lora"] for _ in range(40)]
    assert sum(losses[-8:]) < 0.8 * sum(losses[:8]), losses


def test_resume_gives_the_same_weights():
    prompts = [["a circle", "red"], ["a square", ""], ["red", "a circle"], ["", "a square"]]
    straight = make(seed=3)
    for p in prompts:
        straight.step(p)
    first = make(seed=3)
    for p in prompts[:2]:
        first.step(p)
    state = copy.deepcopy(first.state_dict())
    resumed = make(seed=99, net_seed=3)   # same frozen teacher, other RNG: the rest must come from the state
    torch.nn.init.normal_(resumed.student.inp.weight)
    resumed.load_state_dict(state)
    for p in prompts[2:]:
        resumed.step(p)
    for k, v in straight.student.state_dict().items():
        assert torch.equal(v, resumed.student.state_dict()[k]), k
    for k, v in straight.lora.state_dict().items():
        assert torch.equal(v, resumed.lora.state_dict()[k]), k


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="weighting"):
        make(vsd.VSDConfig(weighting="dmd"))
    with pytest.raises(ValueError, match="t_range"):
        make(vsd.VSDConfig(t_range=(500, 1000)))
    with pytest.raises(ValueError, match="student_timesteps"):
        make(vsd.VSDConfig(student_timesteps=(1000,)))
    with pytest.raises(ValueError, match="lora_updates"):
        make(vsd.VSDConfig(lora_updates=0))


def test_v_prediction_conversion_and_ddim():
    """eps_from_v then predict_x0 is x0 = sqrt(a) x_t - sqrt(1 - a) v (ComfyUI's V_PREDICTION), and the
    exact eps makes DDIM land on x0 from any start."""
    x0, noise = torch.rand(3, 3, 8, 8) * 2 - 1, torch.randn(3, 3, 8, 8)
    t = torch.tensor([999, 500, 20])
    x_t = diffusion.add_noise(x0, noise, t, AC)
    a = AC[t].float().view(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    assert torch.allclose(diffusion.predict_x0(x_t, diffusion.eps_from_v(v, x_t, t, AC), t, AC), x0, atol=1e-4)
    assert torch.allclose(diffusion.eps_from_v(v, x_t, t, AC), noise, atol=1e-4)

    def exact_eps(x, tt, cond):                 # the eps that points every x_t at x0
        s, n = AC[tt].float().sqrt().view(-1, 1, 1, 1), (1 - AC[tt].float()).sqrt().view(-1, 1, 1, 1)
        return (x - s * x0) / n
    out = diffusion.ddim_sample(exact_eps, torch.randn(3, 3, 8, 8), None, None, 2.5, AC, steps=5)
    assert torch.allclose(out, x0, atol=1e-3)


def test_regression_pool_warm_start_and_mixed_loss():
    """The regression warm start pulls a student with another parameterization (v) onto the teacher's
    DDIM samples; with regression_weight > 0 the VSD step reports and uses the regression loss;
    lora_updates = 2 trains the LoRA teacher twice per step; the pool survives a resume."""
    teacher = TinyEps(0)

    def eps_from_v(module, x, t, cond):
        return diffusion.eps_from_v(module(x, t, cond), x, t, AC)
    cfg = vsd.VSDConfig(student_lr=3e-3, lora_rank=4, lora_scale=8.0, student_timesteps=(999, 499),
                        regression_weight=0.5, lora_updates=2)
    trainer = vsd.SBv2Trainer(copy.deepcopy(teacher), teacher, eps_fn, encode, AC, (3, 8, 8), cfg,
                              student_eps_fn=eps_from_v)
    with pytest.raises(RuntimeError, match="build_pool"):
        trainer.regression_step(4)
    trainer.build_pool(["a circle", "a square", "red", ""] * 4, ode_steps=4, kappa=2.0, batch=8)
    assert trainer.pool[1].shape == trainer.pool[2].shape == (16, 3, 8, 8) and trainer.pool_kappa == 2.0
    losses = [trainer.regression_step(8)["regression"] for _ in range(40)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-8:]) < 0.7 * sum(losses[:8]), losses
    lora_before = copy.deepcopy(trainer.lora.state_dict())
    out = trainer.step(["a circle", "a square"])
    assert set(out) == {"student", "lora", "grad_abs", "regression"}
    assert any(not torch.equal(v, lora_before[k]) for k, v in trainer.lora.state_dict().items())
    state = copy.deepcopy(trainer.state_dict())
    other = vsd.SBv2Trainer(copy.deepcopy(teacher), teacher, eps_fn, encode, AC, (3, 8, 8), cfg,
                            student_eps_fn=eps_from_v)
    other.load_state_dict(state)
    assert other.pool[0] == trainer.pool[0] and torch.equal(other.pool[2], trainer.pool[2])
