"""HEALTHCHECK entry point: web answers /healthz, a worker needs Redis."""
import os
import sys
import urllib.request


def main() -> int:
    try:
        if os.environ.get("APP_ROLE", "web") == "worker":
            from redis import Redis

            from app.config import REDIS_URL

            Redis.from_url(REDIS_URL, socket_timeout=3).ping()
        else:
            urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=3)
    except Exception as exc:  # any failure means unhealthy
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
