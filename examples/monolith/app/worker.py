from redis import Redis
from rq import Worker

from app import config


def main() -> None:
    Worker(list(config.QUEUES), connection=Redis.from_url(config.REDIS_URL)).work()


if __name__ == "__main__":
    main()
