"""The evaluation's CLIP scorer (evaluation/clip.py) on a tiny random-weight CLIP written to disk as transformers
writes a checkpoint, with CLIP's real tokenizer files (ComfyUI ships them in comfy/sd1_tokenizer): it loads from the
folder, prepares images as transformers' own CLIP image processor does, embeds as the model does, and names what is
missing in a folder that is not a CLIP checkpoint."""
from __future__ import annotations

import shutil

import pytest
import torch

from nasa_evaluation import clip as C


@pytest.fixture(scope="module")
def folder(comfy, tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel
    path = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(path)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(comfy.dir / "comfy" / "sd1_tokenizer" / name, path / name)
    return path


def _images(n=2, h=48, w=64, seed=1):
    """Smooth random images (ComfyUI IMAGE): low-frequency colour fields, as photographs are, not white noise."""
    coarse = torch.rand(n, 3, 6, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).movedim(1, -1)


def test_images_are_prepared_as_clips_own_processor_does(folder):
    from transformers import CLIPImageProcessor
    images = _images()
    ours = C.prepare_images(images, 32)
    theirs = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})(
        images=[(im.numpy() * 255).round().astype("uint8") for im in images], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    # PIL's bicubic on 8-bit pixels against torch's antialiased bicubic on floats: a few 8-bit levels apart
    assert (ours - theirs).abs().mean() < 0.02 and (ours - theirs).abs().max() < 0.25
    square = torch.rand(1, 32, 32, 3)           # already the model's size: only the normalisation
    mean, std = (torch.tensor(v)[:, None, None] for v in (C.CLIP_MEAN, C.CLIP_STD))
    expected = (square.movedim(-1, 1) - mean) / std
    torch.testing.assert_close(C.prepare_images(square, 32), expected)


def test_scorer_embeds_as_the_model_does(folder):
    from transformers import CLIPModel, CLIPTokenizerFast
    scorer = C.ClipScorer.from_folder(folder)
    model, tok = CLIPModel.from_pretrained(folder).eval(), CLIPTokenizerFast.from_pretrained(folder)
    images = _images()
    with torch.no_grad():
        want_img = model.get_image_features(pixel_values=C.prepare_images(images, 32))
        want_txt = model.get_text_features(**tok(["a red cube", "a photo of a dog"], padding=True, return_tensors="pt"))
    torch.testing.assert_close(scorer.embed_images(images), want_img)
    torch.testing.assert_close(scorer.embed_texts(["a red cube", "a photo of a dog"]), want_txt)
    assert scorer.image_size == 32 and scorer.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    # padding does not change a text's embedding; a prompt longer than CLIP's 77 tokens is truncated, not refused
    torch.testing.assert_close(scorer.embed_texts(["a red cube"]), want_txt[:1])
    long = scorer.embed_texts(["word " * 200])
    assert long.shape == (1, 16) and torch.isfinite(long).all()


def test_folders_that_are_not_clip_are_named(folder, tmp_path):
    with pytest.raises(C.ClipLoadError, match="no config.json"):
        C.ClipScorer.from_folder(tmp_path)
    from transformers import BertConfig
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(C.ClipLoadError, match="not a CLIP configuration|not CLIP"):
        C.ClipScorer.from_folder(tmp_path)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(folder / "config.json", no_tokenizer / "config.json")
    with pytest.raises(C.ClipLoadError, match="no CLIP tokenizer files"):
        C.ClipScorer.from_folder(no_tokenizer)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(folder, no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    with pytest.raises(C.ClipLoadError, match="no CLIP weights"):
        C.ClipScorer.from_folder(no_weights)


def test_bad_images_and_texts_are_refused(folder):
    scorer = C.ClipScorer.from_folder(folder)
    with pytest.raises(ValueError, match=r"images must be ComfyUI IMAGE tensors \(B, H, W, 3\), got \(2, 3, 8, 8\)"):
        scorer.embed_images(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="takes a list of texts"):
        scorer.embed_texts("a cat")
