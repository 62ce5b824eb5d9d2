"""Synthetic JWST-like level-2b imaging exposures with known truth."""
