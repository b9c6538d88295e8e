import os

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://wepp@localhost:5432/wepp")
REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
# Read-only NFS mount with the climate and soil data; never part of the image.
GEODATA_DIR = os.environ.get("GEODATA_DIR", "/geodata")
QUEUES = ("high", "default")
