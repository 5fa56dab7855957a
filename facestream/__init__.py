"""facestream: face detection as a Redis Streams pipeline.

One import package for the whole service: ``facestream.common`` (contract, Redis Streams runtime,
settings), ``facestream.ingest``, ``facestream.detector`` and ``facestream.sink`` (the services)
and ``facestream.control`` (the ``facestream`` command above them). In a checkout these are
links to the top-level folders; in the wheel they are real folders (docs/architecture.md).
"""
