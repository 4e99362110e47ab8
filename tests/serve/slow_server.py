"""A server whose model takes SECONDS per uploaded photo, so a test can send SIGTERM while a
request is in flight: python tests/serve/slow_server.py BUNDLE INDEX PORT SECONDS.

Only uploads over 1 kB are slowed, so the start-up warm-up (a tiny PNG) stays fast.
"""
from __future__ import annotations

import sys
import time

from fashsdk import Retriever
from fashsdk.serve import create_app
from fashsdk.serve.command import run_server


class SlowRetriever(Retriever):
    delay = 0.0

    def encode(self, images):  # type: ignore[no-untyped-def]
        if any(isinstance(i, bytes) and len(i) > 1024 for i in images):
            time.sleep(self.delay)
        return super().encode(images)


def main() -> None:
    bundle, index, port, seconds = sys.argv[1:5]
    SlowRetriever.delay = float(seconds)
    app = create_app(lambda: SlowRetriever(bundle, index, threads=1))
    run_server(app, "127.0.0.1", int(port), grace_s=20)


if __name__ == "__main__":
    main()
