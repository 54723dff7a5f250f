"""Project scripts; `scripts.bench` is a package run as `python -m scripts.bench` from the repo root."""
