"""Framework-agnostic NASA: the attention math (NASA, and NAG and VSF beside it), validation helpers, FLOP counts (:mod:`.flops`) and the evaluation metrics (:mod:`.metrics`). Pure torch; imports nothing from ComfyUI."""
from .attention import (GUARD_MODES, Guard, NegativeTerm, additive_mask, attention, key_mask_of, nasa_attention,
                        reference_attention, reference_nasa_attention, row_index, steer)
from .methods import METHODS, Nag, Vsf, check_method, reference_nag, reference_vsf, vsf_attention
from .validation import check_alpha, check_finite

__all__ = ["GUARD_MODES", "Guard", "NegativeTerm", "additive_mask", "key_mask_of", "attention", "nasa_attention", "reference_attention",
           "reference_nasa_attention", "row_index", "steer", "check_alpha", "check_finite", "METHODS", "Nag", "Vsf",
           "check_method", "reference_nag", "reference_vsf", "vsf_attention"]

# alpha guidance from the paper (section 6.1, "Implementation Details"): NASA-I defaults per backbone.
PAPER_ALPHA = {"SD1.5": 0.1, "SD2.1": 0.2, "PixArt-alpha": 0.5}
DEFAULT_ALPHA = PAPER_ALPHA["SD1.5"]
