"""`python -m scripts.bench [flags]` (from the repository root): see scripts/bench/__init__.py."""
from scripts.bench.run import main

if __name__ == "__main__":
    main()
