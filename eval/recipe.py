"""The evaluation entry: a trained run (its args.json and saved adapter rebuild the model) or the base
model zero-shot, merged to plain weights, evaluated task by task into results.json.

    EvalRecipe(EvalOptions(ckpt="runs/RUN"), data_dir=..., tasks="all").run()
"""
from dataclasses import asdict, dataclass
from pathlib import Path

from data.protocols import DEFAULT_PROTOCOL, get_protocol
from eval.evaluate import MODES
from models.get_models import ModelOptions
from utils.errors import BadInput
from utils.options import Options, option, positive


def parse_adapter(text: str) -> str:
    """'best', 'final' or 'step_N' (N >= 0, written without zero padding: step_400)."""
    if text in ("best", "final"):
        return text
    number = text[len("step_"):] if text.startswith("step_") else ""
    if not number.isdigit():
        raise BadInput(f"must be best, final or step_N (a checkpoint's step, e.g. step_400), got {text!r}")
    return f"step_{int(number)}"


@dataclass
class EvalOptions(Options):
    ckpt: str | None = option(None, "evaluate a trained run RUN_DIR (or 'none': the base model zero-shot)")
    adapter: str = option("best", "which state of the run --ckpt evaluates: best/ (else final/ when the run "
                          "kept no best/), final/, or the checkpoint of step N (step_N: "
                          "RUN_DIR/checkpoints/step_<N>/)", parse=parse_adapter)
    eval_mode: str | None = option(None, "generate and extract the answer (generate), score each option's "
                                   "response (loglik), or score the choice texts as lm-eval does (cloze); "
                                   "default: generate, loglik for the text answer format", choices=MODES)
    eval_batch: int = option(16, "evaluation batch (--batch in evaluation mode sets it too)", check=positive)
    max_new_tokens: int | None = option(None, "generation length (default: the protocol's: 16 hira, 32 "
                                        "llm_adapters and clean)", check=positive)
    beam_size: int | None = option(None, "beams (default: the protocol's: 4 hira and llm_adapters, 1 clean)",
                                   check=positive)
    max_examples: int | None = option(None, "evaluate a fixed seeded subset of N test examples per task",
                                      check=positive)
    results_dir: str | None = option(None, "where evaluation writes (default: the run dir, or "
                                     "<output_folder>/zeroshot_<model>)")


# what one results.json is the evaluation of: its meta holds these once, for every task in it
CONFIGURATION = ("method", "model_name", "adapter", "seed", "lr", "protocol", "answer_format", "eval_mode")


def eval_tasks(spec: str, data_dir) -> tuple[list[str], list[str]]:
    """(tasks to run, tasks skipped because their test file is missing)."""
    from data.commonsense import has_split
    from data.tasks import TASKS, resolve_task

    if spec == "all":
        present = [t for t in TASKS if has_split(data_dir, t, "test")]
        return present, [t for t in TASKS if t not in present]
    return [resolve_task(t) for t in spec.split(",") if t.strip()], []


class EvalRecipe:
    """Options, then `setup` (tasks, model, merge), then `run` (per task: evaluate, write)."""

    def __init__(self, opts: EvalOptions, *, tasks: str, data_dir: str, seed: int, base: ModelOptions,
                 output_folder: str, protocol: str | None, answer_format: str | None = None,
                 torch_compile: bool = False):
        """`base`: the model evaluated zero-shot (--ckpt none); a run's own comes from its args.json.
        `protocol`, `answer_format`: None = the run's (runs made before they existed: clean, label),
        zero-shot: the defaults (hira, label). `torch_compile` (--torch_compile, training/loop.py
        LoopConfig): compile the merged model's decoder blocks for the scoring modes (models/compile.py;
        generation stays eager: its KV cache is a new guard at every decode step)."""
        self.opts, self.tasks_spec, self.data_dir, self.seed = opts, tasks, data_dir, seed
        self.base, self.output_folder, self.protocol_name = base, output_folder, protocol
        self.answer_format_name = answer_format
        self.torch_compile = torch_compile

    def setup(self) -> "EvalRecipe":
        import torch
        from accelerate import PartialState

        from models.export import open_checkpoint
        from models.get_models import load_base_model
        from models.methods import Mergeable

        self.state = PartialState(cpu=not torch.cuda.is_available())
        self.tasks, missing = eval_tasks(self.tasks_spec, self.data_dir)
        for t in missing:
            self.state.print(f"skip {t}: no test file {Path(self.data_dir) / t / 'test.json'}")
        if not self.tasks:
            raise BadInput(f"no test files for {self.tasks_spec!r} in {self.data_dir}")
        if self.opts.ckpt == "none":
            model, self.tokenizer = load_base_model(**asdict(self.base))
            trained = {}
            name = self.base.model_name
            self.meta = {"method": "zero-shot", "model_name": name, "trainable_params": 0}
            self.out_dir = Path(self.opts.results_dir or Path(self.output_folder) / f"zeroshot_{Path(name).name}")
        else:
            # a run folder (its args.json names method and base) or a stock peft adapter on self.base
            ckpt = open_checkpoint(self.opts.ckpt, self.base, self.opts.adapter)
            method = ckpt.method
            model, self.tokenizer = ckpt.load()
            # evaluate the merged weights: W0 + ΔW costs a plain forward per generated token (the
            # unmerged Hadamard layer rebuilds W0 ⊙ (1 + s·BMA) on every call); a method that cannot
            # merge is evaluated as loaded
            if isinstance(method, Mergeable):
                model = method.merge_and_unload(model)
            hparams = [f for f in method.config_cls.option_fields() if f.name != "target_modules"]
            if ckpt.kind == "run":
                saved = ckpt.run_args
                self.meta = {"method": method.name, "model_name": saved["model_name"], "adapter": ckpt.adapter,
                             # counted at training time: peft loads lora/dora/ia3 frozen (count 0 here)
                             "trainable_params": saved.get("trainable_params"),
                             **{f.name: saved.get(f.name) for f in hparams},
                             **{k: saved.get(k) for k in ("lr", "max_steps", "dataset", "seed")}}
                self.out_dir = Path(self.opts.results_dir or ckpt.path)
                trained = {"protocol": saved.get("protocol", "clean"), "train_on_inputs": saved.get("train_on_inputs"),
                           "answer_format": saved.get("answer_format", "label")}
            else:  # trained elsewhere: no training record; results beside the runs, not in the adapter
                cfg = asdict(ckpt.cfg)
                name = ckpt.path.resolve().name
                self.meta = {"method": method.name, "model_name": self.base.model_name, "adapter": f"peft:{name}",
                             "trainable_params": ckpt.adapter_params(), **{f.name: cfg.get(f.name) for f in hparams}}
                self.out_dir = Path(self.opts.results_dir or Path(self.output_folder) / f"peft_{name}")
                trained = {}
        self.model = model.to(self.state.device).eval()
        self.protocol = get_protocol(self.protocol_name or trained.get("protocol", DEFAULT_PROTOCOL))
        self.answer_format = self.answer_format_name or trained.get("answer_format", "label")
        self.mode = self.opts.eval_mode or {"text": "loglik", "cloze": "cloze"}.get(self.answer_format, "generate")
        if self.mode == "cloze" and self.answer_format_name is None:
            self.answer_format = "cloze"  # the choice texts in lm-eval's prompt (the cloze answer format's own)
        if self.mode != "cloze" and self.answer_format == "cloze":
            raise BadInput(f"--eval_mode {self.mode} scores a response after the protocol's prompt; the cloze "
                           "answer format has none: use --eval_mode cloze, or name a response format with "
                           "--answer_format label|text")
        if self.torch_compile and self.mode == "generate":
            self.state.print("note: --torch_compile: generation runs eager (models/compile.py: the KV cache "
                             "changes its guards at every decode step); scoring modes compile")
        elif self.torch_compile:
            from models.compile import compile_blocks

            compile_blocks(self.model, self.state.device)
        self.beam_size = self.opts.beam_size or self.protocol.num_beams
        self.max_new_tokens = self.opts.max_new_tokens or self.protocol.max_new_tokens
        self.meta.update(eval_mode=self.mode, answer_format=self.answer_format, max_examples=self.opts.max_examples,
                         protocol=self.protocol.name, beam_size=self.beam_size, max_new_tokens=self.max_new_tokens,
                         protocol_deviations=self.deviations(trained))
        from eval.evaluate import check_records, load_test_records, read_results

        # every requested task's test file read and checked before anything is evaluated or written
        self.records = {t: load_test_records(self.data_dir, t) for t in self.tasks}
        for task, records in self.records.items():
            check_records(records, task, self.mode, self.answer_format)
        path = self.out_dir / "results.json"
        held = read_results(path)  # a damaged results.json: refused before anything is written
        changed = [k for k in CONFIGURATION
                   if held["tasks"] and k in held["meta"] and held["meta"][k] != self.meta.get(k)]
        if changed:  # one results.json, one configuration: its meta describes every task in it
            k = changed[0]
            raise BadInput(f"{path} holds evaluations of another configuration ({k} {held['meta'][k]!r}, this one "
                           f"{self.meta.get(k)!r}); evaluate into another --results_dir")
        return self

    def deviations(self, trained: dict) -> dict:
        """Settings that differ from the evaluation protocol's, {setting: value used}: a run trained
        under another protocol, or with other masking; other beams or generation length."""
        p, out = self.protocol, {}
        if trained.get("protocol", p.name) != p.name:
            out["trained_protocol"] = trained["protocol"]
        if trained.get("train_on_inputs") not in (None, p.train_on_inputs):
            out["train_on_inputs"] = trained["train_on_inputs"]
        if self.mode != "cloze" and trained.get("answer_format", self.answer_format) != self.answer_format:
            out["trained_answer_format"] = trained["answer_format"]
        if self.mode == "generate":
            out.update({k: v for k, v, ref in (("beam_size", self.beam_size, p.num_beams),
                                               ("max_new_tokens", self.max_new_tokens, p.max_new_tokens))
                        if v != ref})
        return out

    def run(self) -> dict:
        from eval.evaluate import evaluate_task, update_results_json

        o, results = self.opts, {}
        for task, records in self.records.items():
            result = evaluate_task(self.model, self.tokenizer, records, task, self.out_dir,
                                   protocol=self.protocol, mode=self.mode, batch_size=o.eval_batch,
                                   max_new_tokens=self.max_new_tokens, beam_size=self.beam_size,
                                   max_examples=o.max_examples, seed=self.seed,
                                   rank=self.state.process_index, world_size=self.state.num_processes,
                                   answer_format=self.answer_format)
            results[task] = result
            if self.state.is_main_process:
                update_results_json(self.out_dir, result, self.meta, CONFIGURATION)
                lo, hi = result["ci95_low"], result["ci95_high"]
                norm = (f" acc_norm {100 * result['accuracy_norm']:5.1f}% [{100 * result['ci95_low_norm']:.1f}, "
                        f"{100 * result['ci95_high_norm']:.1f}]" if "accuracy_norm" in result else "")
                print(f"{task:14s} acc {100 * result['accuracy']:5.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]{norm} "
                      f"n={result['n']} parse-fail {100 * result['parse_failure_rate']:.1f}% "
                      f"chance {100 * result['chance_accuracy']:.1f}% "
                      f"majority {100 * result['majority_accuracy']:.1f}% "
                      f"({result['examples_per_s']:.1f} ex/s)")
        return results
