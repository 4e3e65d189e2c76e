"""Auditing: score training images with trained nets, write the per-image report, evaluate and show it."""
