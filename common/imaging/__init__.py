"""Pixel work that more than one service does on a result's image: opening it the way the
detector measured it (EXIF orientation applied) and cutting aligned face crops.

It sits in common/ because both the detector (faces it infers or finds cached) and the gateway
(cache hits it answers itself, ingest/http/cache_answers.py) produce crops, and services may
not import each other (docs/architecture.md). Pillow and numpy only: no Redis, no service code.
"""
