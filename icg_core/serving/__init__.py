"""Serving: how the covers readers see are made from a trained generator and the rewards."""
