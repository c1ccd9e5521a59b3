"""HPSv2 from the user's checkpoint file (evaluation/hps.py) against OpenCLIP itself, the package HPSv2 is built on:
a tiny random-weight OpenCLIP ViT (OpenCLIP's own CLIP class, GELU as ViT-H-14) saved as HPSv2's files are, read
back as a transformers CLIP, embeds images and prompts as OpenCLIP embeds them, with OpenCLIP's own tokenizer on
its side and CLIP's (ComfyUI's sd1_tokenizer files) on ours. OpenCLIP imports torchvision; the runner's stand-in
serves its imports here (nothing of torchvision is called)."""
from __future__ import annotations

import shutil

import pytest
import torch

from nasa_evaluation import clip as C, hps as H

TEXTS = ["a photo of a dog on the grass", "Blurry, LOW quality; watermark!", "a red cube " * 40]


@pytest.fixture(scope="module")
def openclip(comfy):
    import open_clip
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=16, vision_cfg=dict(image_size=32, layers=2, width=32, head_width=16, patch_size=8),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=3))
    with torch.no_grad():           # OpenCLIP starts its logit scale at log(1/0.07): move it off the default
        model.logit_scale.fill_(4.2)
    return open_clip, model.eval()


@pytest.fixture(scope="module")
def tokenizer_folder(comfy, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip_tokenizer")
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(comfy.dir / "comfy" / "sd1_tokenizer" / name, path / name)
    return path


def _images(n=2):
    coarse = torch.rand(n, 3, 5, 7, generator=torch.Generator().manual_seed(3))
    return torch.nn.functional.interpolate(coarse, size=(40, 56), mode="bilinear", align_corners=False).movedim(1, -1)


@pytest.mark.parametrize("wrapped", [True, False], ids=["state_dict", "bare"])
def test_hps_file_embeds_as_openclip_does(openclip, tokenizer_folder, tmp_path, wrapped):
    open_clip, model = openclip
    state = model.state_dict()
    path = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}} if wrapped else state, path)
    scorer = H.load_hps(path, tokenizer_folder, heads=(2, 2))
    assert scorer.source == "HPSv2 HPS_v2_compressed.pt" and scorer.image_size == 32
    assert scorer.logit_scale == pytest.approx(float(torch.tensor(4.2).exp()))
    images = _images()
    with torch.no_grad():
        want_images = model.encode_image(C.prepare_images(images, 32))
        want_texts = model.encode_text(open_clip.tokenize(TEXTS))       # OpenCLIP's tokenizer, its 77 tokens
    torch.testing.assert_close(scorer.embed_images(images), want_images, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scorer.embed_texts(TEXTS), want_texts, rtol=1e-4, atol=1e-5)
    # the HPS score is the cosine of image and prompt, as hpsv2's own scoring computes it
    want = torch.nn.functional.cosine_similarity(want_images, want_texts[:2])
    got = torch.nn.functional.cosine_similarity(scorer.embed_images(images), scorer.embed_texts(TEXTS[:2]))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_wrong_heads_or_activation_embed_otherwise(openclip, tokenizer_folder, tmp_path):
    """The check above can fail: the shapes alone do not fix the heads or the activation."""
    _, model = openclip
    path = tmp_path / "hps.pt"
    torch.save(model.state_dict(), path)
    images = _images()
    with torch.no_grad():
        want = model.encode_image(C.prepare_images(images, 32))
    for heads, act in (((1, 2), "gelu"), ((2, 2), "quick_gelu")):
        got = H.load_hps(path, tokenizer_folder, heads=heads, act=act).embed_images(images)
        assert (got - want).abs().max() > 1e-3, (heads, act)


def test_files_that_are_not_hps_are_named(openclip, tokenizer_folder, tmp_path):
    _, model = openclip
    with pytest.raises(C.ClipLoadError, match="no such file"):
        H.load_hps(tmp_path / "missing.pt", tokenizer_folder)
    (tmp_path / "torn.pt").write_bytes(b"not a torch file")
    with pytest.raises(C.ClipLoadError, match="cannot read it as a torch checkpoint"):
        H.load_hps(tmp_path / "torn.pt", tokenizer_folder)
    torch.save({"state_dict": {"conv.weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(C.ClipLoadError, match="not an OpenCLIP .HPSv2. checkpoint: no visual.conv1.weight"):
        H.load_hps(tmp_path / "other.pt", tokenizer_folder)
    state = dict(model.state_dict(), **{"visual.attn_pool.query": torch.zeros(2)})
    torch.save(state, tmp_path / "coca.pt")
    with pytest.raises(C.ClipLoadError, match="does not know: visual.attn_pool.query"):
        H.load_hps(tmp_path / "coca.pt", tokenizer_folder, heads=(2, 2))
    torch.save(model.state_dict(), tmp_path / "hps.pt")
    with pytest.raises(C.ClipLoadError, match="--hps .*hps.pt: no CLIP tokenizer files .* in None"):
        H.load_hps(tmp_path / "hps.pt", None, heads=(2, 2))
    with pytest.raises(C.ClipLoadError, match=f"no CLIP tokenizer files .* in {tmp_path}"):
        H.load_hps(tmp_path / "hps.pt", tmp_path, heads=(2, 2))
