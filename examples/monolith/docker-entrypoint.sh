#!/bin/sh
# The same image runs every role; the first argument picks the process, and
# exec makes it PID 1 so STOPSIGNAL reaches it directly.
set -eu
role=${1:-web}
if [ $# -gt 0 ]; then shift; fi
case "$role" in
web)    exec gunicorn --bind 0.0.0.0:8000 --workers "${WEB_WORKERS:-4}" "app.web:create_app()" "$@" ;;
worker) exec python -m app.worker "$@" ;;
*)      exec "$role" "$@" ;;
esac
