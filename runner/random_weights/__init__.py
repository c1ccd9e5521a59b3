"""Random-weight stand-ins for model files: ComfyUI's own model, text-encoder and VAE classes with seeded weights,
for the runner's ``--random-weights`` and the tests (no model files reach these machines).

:mod:`.models`: the UNet families (SD1.5, SD2.1, SDXL) and the DiT families' diffusion models; :mod:`.dit`: the
DiT families' whole pipelines (text encoders, VAEs, LoRAs, loader nodes).
"""
