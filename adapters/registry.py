"""Every model family NASA supports, in the order they are tried. To add a family: write its module (ending in
``FAMILY = Family(...)``, see :mod:`.family`) and list it here. Each family's ``matches`` is strict (exact classes
and structure), so no two families claim one model and the order only decides which check runs first."""
from . import (chroma, cosmos, flux, flux2, hidream, hunyuan_image21, hunyuan_video, hunyuan_video15, kandinsky5,
               longcat_image, ltx2, ltxv, lumina2, pixart, qwen_image, sd3, unet, wan, z_image)

FAMILIES = tuple(module.FAMILY for module in (unet, flux, sd3, pixart, qwen_image, lumina2, wan, ltxv, chroma,
                                              hunyuan_video, flux2, z_image, hunyuan_video15, hunyuan_image21,
                                              kandinsky5, hidream, cosmos, ltx2, longcat_image))
