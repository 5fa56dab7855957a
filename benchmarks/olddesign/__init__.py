"""The Flask + Redis face-detection service that facestream replaces, rebuilt for the
side-by-side benchmark (docs/performance.md, "What is measured").

It keeps that design's own code path: the web worker that took the request does everything
(multipart parsing, sha256, Bloom check, cache read, spin lock, inference, cache write). Only
the model and the image decode are facestream's, so the two systems differ in design, not in
the network they run.
"""
