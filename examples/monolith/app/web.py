from flask import Flask, jsonify
from redis import Redis
from rq import Queue

from app import config, tasks


def create_app() -> Flask:
    app = Flask(__name__, static_folder="../static")
    queue = Queue("default", connection=Redis.from_url(config.REDIS_URL))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/runs/<run_id>")
    def start_run(run_id: str):
        job = queue.enqueue(tasks.summarize_run, run_id)
        return jsonify(job=job.id), 202

    return app
