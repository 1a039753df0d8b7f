"""Container health check: GET a URL, exit 0 on a 2xx answer, 1 otherwise (no curl in the images).

python healthcheck.py --port-env WORKER_METRICS_PORT    # http://127.0.0.1:$PORT/healthz; port 0 = healthy
python healthcheck.py --url http://127.0.0.1:23333/v1/models
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--port-env", help="environment variable holding the /healthz port (0 = not served)")
    args = parser.parse_args()
    url = args.url
    if url is None:
        port = os.environ.get(args.port_env or "", "0") or "0"
        if port == "0":
            return 0  # metrics off: nothing to ask, the process being up is all we know
        url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except Exception as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
