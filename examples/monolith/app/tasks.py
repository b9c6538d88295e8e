import os

from app.config import GEODATA_DIR


def summarize_run(run_id: str) -> dict:
    """Counts the climate files a run would read; runs on a worker."""
    climate = os.path.join(GEODATA_DIR, "climate")
    files = sorted(os.listdir(climate)) if os.path.isdir(climate) else []
    return {"run": run_id, "climate_files": len(files)}
