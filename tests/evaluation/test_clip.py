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


def halves(model, tmp_path, text_keys=("text_model.", "text_projection.")):
    """The model saved as ComfyUI users keep CLIP: a clip_vision file and a text encoder file."""
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    vision, text = tmp_path / "clip_vision_b.safetensors", tmp_path / "clip_text_b.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}, vision)
    save_file({k: v for k, v in state.items() if k.startswith(text_keys)}, text)
    return vision, text


def vit_b_widths():
    """A CLIP of ViT-B/32's widths (768 / 512) with one layer per tower: the width table's heads and activation."""
    from transformers import CLIPConfig, CLIPModel
    torch.manual_seed(4)
    return CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=512, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=8, max_position_embeddings=77, eos_token_id=49407,
                         hidden_act="quick_gelu"),
        vision_config=dict(hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=12,
                           image_size=32, patch_size=8, hidden_act="quick_gelu"), projection_dim=16)).eval()


def test_clip_from_comfyui_files_embeds_as_the_whole_model(comfy, tmp_path):
    """A clip_vision file and a text encoder file (ViT-B's widths, 1 layer each: heads and activation from the
    width table) are the transformers CLIP they came from, at CLIP's logit scale of 100; wrong pairs are named."""
    model = vit_b_widths()
    vision, text = halves(model, tmp_path)
    tokenizer = comfy.dir / "comfy" / "sd1_tokenizer"
    scorer = C.ClipScorer.from_files(vision, text, tokenizer)
    assert scorer.logit_scale == pytest.approx(100.0) and scorer.image_size == 32
    assert scorer.source == "CLIP clip_vision_b.safetensors + clip_text_b.safetensors"
    images, texts = _images(), ["a red cube", "a photo of a dog"]
    from transformers import CLIPTokenizerFast
    with torch.no_grad():
        want_img = model.get_image_features(pixel_values=C.prepare_images(images, 32))
        want_txt = model.get_text_features(**CLIPTokenizerFast.from_pretrained(tokenizer)(texts, padding=True,
                                                                                       return_tensors="pt"))
    torch.testing.assert_close(scorer.embed_images(images), want_img)
    torch.testing.assert_close(scorer.embed_texts(texts), want_txt)
    # the width table matters: other heads embed otherwise
    other = C.ClipScorer.from_files(vision, text, tokenizer, heads=(6, 8), acts=("quick_gelu", "quick_gelu"))
    assert (other.embed_images(images) - want_img).abs().max() > 1e-3
    with pytest.raises(C.ClipLoadError, match="--clip-text .*: not the text half of a CLIP .* no text_projection"
                                              ".weight .a text encoder without CLIP's projection"):
        (tmp_path / "no_projection").mkdir()
        C.ClipScorer.from_files(vision, halves(model, tmp_path / "no_projection", ("text_model.",))[1], tokenizer)
    with pytest.raises(C.ClipLoadError, match="--clip-vision .*: not the vision half"):
        C.ClipScorer.from_files(text, text, tokenizer)
    with pytest.raises(C.ClipLoadError, match="--clip-vision .*missing.safetensors: no such file"):
        C.ClipScorer.from_files(tmp_path / "missing.safetensors", text, tokenizer)
    with pytest.raises(C.ClipLoadError, match="--clip-text: no CLIP tokenizer files"):
        C.ClipScorer.from_files(vision, text, tmp_path)


def test_clip_halves_of_unknown_widths_or_two_models_are_refused(folder, tmp_path):
    from transformers import CLIPModel
    model = CLIPModel.from_pretrained(folder)
    vision, text = halves(model, tmp_path)
    with pytest.raises(C.ClipLoadError, match="widths 32 / 32 is none of ViT-B, ViT-L, ViT-H, ViT-bigG"):
        C.ClipScorer.from_files(vision, text, folder)
    from safetensors.torch import load_file, save_file
    state = load_file(text)
    state["text_projection.weight"] = torch.zeros(8, 32)
    save_file(state, tmp_path / "other_text.safetensors")
    with pytest.raises(C.ClipLoadError, match="project to 16 and 8 dimensions: not the two halves of one CLIP"):
        C.ClipScorer.from_files(vision, tmp_path / "other_text.safetensors", folder)
    scorer = C.ClipScorer.from_files(vision, text, folder, heads=(2, 2), acts=("quick_gelu", "quick_gelu"))
    torch.testing.assert_close(scorer.embed_texts(["a cat"]), C.ClipScorer.from_folder(folder).embed_texts(["a cat"]))
