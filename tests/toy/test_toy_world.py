"""The toy world's generator and judges (pure torch, always run)."""
from __future__ import annotations

import pytest
import torch

from nasa_toy import judges
from nasa_toy import world


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_generator_is_seeded():
    a, ca, _ = world.sample_batch(16, _gen(3))
    b, cb, _ = world.sample_batch(16, _gen(3))
    c, _, _ = world.sample_batch(16, _gen(4))
    assert torch.equal(a, b) and ca == cb
    assert not torch.equal(a, c)
    assert a.shape == (16, 3, world.SIZE, world.SIZE) and a.min() >= 0 and a.max() <= 1


def test_priors_are_skewed_as_documented():
    scene = world.sample_scenes(6000, _gen(1))
    for shape, color in world.PRIOR_COLOR.items():
        mine = scene.shape == world.SHAPES.index(shape)
        share = (scene.color[mine] == world.COLORS.index(color)).float().mean().item()
        assert abs(share - world.PRIOR_COLOR_P) < 0.04, (shape, share)
    black = (scene.background == world.BACKGROUNDS.index("black")).float().mean().item()
    assert abs(black - world.BACKGROUND_P[0]) < 0.03
    # At most one defect per image, each with DEFECT_P.
    assert int(scene.defects.sum(1).max()) == 1
    assert torch.allclose(scene.defects.float().mean(0), torch.full((3,), world.DEFECT_P), atol=0.025)


def test_captions_name_attributes_only_sometimes():
    _, captions, scene = world.sample_batch(2000, _gen(2))
    shapes = [world.SHAPES[int(s)] for s in scene.shape]
    assert all(s in c for s, c in zip(shapes, captions))              # the shape always
    colors = [world.COLORS[int(c)] for c in scene.color]
    named = sum(col in cap for col, cap in zip(colors, captions)) / len(captions)
    assert abs(named - world.MENTION_P["color"]) < 0.05
    assert any(c == "a circle" for c in captions)                      # bare prompts exist


@pytest.fixture(scope="module")
def accuracy():
    return judges.judge_accuracy(n=1500, seed=77)


@pytest.mark.parametrize("attribute", ["valid", "shape", "color", "size", "position", "background",
                                       "blurry", "noisy", "stray"])
def test_judges_are_at_least_99_percent_accurate(accuracy, attribute):
    assert accuracy[attribute] >= 0.99, accuracy


def test_judges_read_a_constructed_scene():
    g = _gen(5)
    for shape in world.SHAPES:
        for defects in ((False, False, False), (True, False, False), (False, True, False), (False, False, True)):
            c = world.Constraints(shape=shape, color="yellow", size="large", position="right", background="gray",
                                  defects=defects)
            v = judges.judge(world.render(world.sample_scenes(4, g, c), g))
            assert v.valid.all()
            assert (v.shape == world.SHAPES.index(shape)).all(), (shape, defects, v.measures)
            assert (v.color == world.COLORS.index("yellow")).all()
            assert (v.position == world.POSITIONS.index("right")).all()
            assert v.has("size", "large").all() and v.has("background", "gray").all()
            assert torch.equal(v.defects, torch.tensor(defects).expand(4, 3)), (shape, defects, v.measures)


def test_judges_call_noise_and_blank_images_invalid():
    noise = torch.rand(8, 3, world.SIZE, world.SIZE, generator=_gen(6))
    blank = torch.full((2, 3, world.SIZE, world.SIZE), 0.5)
    v = judges.judge(torch.cat([noise, blank]))
    assert not v.valid.any()
    assert (v.color == -1).all() and v.any_defect.all()


def test_connected_components():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 0:2, 0:2] = True        # component A
    mask[0, 4:6, 3:6] = True        # component B
    mask[0, 2, 5] = True            # diagonal-only neighbour of nothing: its own component
    labels = judges.connected_components(mask)[0]
    assert labels[0, 0] == labels[1, 1] != 0
    assert labels[4, 3] == labels[5, 5] != labels[0, 0]
    assert len(set(labels[mask[0]].tolist())) == 3
    assert (labels[~mask[0]] == 0).all()


def test_prompt_pairs():
    pairs = world.pairs()
    assert world.pairs("tune") and world.pairs("heldout")
    assert set(world.pairs("tune")).isdisjoint(world.pairs("heldout"))
    for p in pairs:
        attribute, value = p.target
        word = world.DEFECT_WORDS.get(value, value) if attribute == "defect" else value
        assert word not in p.positive, p          # the positive never names what the negative removes
        assert word in p.negative
    with pytest.raises(ValueError, match="split"):
        world.pairs("test")
    with pytest.raises(ValueError, match="unknown color"):
        world.sample_scenes(1, _gen(), world.Constraints(color="purple"))
