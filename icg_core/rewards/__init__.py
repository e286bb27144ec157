"""Reward models for stage-2 alignment (docs/architecture.md, "The method"): aesthetic, relevance, personalized preference.

Every reward is a ddpo-style factory result ``fn(images, prompts, metadata) -> (rewards, info)``:
``images`` a batch of covers, ``prompts`` the item titles, ``metadata`` one dict per image (item,
segment, user embedding...); ``rewards`` is ``float32 [B]``, standardized with statistics saved next to
the model so that reward weights in config mean what they say, and ``info`` holds the raw scores.
Models are versioned under ``models/reward_<name>/<version>/`` (:mod:`icg_core.rewards.common`).
Nothing here reads the embedded world's hidden truth: rewards learn from logs and catalog alone.
"""
