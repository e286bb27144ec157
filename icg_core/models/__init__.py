"""ICG model components: meta-token encoder, personalization refiner + adapter, cover generator,
checkpoint I/O, and tiny architecture-faithful checkpoints for the embedded default and tests."""
