"""The one exception type for bad input: what a user gave (a flag, a file, a run folder) is wrong.

train_knowhira.py turns `BadInput` into one line on stderr and exit status 2. Any other exception is
a bug in this program and keeps its traceback. It subclasses ValueError so that callers catching
ValueError around parsing (argparse `type=` functions, dataclass checks) keep working."""


class BadInput(ValueError):
    """Input the user can fix: the message names the flag or file and what is wrong with it."""
