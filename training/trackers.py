"""Experiment trackers (--report_to): views of log.jsonl through accelerate's tracker classes.

log.jsonl is the run's record; every tracker chosen with `--report_to tensorboard,wandb,mlflow,trackio`
(or `none`) receives the same scalars and, at start, the run's configuration (args.json). Only rank 0
holds trackers (RunLogger is made on the main process). The tracker classes of `accelerate.tracking` are
used directly rather than through `Accelerator(log_with=...)`: each tracker is started, fed and closed on
its own, so one that fails mid-run (a full disk, a lost server) stops with one warning line while
log.jsonl and the other trackers go on, and TensorBoard keeps its `purge_step` on resume.

What each needs is checked at start (`check_report_to`, before the run folder is written): the package
installed, and for wandb credentials or WANDB_MODE=offline, for mlflow MLFLOW_TRACKING_URI; a missing
one is a one-line BadInput naming --report_to and what to install or set (docs/usage.md, "Trackers").
"""
import importlib.util
import json
import os
import sys
from pathlib import Path

from accelerate import tracking
from accelerate.tracking import TensorBoardTracker

from utils.errors import BadInput

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
# name -> (module to import, what to install)
PACKAGES = {"tensorboard": ("tensorboard", "pip install tensorboard"), "wandb": ("wandb", "pip install wandb"),
            "mlflow": ("mlflow", "pip install mlflow-skinny, or mlflow for a sqlite:// store"),
            "trackio": ("trackio", "pip install trackio")}
PROJECT = "knowhira"  # the wandb/trackio project and mlflow experiment unless WANDB_PROJECT etc. say otherwise


# ---- the option: parse and check (utils/options.py option(parse=..., check=...)) --------------------
def parse_report_to(text: str) -> list[str]:
    """'tensorboard,wandb' -> ['tensorboard', 'wandb']; 'none' -> [] is written ['none']."""
    return [part.strip() for part in str(text).split(",")]


def report_to_problem(names) -> str | None:
    """What is wrong with a --report_to list, or None."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return f"must be a comma list of {', '.join(TRACKERS)} or none, got {names!r}"
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown or not names:
        return f"must be a comma list of {', '.join(TRACKERS)} or none, got {','.join(names)!r}"
    if "none" in names and len(names) > 1:
        return f"none means log.jsonl only and goes alone, got {','.join(names)!r}"
    if len(set(names)) < len(names):
        return f"names a tracker twice, got {','.join(names)!r}"
    return None


def chosen(names) -> list[str]:
    return [n for n in names if n != "none"]


# ---- at start: installed and configured ----------------------------------------------------------
def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _wandb_problem() -> str | None:
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return None
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return None
    from urllib.parse import urlsplit

    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).netloc
    import netrc

    for path in filter(None, (os.environ.get("NETRC"), "~/.netrc", "~/_netrc")):
        try:
            if netrc.netrc(Path(path).expanduser()).authenticators(host):
                return None
        except (OSError, netrc.NetrcParseError):
            continue
    settings = Path(os.environ.get("WANDB_CONFIG_DIR", "~/.config/wandb")).expanduser() / "settings"
    try:
        if "api_key" in settings.read_text():
            return None
    except OSError:
        pass
    return (f"no W&B credentials for {host}: run `wandb login` or set WANDB_API_KEY, or set "
            "WANDB_MODE=offline to log locally (`wandb sync` uploads later)")


def _mlflow_problem() -> str | None:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return ("set MLFLOW_TRACKING_URI (a server, http://HOST:5000, or a local store, "
                "e.g. sqlite:///mlflow.db or file:///PATH/mlruns)")
    scheme = uri.split(":", 1)[0].lower() if "://" in uri or uri.startswith("file:") else "file"
    if scheme.startswith("sqlite") and not installed("sqlalchemy"):
        return f"MLFLOW_TRACKING_URI {uri} is a database store: pip install mlflow (mlflow-skinny has no sqlalchemy)"
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true") \
            and _major("mlflow-skinny", "mlflow") >= 3:
        return (f"MLFLOW_TRACKING_URI {uri} is a file store, which mlflow 3 refuses unless "
                "MLFLOW_ALLOW_FILE_STORE=true is set (or use a server or sqlite:/// store)")
    return None


def _major(*distributions) -> int:
    from importlib.metadata import PackageNotFoundError, version

    for name in distributions:
        try:
            return int(version(name).split(".")[0])
        except (PackageNotFoundError, ValueError):
            continue
    return 0


CONFIGURED = {"wandb": _wandb_problem, "mlflow": _mlflow_problem}


def check_report_to(names) -> None:
    """BadInput naming --report_to when a chosen tracker is not installed or not configured."""
    for name in chosen(names):
        module, install = PACKAGES[name]
        if not installed(module):
            raise BadInput(f"--report_to {name}: the {module} package is not installed ({install}), "
                           f"or leave {name} out of --report_to")
        problem = CONFIGURED.get(name, lambda: None)()
        if problem:
            raise BadInput(f"--report_to {name}: {problem}")


# ---- during the run --------------------------------------------------------------------------------
def flat_config(values: dict) -> dict:
    """args.json as tracker hyperparameters: lists as comma text, None as 'None' (TensorBoard, MLflow
    and trackio take scalars and text only)."""
    def flat(v):
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v))
        return v if isinstance(v, (bool, int, float, str)) else str(v)
    return {k: flat(v) for k, v in values.items()}


def make_tracker(name: str, run_dir: Path, purge_step):
    """An unstarted accelerate tracker writing this run (project/experiment from the environment)."""
    run_name = run_dir.name
    if name == "tensorboard":
        return RunTensorBoard("tb", str(run_dir), purge_step=purge_step)  # RUN_DIR/tb, as before
    if name == "wandb":  # offline files under RUN_DIR/wandb
        return tracking.WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), name=run_name, dir=str(run_dir))
    if name == "mlflow":
        return RunMLflow(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT), run_name=run_name)
    if name == "trackio":
        return tracking.TrackioTracker(os.environ.get("TRACKIO_PROJECT", PROJECT), name=run_name)
    raise ValueError(f"unknown tracker {name!r}")


class RunTensorBoard(TensorBoardTracker):
    """accelerate's TensorBoard tracker; the configuration is one text entry ('config', args.json) in the
    run's own event file (accelerate's add_hparams would add two time-named folders to tb/ at each start)."""

    def store_init_configuration(self, values: dict):
        text = "\n".join(f"    {k}: {json.dumps(v)}" for k, v in values.items())
        self.writer.add_text("config", text, global_step=self.init_kwargs.get("purge_step") or 0)
        self.writer.flush()


class RunMLflow(tracking.MLflowTracker):
    """accelerate's MLflow tracker; `val_acc/<task>` is logged as `val_acc.<task>` (mlflow's file store keeps
    a metric per file: val_acc and val_acc/boolq cannot both exist; one naming for every store)."""

    def log(self, values: dict, step=None, **kwargs):
        super().log({k.replace("/", "."): v for k, v in values.items()}, step=step, **kwargs)


class Trackers:
    """The chosen trackers of one run: started with the configuration, fed the scalars of each log
    record, closed at the end. A tracker that raises is dropped with one warning line (`quiet`: none,
    the run failed anyway and its own error is the message); log.jsonl is the record."""

    def __init__(self, names, run_dir, config: dict, purge_step=None, warn=None):
        from accelerate import PartialState

        PartialState()  # accelerate's trackers log through its logger, which needs the state
        self.run_dir, self.quiet, self.live, self.dead = Path(run_dir), False, {}, set()
        self.warn = warn or self._warn
        self.started = {}  # name -> tracker, to finish at close (also after a failure)
        for name in chosen(names):
            tracker = make_tracker(name, self.run_dir, purge_step)
            if self.call(name, tracker, "start"):
                self.started[name] = self.live[name] = tracker
                self.call(name, tracker, "store_init_configuration", flat_config(config))

    def _warn(self, name, e) -> None:
        why = " ".join(str(e).split())[:200]
        print(f"warning: --report_to {name} stopped ({type(e).__name__}: {why}); log.jsonl goes on", file=sys.stderr)

    def call(self, name, tracker, method, *args, **kwargs) -> bool:
        try:
            getattr(tracker, method)(*args, **kwargs)
            return True
        except Exception as e:  # any tracker's own error types: a view failed, the run goes on
            self.failed(name, e)
            return False

    def failed(self, name, e) -> None:
        """Stop feeding tracker `name`; the first failure of each is one warning line (none when quiet).
        Also called from TensorBoard's writer thread (RunLogger's excepthook), so nothing here waits."""
        self.live.pop(name, None)
        if name not in self.dead and not self.quiet:
            self.warn(name, e)
        self.dead.add(name)

    def log(self, record: dict) -> None:
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        for name, tracker in list(self.live.items()):
            self.call(name, tracker, "log", scalars, step=record["step"])

    def close(self, quiet: bool = False) -> None:
        """Finish every tracker that started, failed ones too (an mlflow run ended, a TensorBoard file
        closed, as before), quietly for those that failed already."""
        self.quiet = self.quiet or quiet
        for name, tracker in self.started.items():
            try:
                tracker.finish()
            except Exception as e:
                self.failed(name, e)
        self.live.clear()
        self.started = {}
