"""Preference learning: data from feedback, losses, LoRA training, the registry of versions, blending, the worker."""
