"""The open-vocabulary detector judge (evaluation/detector.py) on a tiny random-weight OWL-ViT and OWLv2 written to
disk as transformers writes them, with CLIP's real tokenizer files (ComfyUI's comfy/sd1_tokenizer): each query's
confidence is its best box's, the one transformers' own post-processing keeps above a threshold; bad folders and
inputs are named."""
from __future__ import annotations

import shutil

import pytest
import torch

from nasa_evaluation import detector as D
from nasa_evaluation.clip import ClipLoadError

QUERIES = ["glasses", "a park bench", "a man"]


def _image(seed=2, h=40, w=56):
    coarse = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0].movedim(0, -1)


@pytest.fixture(scope="module", params=["owlvit", "owlv2"])
def folder(comfy, tmp_path_factory, request):
    return owl_folder(request.param, tmp_path_factory.mktemp(request.param), comfy.dir)


def owl_folder(kind, path, comfy_dir):
    """A tiny random OWL-ViT ("owlvit") or OWLv2 ("owlv2") with its processor, saved in ``path``."""
    import transformers
    from transformers import CLIPTokenizerFast
    prefix = {"owlvit": "OwlViT", "owlv2": "Owlv2"}[kind]
    config = getattr(transformers, f"{prefix}Config")(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8), projection_dim=32)     # OWL: the text width
    torch.manual_seed(0)
    getattr(transformers, f"{prefix}ForObjectDetection")(config).save_pretrained(path)
    tokenizer = CLIPTokenizerFast.from_pretrained(comfy_dir / "comfy" / "sd1_tokenizer")
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=getattr(transformers, f"{prefix}ImageProcessor")(size={"height": 32, "width": 32}),
        tokenizer=tokenizer)
    processor.save_pretrained(path)
    return path


def test_confidences_are_the_best_boxes(folder):
    import transformers
    det = D.Detector.from_folder(folder, threshold=0.5)
    kind = transformers.AutoConfig.from_pretrained(folder).model_type
    assert det.source == f"{kind} {folder.name} @0.5" and det.max_tokens == 16
    image = _image()
    got = det.max_scores(image, QUERIES)
    assert got.shape == (3,) and ((got > 0) & (got < 1)).all()
    # transformers' own way, as its zero-shot detection pipeline asks: one query at a time, its boxes scored by
    # post_process_grounded_object_detection; the best box's score is ours
    processor = getattr(transformers, type(det.processor).__name__).from_pretrained(folder)
    for q, query in enumerate(QUERIES):
        inputs = processor(text=[[query]], images=[(image * 255).round().byte().numpy()], return_tensors="pt",
                           padding="max_length", max_length=16, truncation=True)
        with torch.no_grad():
            outputs = det.model(**inputs)
        boxes = processor.post_process_grounded_object_detection(outputs, threshold=0.0,
                                                        target_sizes=torch.tensor([[40, 56]]))[0]
        assert float(boxes["scores"].max()) == pytest.approx(float(got[q]), abs=1e-6), query
    # the image matters, and the order of the queries is the order of the answers
    assert not torch.allclose(det.max_scores(_image(seed=5), QUERIES), got)
    torch.testing.assert_close(det.max_scores(image, QUERIES[::-1]), got.flip(0), atol=1e-6, rtol=0)


def test_bad_folders_and_inputs_are_named(folder, tmp_path):
    with pytest.raises(ClipLoadError, match="no config.json"):
        D.Detector.from_folder(tmp_path)
    from transformers import CLIPConfig
    CLIPConfig().save_pretrained(tmp_path)
    with pytest.raises(ClipLoadError, match="describes a 'clip' model; the evaluation reads owlv2 or owlvit"):
        D.Detector.from_folder(tmp_path)
    no_processor = tmp_path / "no_processor"
    shutil.copytree(folder, no_processor, ignore=shutil.ignore_patterns("*token*", "vocab.json", "merges.txt",
                                                                       "preprocessor_config.json"))
    with pytest.raises(ClipLoadError, match="incomplete"):
        D.Detector.from_folder(no_processor)
    with pytest.raises(ValueError, match=r"--detector-threshold must be in \(0, 1\), got 1.5"):
        D.Detector.from_folder(folder, threshold=1.5)
    det = D.Detector.from_folder(folder)
    with pytest.raises(ValueError, match="one ComfyUI IMAGE row"):
        det.max_scores(_image()[None], QUERIES)
    with pytest.raises(ValueError, match="non-empty list of queries"):
        det.max_scores(_image(), "glasses")
