"""Training of the ICG modules: data, embedded base models, stage-1 alignment pretraining."""
