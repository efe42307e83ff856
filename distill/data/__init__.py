"""Manifests, importers from standard corpus layouts, audio decoding and augmentation."""
