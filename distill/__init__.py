"""Real-scale SBv2 / NASA-T distillation of ComfyUI checkpoints (see :mod:`.recipe`)."""
