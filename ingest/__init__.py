"""The publisher library: `Publisher` / `AsyncPublisher` and `make_event` (publisher.py), what
users import to put images on the stream. The HTTP gateway, a service built on it, is the
`http` subpackage; nothing here imports it (import-linter, pyproject.toml)."""
