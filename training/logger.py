"""Training logs a person can plot: JSONL (one record per logged step), the trackers of --report_to
(TensorBoard by default; training/trackers.py), and a PNG."""
import json
import sys
import threading
from pathlib import Path

from utils.atomic import atomic_write_bytes


class RunLogger:
    """Appends step records to RUN_DIR/log.jsonl and mirrors their scalars to the trackers of
    --report_to (training/trackers.py; default TensorBoard in RUN_DIR/tb), with the run's args.json as
    their configuration.

    log.jsonl is the record: a failed write of it is an error naming the file. The trackers are views:
    when one fails (e.g. a full disk; TensorBoard writes from a thread of its own) the run goes on with
    one warning line, and `close(quiet=True)` (a run that failed anyway) says nothing."""

    def __init__(self, run_dir, resume_step: int = 0, report_to=("tensorboard",)):
        from training.trackers import Trackers

        self.path = Path(run_dir) / "log.jsonl"
        existed = self.path.exists()
        if existed:  # a resumed run: drop the records written after the checkpoint (all, from step 0),
            keep = [line for line in self.path.read_text().splitlines()  # and a line cut by a kill
                    if resume_step > 0 and _step(line) is not None and _step(line) <= resume_step]
            atomic_write_bytes(self.path, "".join(l + "\n" for l in keep).encode())
        self.tb_dir = Path(run_dir) / "tb"
        args = Path(run_dir) / "args.json"
        config = json.loads(args.read_text()) if args.is_file() else {}
        self.previous_hook = threading.excepthook
        threading.excepthook = self._thread_error  # tensorboard's writer thread: a warning, not a traceback
        # a resumed run: TensorBoard drops the events of steps after the checkpoint's (all, from step 0)
        purge = (resume_step + 1 if resume_step > 0 else 0) if existed else None
        self.trackers = Trackers(list(report_to), run_dir, config, purge_step=purge, warn=self._warn)

    def _warn(self, name, e) -> None:
        why = " ".join(str(e).split())[:200]
        what = f"TensorBoard log {self.tb_dir}" if name == "tensorboard" else f"--report_to {name}"
        print(f"warning: {what} stopped ({type(e).__name__}: {why}); log.jsonl goes on", file=sys.stderr)

    def _thread_error(self, args):
        if type(args.thread).__name__ == "_AsyncWriterThread":
            self.trackers.failed("tensorboard", args.exc_value)
        else:
            self.previous_hook(args)

    def log(self, record: dict) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
        except OSError as e:  # e.g. a full disk: write(2) errors name no file
            raise OSError(e.errno, e.strerror or str(e), str(self.path)) from None
        self.trackers.log(record)

    def close(self, quiet: bool = False) -> None:
        """Finish every tracker; `quiet`: the run failed, its own error is the message."""
        try:
            self.trackers.close(quiet)
        finally:
            if threading.excepthook == self._thread_error:
                threading.excepthook = self.previous_hook


def _step(line: str):
    """The step of a log line, or None for a line that is not a whole record (cut by a kill)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("step") if isinstance(record, dict) and isinstance(record.get("step"), int) else None


def read_log(run_dir) -> list[dict]:
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l] if path.exists() else []


def plot_losses(run_dir) -> Path:
    """RUN_DIR/loss.png: task and validation loss, the regulariser, and the validation accuracy (over
    all records and per task, dashed, with each task's record count) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(run_dir)
    train = [r for r in records if "loss_task" in r]
    val = [r for r in records if "val_loss" in r]
    acc = [r for r in records if "val_acc" in r]
    fig, ax = plt.subplots(1, 3 if acc else 2, figsize=(16 if acc else 11, 4))
    ax[0].plot([r["step"] for r in train], [r["loss_task"] for r in train], lw=1, alpha=0.6,
               label="train task loss")
    if val:
        ax[0].plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="validation loss")
    ax[0].set(xlabel="optimizer step", ylabel="cross-entropy (response tokens)", title="Task loss")
    ax[0].legend()
    ax[0].grid(alpha=0.3)
    ax[1].plot([r["step"] for r in train], [r["loss_reg"] for r in train], color="tab:green")
    ax[1].set(xlabel="optimizer step", ylabel="mean over layers", title="regulariser (unweighted; L_ortho for KnowHiRA)")
    ax[1].grid(alpha=0.3)
    if acc:
        steps = [r["step"] for r in acc]
        ax[2].plot(steps, [r["val_acc"] for r in acc], "o-", color="tab:red", label="validation accuracy")
        for task in sorted({k[len("val_acc/"):] for r in acc for k in r if k.startswith("val_acc/")}):
            points = [(r["step"], r[f"val_acc/{task}"], r.get(f"val_acc_n/{task}", "?")) for r in acc
                      if f"val_acc/{task}" in r]
            ax[2].plot([p[0] for p in points], [p[1] for p in points], ".--", lw=1, alpha=0.8,
                       label=f"{task} ({points[-1][2]})")
        label_format = all("val_answer_loss" in r for r in acc)  # text/cloze format: options scored whole
        args = Path(run_dir) / "args.json"
        cloze = args.is_file() and json.loads(args.read_text()).get("answer_format") == "cloze"
        ax[2].set(xlabel="optimizer step", ylim=(0, 1),
                  ylabel="accuracy at the answer token" if label_format else
                  "acc_norm (choices scored, lm-eval cloze)" if cloze else "accuracy (options scored)",
                  title=f"Validation accuracy ({acc[-1].get('val_acc_n', '?')} records)")
        ax[2].legend(loc="upper left", fontsize=7)
        if label_format:
            twin = ax[2].twinx()
            twin.plot(steps, [r["val_answer_loss"] for r in acc], "s--", color="tab:purple", alpha=0.6,
                      label="answer-token loss")
            twin.set_ylabel("answer-token cross-entropy")
            twin.legend(loc="upper right")
        ax[2].grid(alpha=0.3)
    fig.suptitle(Path(run_dir).name, fontsize=9)
    fig.tight_layout()
    out = Path(run_dir) / "loss.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
