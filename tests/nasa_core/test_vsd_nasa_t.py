"""NASA-T in nasa_core's SwiftBrush-v2 trainer on a tiny pure-torch network (always run): the negative
pool, where each mode sends the negative (frozen teacher, LoRA teacher, student), alpha's draw,
micro-batches, resume and the optional clamped alignment loss.

The same trainer on the toy world's ComfyUI models is exercised in tests/distill/test_nasa_t.py.
"""
from __future__ import annotations

import copy

import pytest
import torch

import nasa_test_support as support
from nasa_core import diffusion, vsd
from nasa_toy import world as toy_world

WORDS = {"": 0, "a red circle": 1, "a blue square": 2, "red": 3, "blue": 4, "noisy": 5, "a triangle": 6}
NEGATIVES = ["red", "blue", "noisy", "a triangle"]
PROMPTS = ["a red circle", "a blue square", "a red circle", "a blue square"]


def encode(prompts):
    return torch.nn.functional.one_hot(torch.tensor([WORDS[p] for p in prompts]), 8).float()


TinyEps = support.TinyEps      # negative=(neg_cond, alpha) steers it the way NASA does


def eps_fn(module, x, t, cond, negative=None):
    return module(x, t, cond, negative=negative)


AC = diffusion.scaled_linear_alphas_cumprod()


def make(mode="nasa-t", seed=0, net_seed=None, eps=eps_fn, pool=None, **overrides):
    teacher = TinyEps(seed if net_seed is None else net_seed)
    align_fn = overrides.pop("align_fn", None)
    settings = dict(student_lr=1e-3, lora_rank=4, lora_scale=8.0, seed=seed, **vsd.mode_switches(mode))
    cfg = vsd.VSDConfig(**{**settings, **overrides})
    return vsd.SBv2Trainer(copy.deepcopy(teacher), teacher, eps, encode, AC, (3, 8, 8), cfg,
                           negatives=pool or vsd.NegativePool(NEGATIVES), align_fn=align_fn)


def test_negative_pool_rules():
    g = torch.Generator().manual_seed(0)
    pool = vsd.NegativePool(NEGATIVES + ["red", "  ", ""])          # duplicates and blanks dropped
    assert pool.negatives == NEGATIVES
    drawn = [pool.draw(["a red circle"], g)[0] for _ in range(200)]
    assert "red" not in drawn, "a negative naming a word of the prompt must be redrawn"
    assert set(drawn) == {"blue", "noisy", "a triangle"}, "every allowed negative is drawn"
    excl = vsd.NegativePool(NEGATIVES, exclude=[("a red circle", "blue")])
    assert {excl.draw(["a red circle"], g)[0] for _ in range(100)} == {"noisy", "a triangle"}
    assert {excl.draw(["a blue square"], g)[0] for _ in range(100)} == {"red", "noisy", "a triangle"}
    assert vsd.NegativePool(["red"]).draw(["a red circle", "a triangle"], g) == ["", "red"]
    assert pool.draw(PROMPTS, torch.Generator().manual_seed(5)) == pool.draw(PROMPTS, torch.Generator().manual_seed(5))
    assert vsd.shares_a_word("A Red circle", "red, blurry") and not vsd.shares_a_word("a red circle", "a square")
    with pytest.raises(ValueError, match="no negative prompts"):
        vsd.NegativePool(["", "  "])


def test_negative_pool_file(tmp_path):
    path = tmp_path / "negatives.txt"
    path.write_text("# quality\nblurry\n\nnoisy, low quality\n", encoding="utf-8")
    assert vsd.NegativePool.from_file(path).negatives == ["blurry", "noisy, low quality"]
    path.write_text("# only comments\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="negatives.txt holds no negative prompt"):
        vsd.NegativePool.from_file(path)


def test_toy_world_pool_never_pairs_a_heldout_prompt_with_its_negative():
    negatives = toy_world.negative_prompts()
    assert len(negatives) == len(set(negatives)) == 21 and negatives[-1] == toy_world.QUALITY_NEGATIVE
    held = toy_world.heldout_combinations()
    assert held == [(p.positive, p.negative) for p in toy_world.pairs("heldout")]
    pool, g = vsd.NegativePool(negatives, exclude=held), torch.Generator().manual_seed(0)
    for positive, negative in held:
        drawn = {pool.draw([positive], g)[0] for _ in range(400)}
        assert negative not in drawn and len(drawn) > 10, (positive, drawn)
        assert all(not vsd.shares_a_word(positive, n) for n in drawn)


def test_modes_and_config_errors():
    assert vsd.mode_switches("sbv2") == {"teacher_negative": False, "student_nasa": False, "lora_negative": False}
    assert vsd.mode_switches("nasa-t") == {"teacher_negative": True, "student_nasa": True, "lora_negative": False}
    assert vsd.mode_switches("teacher-lora-neg")["lora_negative"]
    with pytest.raises(ValueError, match="unknown training mode 'nasa'"):
        vsd.mode_switches("nasa")
    with pytest.raises(ValueError, match="alpha_range"):
        make(alpha_range=(0.8, 0.2))
    with pytest.raises(ValueError, match="alpha_range"):
        make(alpha_range=(0.0, float("nan")))
    with pytest.raises(ValueError, match="micro_batch"):
        make(micro_batch=-1)
    teacher = TinyEps()
    with pytest.raises(ValueError, match="needs a NegativePool"):
        vsd.SBv2Trainer(copy.deepcopy(teacher), teacher, eps_fn, encode, AC, (3, 8, 8),
                        vsd.VSDConfig(**vsd.mode_switches("teacher-neg")))
    with pytest.raises(ValueError, match="align_fn"):
        vsd.SBv2Trainer(copy.deepcopy(teacher), teacher, eps_fn, encode, AC, (3, 8, 8), vsd.VSDConfig(align_weight=0.1))


def decode(cond):
    names = {v: k for k, v in WORDS.items()}
    return [names[i] for i in cond.argmax(1).tolist()]


@pytest.mark.parametrize("mode", sorted(vsd.MODES))
def test_each_mode_sends_the_negative_where_the_paper_says(mode):
    """Record every network call of one iteration: which network (student, frozen teacher = LoRA
    off, LoRA teacher), which prompts it saw and whether NASA steered it."""
    calls = []
    holder = {}

    def recording(module, x, t, cond, negative=None):
        trainer = holder["trainer"]
        who = "student" if module is trainer.student else ("lora" if trainer.lora.enabled else "teacher")
        calls.append((who, tuple(decode(cond)), None if negative is None else (tuple(decode(negative[0])), negative[1])))
        return eps_fn(module, x, t, cond, negative)

    trainer = holder["trainer"] = make(mode, eps=recording, alpha_range=(0.25, 0.75))
    out = trainer.step(PROMPTS)
    switches = vsd.mode_switches(mode)
    by = {w: [c for c in calls if c[0] == w] for w in ("student", "teacher", "lora")}
    prompts = tuple(PROMPTS)
    # The frozen teacher: conditional + (negative if teacher_negative else unconditional), one pair.
    assert sorted(c[1] for c in by["teacher"]) == sorted([prompts, by["teacher"][0][1] if switches["teacher_negative"]
                                                          else ("",) * 4])
    second = [c[1] for c in by["teacher"] if c[1] != prompts]
    assert len(second) == 1
    negs = second[0]
    if switches["teacher_negative"]:
        assert all(n in NEGATIVES and n.split()[-1] not in p for n, p in zip(negs, PROMPTS)), negs
    # The LoRA teacher: VSD's fake score (conditional, plus the negative if lora_negative) and its update.
    lora_prompts = [c[1] for c in by["lora"]]
    if switches["lora_negative"]:
        assert lora_prompts.count(prompts) == 2 and negs in lora_prompts and len(lora_prompts) == 3
    else:
        assert lora_prompts == [prompts, prompts]
    assert all(c[2] is None for c in by["teacher"] + by["lora"]), "only the student runs NASA attention"
    # The student: NASA on the same negatives with one alpha in range, or plain.
    assert [c[1] for c in by["student"]] == [prompts]
    steer = by["student"][0][2]
    if switches["student_nasa"]:
        assert steer[0] == negs and 0.25 <= steer[1] <= 0.75 and out["alpha"] == steer[1]
    else:
        assert steer is None and "alpha" not in out
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), out


@pytest.mark.parametrize("mode", sorted(vsd.MODES))
def test_every_mode_trains_and_keeps_the_teacher_frozen(mode):
    trainer = make(mode, student_timesteps=(999, 499))
    teacher_before = copy.deepcopy(trainer.teacher.state_dict())
    student_before = copy.deepcopy(trainer.student.state_dict())
    alphas = []
    for _ in range(4):
        out = trainer.step(PROMPTS)
        assert all(torch.isfinite(torch.tensor(v)) for v in out.values()), out
        alphas.append(out.get("alpha"))
    assert any(not torch.equal(v, student_before[k]) for k, v in trainer.student.state_dict().items())
    with trainer.lora.disabled():
        for k, v in trainer.teacher.state_dict().items():
            assert torch.equal(v, teacher_before[k]), k
    if vsd.mode_switches(mode)["student_nasa"]:
        assert len(set(alphas)) == 4 and all(0 <= a <= 1 for a in alphas), "alpha ~ U(0, 1), one per iteration"


def test_the_student_gradient_reaches_through_the_negative():
    """In NASA-T the student's loss depends on the negative branch: the gradient differs from the
    same iteration with the negative's encoding zeroed."""
    grads = []
    for zero in (False, True):
        def eps(module, x, t, cond, negative=None, zero=zero):
            if negative is not None and zero:
                negative = (torch.zeros_like(negative[0]), negative[1])
            return eps_fn(module, x, t, cond, negative)
        trainer = make("nasa-t", eps=eps, student_lr=0.0, alpha_range=(1.0, 1.0))
        trainer.step(PROMPTS)
        grads.append(trainer.student.film.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])


def test_micro_batches_give_the_whole_batch_update():
    whole, sliced = make("nasa-t", seed=2), make("nasa-t", seed=2, micro_batch=1)
    for _ in range(3):
        a, b = whole.step(PROMPTS), sliced.step(PROMPTS)
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-5 * (1 + abs(a[k])) for k in a), (a, b)
    for net in ("student", "lora"):
        for k, v in getattr(whole, net).state_dict().items():
            assert torch.allclose(v, getattr(sliced, net).state_dict()[k], rtol=1e-5, atol=1e-6), (net, k)


def test_nasa_t_resume_gives_the_same_weights():
    """The negatives and alpha come from the trainer's generator, which the checkpoint carries."""
    batches = [PROMPTS, PROMPTS[::-1], PROMPTS[1:] + PROMPTS[:1], PROMPTS]
    straight = make("nasa-t", seed=4)
    for p in batches:
        straight.step(p)
    first = make("nasa-t", seed=4)
    for p in batches[:2]:
        first.step(p)
    resumed = make("nasa-t", seed=77, net_seed=4)     # other RNG: everything else must come from the state
    torch.nn.init.normal_(resumed.student.inp.weight)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    for p in batches[2:]:
        resumed.step(p)
    for net in ("student", "lora"):
        for k, v in getattr(straight, net).state_dict().items():
            assert torch.equal(v, getattr(resumed, net).state_dict()[k]), (net, k)
    assert straight.step(PROMPTS)["alpha"] == resumed.step(PROMPTS)["alpha"]


def test_clamped_alignment_loss_decays():
    """SBv2's clamped CLIP-style loss: weight * max(0, margin - similarity), weight decaying linearly."""
    seen = []

    def align(x0, prompts):
        seen.append(list(prompts))
        return torch.tanh(x0.mean(dim=(1, 2, 3)))      # a differentiable stand-in similarity in (-1, 1)
    trainer = make("nasa-t", align_fn=align, align_weight=0.5, align_margin=0.37, align_decay_steps=4)
    weights, terms = [], []
    for _ in range(5):
        weights.append(trainer.align_weight())
        out = trainer.step(PROMPTS)
        terms.append(out.get("align"))
    assert weights == [0.5, 0.375, 0.25, 0.125, 0.0]
    assert all(t is not None and t >= 0 for t in terms[:4]) and terms[4] is None
    assert seen[0] == PROMPTS
    # The clamp: a similarity above the margin gives no loss.
    high = make("nasa-t", align_fn=lambda x0, p: torch.ones(len(p)) + 0 * x0.sum(), align_weight=1.0)
    assert high.step(PROMPTS)["align"] == 0.0
