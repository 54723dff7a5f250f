"""The bad-input probe of train_knowhira.py: a table of cases that tests/test_robustness.py drives and
`python -m tests.robustness --mode subprocess --out docs/robustness.md` reports (probe.py says how)."""
