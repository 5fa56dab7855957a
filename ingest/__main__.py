"""`python -m facestream.ingest`: run the HTTP gateway."""

from __future__ import annotations

import sys

from facestream.common.settings import GatewaySettings
from facestream.ingest.http.serve import serve

if __name__ == "__main__":
    sys.exit(serve(GatewaySettings()))
