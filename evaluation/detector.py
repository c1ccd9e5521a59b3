"""An open-vocabulary detector as the second judge of removal (the paper's Table 2 question: is the unwanted thing
gone?) and of what must stay: OWL-ViT or OWLv2 from a ``transformers`` folder on the user's disk (e.g. a copy of
``google/owlv2-base-patch16-ensemble``; never downloaded).

For an image and text queries (the pair's ``gone`` and each of its ``keep``), the detector's confidence that a
query is in the image is its best box's: the largest sigmoid of the class logits over the image's patches, as
transformers' ``post_process_grounded_object_detection`` scores boxes (one query at a time). A query counts as
present at or above ``threshold`` (0.1, the value OWL-ViT's examples use). Images are prepared by the folder's own
image processor from 8-bit RGB, as the saved PNGs are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .clip import ClipLoadError

MODEL_TYPES = {"owlvit": ("OwlViTForObjectDetection", "OwlViTProcessor"),
               "owlv2": ("Owlv2ForObjectDetection", "Owlv2Processor")}
DEFAULT_THRESHOLD = 0.1


class Detector:
    def __init__(self, model, processor, device="cpu", source: str = "detector", threshold: float = DEFAULT_THRESHOLD):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"--detector-threshold must be in (0, 1), got {threshold!r}")
        self.model = model.eval().float().to(device)
        self.processor, self.device, self.threshold = processor, torch.device(device), float(threshold)
        self.source = f"{source} @{threshold:g}"
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_folder(cls, folder, device="cpu", threshold: float = DEFAULT_THRESHOLD) -> "Detector":
        import transformers
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ClipLoadError(f"--detector {folder}: not a transformers detector folder (no config.json); give a "
                                "local copy of an OWL-ViT or OWLv2 checkpoint")
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        if config.model_type not in MODEL_TYPES:
            raise ClipLoadError(f"--detector {folder}: config.json describes a {config.model_type!r} model; the "
                                f"evaluation reads {' or '.join(sorted(MODEL_TYPES))} (OWL-ViT, OWLv2)")
        model_class, processor_class = (getattr(transformers, n) for n in MODEL_TYPES[config.model_type])
        try:
            processor = processor_class.from_pretrained(folder, local_files_only=True)
            model = model_class.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ClipLoadError(f"--detector {folder}: incomplete ({e})") from None
        return cls(model, processor, device, source=f"{config.model_type} {folder.name}", threshold=threshold)

    @torch.no_grad()
    def max_scores(self, image: torch.Tensor, queries: Sequence[str]) -> torch.Tensor:
        """(Q,) the best box's confidence for each query in one ComfyUI IMAGE row (H, W, 3) in [0, 1]."""
        if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[-1] != 3:
            raise ValueError("evaluation.detector: one ComfyUI IMAGE row (H, W, 3) at a time")
        if isinstance(queries, str) or not queries:
            raise ValueError("evaluation.detector: max_scores takes a non-empty list of queries")
        pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        inputs = self.processor(text=[list(queries)], images=[pixels], return_tensors="pt", padding="max_length",
                                truncation=True, max_length=self.max_tokens)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        logits = self.model(**inputs).logits                          # (1, patches, queries)
        return torch.sigmoid(logits[0].float()).amax(dim=0).cpu()
