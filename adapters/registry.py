"""Every model family NASA supports, in the order they are tried. To add a family: write its module (ending in
``FAMILY = Family(...)``, see :mod:`.family`) and list it here."""
from . import chroma, flux, hunyuan_video, ltxv, lumina2, pixart, qwen_image, sd3, unet, wan

FAMILIES = tuple(module.FAMILY for module in (unet, flux, sd3, pixart, qwen_image, lumina2, wan, ltxv, chroma,
                                              hunyuan_video))
