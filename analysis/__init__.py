"""Analysis of trained adapters (used by analyze_adapter.py): the math in adapter_stats, the
per-method reconstruction of ΔW in deltas, the forgetting stand-in in forgetting, plots in figures."""
