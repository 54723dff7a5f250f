"""--eval_mode cloze (eval/cloze.py) against lm-eval itself.

Parsing: real LLM-Adapters records of boolq, piqa, ARC-Easy, ARC-Challenge, openbookqa (every test and
train record parses; the first ones to hand-written values) and fixtures in the LLM-Adapters layout
for hellaswag, winogrande and social_i_qa (not in the shared data folder).

Scoring: the same records are evaluated by evaluate_task(mode="cloze") and by lm-eval (a dev
dependency): its own task YAMLs (arc_easy, piqa, openbookqa, boolq, siqa, winogrande, hellaswag, with
their doc_to_text / doc_to_choice / doc_to_target and !function preprocessors), reading our JSON
files through `dataset_path: json` and a process_docs that maps a record to the task's original
fields, run with lm_eval.evaluator.evaluate on HFLM(pretrained=<the model object>). The request
strings, token ids, log-likelihoods, and per-example acc and acc_norm must agree; on a tiny random
GPT-2 for every task, and on the real SmolLM2-135M for 20 ARC-Easy and 20 PIQA questions.
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_model
from data.protocols import get_protocol
from data.cloze import cloze_requests, encode_pair, hellaswag_preprocess
from data.questions import parse_record
from eval.cloze import PROTOCOL_NAME, cloze_rows
from eval.evaluate import evaluate_task
from eval.metrics import wilson_interval

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a dev dependency (requirements-dev.txt)")

pytestmark = pytest.mark.usefixtures("single_thread")

REAL_TASKS = ("boolq", "piqa", "ARC-Easy", "ARC-Challenge", "openbookqa")


def rec(instruction, answer):
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def hellaswag(context, endings, gold):
    return rec("Please choose the correct ending to complete the given sentence: " + context + "\n\n"
               + " ".join(f"Ending{k}: {e}" for k, e in enumerate(endings, 1))
               + "\n\nAnswer format: ending1/ending2/ending3/ending4", f"ending{gold}")


def winogrande(sentence, option1, option2, gold, sep=" "):
    # LLM-Adapters' winogrande files put no blank line before "Answer format:" (sep=" ")
    return rec("Please choose the correct answer to fill in the blank to complete the given sentence: "
               f"{sentence}\n\nOption1: {option1} Option2: {option2}{sep}Answer format: option1/option2",
               f"option{gold}")


def siqa(question, answers, gold):
    return rec("Please choose the correct answer to the question: " + question + "\n\n"
               + " ".join(f"Answer{k}: {a}" for k, a in enumerate(answers, 1))
               + "\n\nAnswer format: answer1/answer2/answer3", f"answer{gold}")


HELLASWAG = [
    hellaswag("Removing ice from car: Then, the man writes over the snow covering the window of a car, and a "
              "woman wearing winter clothes smiles. then",
              [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift.",
               ", the man puts on a christmas coat, knitted with netting.",
               ", the man continues removing the snow on his car."], 4),
    hellaswag("Personal Care and Style: [header] How to tie a tie [title] Drape the tie around your neck. [step] "
              "The wide end should hang lower than the narrow end.",
              ["[title] Cross the wide end over the narrow end. [step] Hold both ends together near the collar.",
               "[step] Fold the tie into a paper plane and throw it across the room.",
               "[title] Wash the tie in hot water. [step] Let it dry  for a week.",
               "[step] Cut the narrow end off with scissors."], 1),
    hellaswag("Playing guitar: A young man sits on a couch holding an acoustic guitar. he",
              ["throws the guitar into a swimming pool.", "tunes the strings and begins strumming a song.",
               "eats a sandwich while the guitar plays itself.", "paints the couch bright green."], 2),
    hellaswag("Health: [header] How to fall asleep faster [title] Keep a regular schedule. [step] Go to bed "
              "at the same time every night, even on weekends.",
              ["[title] Drink three cups of coffee before bed. [step] Caffeine helps you relax.",
               "[step] Run a marathon at midnight.",
               "[title] Make your bedroom dark and quiet. [step] Use heavy curtains or an eye mask.",
               "[step] Sleep on the kitchen floor."], 3),
    hellaswag("Washing dishes: A woman stands at a kitchen sink full of soapy water. she",
              ["puts the plates in the oven.", "sings into a microphone on stage.",
               "drives a car down a busy road.", "scrubs a plate with a sponge and rinses it under the tap."], 4),
    hellaswag("Home and Garden: [header] How to water a houseplant [title] Check the soil first. [step] Push a "
              "finger into the soil up to the first knuckle.",
              ["[title] If the soil feels dry, water the plant slowly. [step] Stop when water drains out.",
               "[step] Paint the leaves silver.", "[title] Bury the plant in the garden. [step] Forget it.",
               "[step] Feed the plant to the cat."], 1),
]
WINOGRANDE = [
    winogrande("The jeans fit worse than the shirt because I had tried the _ on at the store.", "jeans", "shirt", 2),
    winogrande("Sarah was a much better surgeon than Maria so _ always got the harder cases.", "Sarah", "Maria", 1,
               sep="\n\n"),
    winogrande("The trophy doesn't fit into the brown suitcase because the _ is too small.", "trophy", "suitcase", 2),
    winogrande("_ was afraid of the dog, so Kevin hid behind Brian.", "Kevin", "Brian", 1),
    winogrande("The ice melted faster than the stone because the _ was softer.", "ice", "stone", 1),
    winogrande("Emma lent her umbrella to Olivia since _'s own umbrella was broken.", "Emma", "Olivia", 2),
    winogrande("The cake was heavier than the bread because the _ had more butter in it.", "cake", "bread", 1),
    winogrande("Jack could not lift the box but Tom could, because _ was weaker.", "Jack", "Tom", 1),
]
SOCIAL_I_QA = [
    siqa("Cameron decided to have a barbecue and gathered her friends together. How would Others feel as a result?",
         ["like attending", "like staying home", "a good friend to have"], 1),
    siqa("Jan needed to give out jobs for an upcoming project at work. What will Others want to do next?",
         ["disagree with Jan", "get to work", "argue with the assignments"], 2),
    siqa("Robin wanted to share the food with a friend, so they cut the sandwich in half. What does Robin need "
         "to do before this?", ["get a knife", "eat half of her own sandwich", "give half the sandwich away"], 1),
    siqa("Taylor forgot her keys at home and had to wait outside. How would Taylor feel afterwards?",
         ["happy and relaxed", "proud of herself", "annoyed with herself"], 3),
    siqa("Alex helped his neighbor carry the groceries inside. Why did Alex do this?",
         ["to be helpful", "to steal the groceries", "to go to sleep"], 1),
    siqa("Quinn studied all night for the exam. What will Quinn want to do next?",
         ["skip the exam", "take the exam", "forget everything"], 2),
]
FIXTURES = {"hellaswag": HELLASWAG, "winogrande": WINOGRANDE, "social_i_qa": SOCIAL_I_QA}


def load_test(data_dir, task):
    return json.loads((data_dir / task / "test.json").read_text(encoding="utf-8"))


def first_records(data_dir, task, n=20):
    """The first n test records; for ARC, 18 of them plus the first 3-choice and 5-choice questions."""
    records = load_test(data_dir, task)
    if not task.startswith("ARC"):
        return records[:n]
    odd = [next(r for r in records if r["instruction"].endswith(f"answer{k}")) for k in (3, 5)]
    return records[:n - 2] + odd


# ------------------------------------------------------------------------------------- parsing

EXPECTED_FIRST = {  # test.json record 0 of each real task: (question, choices, gold index)
    "boolq": ("does ethanol take more energy make that produces", ["no", "yes"], 0),
    "piqa": ("How do I ready a guinea pig cage for it's new occupants?",
             ["Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, "
              "you will also need to supply it with a water bottle and a food dish.",
              "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, "
              "you will also need to supply it with a water bottle and a food dish."], 0),
    "ARC-Easy": ("Which statement best explains why photosynthesis is the foundation of most food webs?",
                 ["Sunlight is the source of energy for nearly all ecosystems.",
                  "Most ecosystems are found on land instead of in water.",
                  "Carbon dioxide is more available than other gases.",
                  "The producers in all ecosystems are plants."], 0),
    "ARC-Challenge": ("An astronomer observes that a planet rotates faster after a meteorite impact. Which is the "
                      "most likely effect of this increase in rotation?",
                      ["Planetary density will decrease.", "Planetary years will become longer.",
                       "Planetary days will become shorter.", "Planetary gravity will become stronger."], 2),
    "openbookqa": ("A person wants to start saving money so that they can afford a nice vacation at the end of "
                   "the year. After looking over their budget and expenses, they decide the best way to save "
                   "money is to",
                   ["make more phone calls", "quit eating lunch out", "buy less with monopoly money",
                    "have lunch with friends"], 1),
}


@pytest.mark.parametrize("task", REAL_TASKS)
def test_parse_real_records(data_dir, task):
    records = load_test(data_dir, task)
    item = parse_record(records[0], task, 0)
    assert (item.question, item.choices, item.gold) == EXPECTED_FIRST[task]
    n_choices = set()
    for split in ("test", "train"):
        path = data_dir / task / f"{split}.json"
        if not path.is_file():
            continue
        for index, record in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            item = parse_record(record, task, index)
            assert item.words[item.gold] == record["answer"]
            assert all(c and c == c.strip() and "\n" not in c for c in item.choices + [item.question])
            n_choices.add(len(item.choices))
    assert n_choices == ({3, 4, 5} if task.startswith("ARC") else {2} if task in ("boolq", "piqa") else {4})


def test_parse_arc_with_three_and_five_choices(data_dir):
    three, five = first_records(data_dir, "ARC-Easy")[-2:]
    assert len(parse_record(three, "ARC-Easy", 0).choices) == 3
    item = parse_record(five, "ARC-Easy", 0)
    assert len(item.choices) == 5 and item.words == [f"answer{k}" for k in range(1, 6)]


def test_parse_fixtures():
    item = parse_record(HELLASWAG[1], "hellaswag", 1)
    assert item.question == ("Personal Care and Style: [header] How to tie a tie [title] Drape the tie around your "
                             "neck. [step] The wide end should hang lower than the narrow end.")
    assert item.choices[2] == "[title] Wash the tie in hot water. [step] Let it dry  for a week."
    assert item.gold == 0 and item.words == ["ending1", "ending2", "ending3", "ending4"]
    item = parse_record(WINOGRANDE[0], "winogrande", 0)  # "... Option2: shirt Answer format: ..."
    assert (item.question, item.choices, item.gold) == (
        "The jeans fit worse than the shirt because I had tried the _ on at the store.", ["jeans", "shirt"], 1)
    item = parse_record(WINOGRANDE[1], "winogrande", 1)  # "\n\nAnswer format:"
    assert (item.choices, item.gold) == (["Sarah", "Maria"], 0)
    item = parse_record(SOCIAL_I_QA[1], "siqa", 1)
    assert (item.question, item.choices, item.gold) == (
        "Jan needed to give out jobs for an upcoming project at work. What will Others want to do next?",
        ["disagree with Jan", "get to work", "argue with the assignments"], 1)


def test_requests_per_task(data_dir):
    boolq = parse_record(load_test(data_dir, "boolq")[0], "boolq", 0)
    assert cloze_requests(boolq, "boolq") == (
        [("does ethanol take more energy make that produces?\nAnswer:", " no"),
         ("does ethanol take more energy make that produces?\nAnswer:", " yes")], [2, 3])
    arc = parse_record(load_test(data_dir, "ARC-Easy")[0], "ARC-Easy", 0)
    pairs, lengths = cloze_requests(arc, "ARC-Easy")
    assert pairs[1] == ("Question: Which statement best explains why photosynthesis is the foundation of most "
                        "food webs?\nAnswer:", " Most ecosystems are found on land instead of in water.")
    assert lengths == [len(c) for c in arc.choices]
    # winogrande: the option in the context, the rest of the sentence scored, for both options
    assert cloze_requests(parse_record(WINOGRANDE[5], "winogrande", 5), "winogrande") == (
        [("Emma lent her umbrella to Olivia since Emma", " 's own umbrella was broken."),
         ("Emma lent her umbrella to Olivia since Olivia", " 's own umbrella was broken.")], [27, 27])
    # hellaswag: lm-eval's preprocess on the context and the endings (tags dropped, " [title]" -> ". ",
    # double spaces halved once; a leading tag leaves a leading space, as in lm-eval)
    pairs, lengths = cloze_requests(parse_record(HELLASWAG[1], "hellaswag", 1), "hellaswag")
    context = ("Personal Care and Style: How to tie a tie. Drape the tie around your neck. The wide end should "
               "hang lower than the narrow end.")
    assert pairs[0] == (context, "  Cross the wide end over the narrow end. Hold both ends together near the collar.")
    assert pairs[2] == (context, "  Wash the tie in hot water. Let it dry for a week.")
    assert lengths == [81, 62, 50, 38]


def test_hellaswag_preprocess_is_lm_evals():
    from lm_eval.tasks.hellaswag.utils import preprocess

    texts = [r["instruction"] for r in HELLASWAG] + [" [header] a  [title] b [step]  c [x] "]
    assert [hellaswag_preprocess(t) for t in texts] == [preprocess(t) for t in texts]


@pytest.mark.parametrize("task, record, message", [
    ("ARC-Easy", rec("Please choose the correct answer to the question: Q?\n\nAnswer1: a Answer2: b Answer4: d"
                     "\n\nAnswer format: answer1/answer2/answer3/answer4", "answer1"), "no 'Answer3:'"),
    ("ARC-Easy", rec("Choose: Q?\n\nAnswer1: a Answer2: b\n\nAnswer format: answer1/answer2", "answer1"),
     "does not start with"),
    ("piqa", rec("Please choose the correct solution to the question: Q\n\nSolution1: a\n\nSolution2: b", "solution1"),
     "no 'Answer format:'"),
    ("winogrande", rec("Please choose the correct answer to fill in the blank to complete the given sentence: "
                       "No blank here.\n\nOption1: a Option2: b Answer format: option1/option2", "option1"),
     "no '_' blank"),
    ("openbookqa", rec("Please choose the correct answer to the question: Q\n\nAnswer1: a Answer2:  Answer3: c "
                       "Answer4: d\n\nAnswer format: answer1/answer2/answer3/answer4", "answer1"), "empty Answer2"),
    ("boolq", {"input": "", "answer": "true"}, "no 'instruction' string"),
])
def test_unparseable_record_names_task_and_index(task, record, message):
    with pytest.raises(ValueError) as err:
        parse_record(record, task, 7)
    text = str(err.value)
    assert text.startswith(f"{task}: record 7 ") and message in text and "\n" not in text


def test_evaluate_task_refuses_an_unparseable_record(tmp_path, gpt2_tokenizer):
    records = list(WINOGRANDE) + [WINOGRANDE[0] | {"instruction": WINOGRANDE[0]["instruction"].replace("_", "X")}]
    with pytest.raises(ValueError, match=r"^winogrande: record 8 cannot be parsed"):
        evaluate_task(tiny_model("gpt2"), gpt2_tokenizer, records, "winogrande", tmp_path,
                      protocol=get_protocol("clean"), mode="cloze", batch_size=4, max_new_tokens=8, beam_size=1,
                      max_examples=2, seed=0, show_progress=False, answer_format="label")
    assert not (tmp_path / "eval").exists()


# ------------------------------------------------------------------------- lm-eval, the reference

def lm_eval_config(task: str, data_file: Path, cache_dir: Path) -> dict:
    """lm-eval's own task YAML for `task`, reading our JSON file (LLM-Adapters records) through a
    process_docs that maps each record to the fields the YAML's templates read."""
    from lm_eval.tasks._yaml_loader import load_yaml

    root = Path(lm_eval.__file__).parent / "tasks"
    yaml = {"ARC-Easy": "arc/arc_easy.yaml", "ARC-Challenge": "arc/arc_challenge.yaml", "piqa": "piqa/piqa.yaml",
            "openbookqa": "openbookqa/openbookqa.yaml", "boolq": "super_glue/boolq/default.yaml",
            "social_i_qa": "siqa/siqa.yaml", "winogrande": "winogrande/default.yaml",
            "hellaswag": "hellaswag/hellaswag.yaml"}[task]
    cfg = load_yaml(root / yaml)
    own_process = cfg.get("process_docs")  # hellaswag's: HF fields -> query, choices, gold

    def fields(doc, index):
        item = parse_record(doc, task, index)
        letters = [chr(ord("A") + k) for k in range(len(item.choices))]
        if task in ("ARC-Easy", "ARC-Challenge"):
            return {"question": item.question, "choices": {"text": item.choices, "label": letters},
                    "answerKey": letters[item.gold]}
        if task == "openbookqa":
            return {"question_stem": item.question, "choices": {"text": item.choices, "label": letters},
                    "answerKey": letters[item.gold]}
        if task == "piqa":
            return {"goal": item.question, "sol1": item.choices[0], "sol2": item.choices[1], "label": item.gold}
        if task == "boolq":
            return {"question": item.question, "label": item.gold}
        if task == "social_i_qa":
            return {"context": item.question, "answerA": item.choices[0], "answerB": item.choices[1],
                    "answerC": item.choices[2], "label": str(item.gold + 1)}
        if task == "winogrande":
            return {"sentence": item.question, "option1": item.choices[0], "option2": item.choices[1],
                    "answer": str(item.gold + 1)}
        label, _, context = item.question.partition(": ")  # hellaswag: "{activity_label}: {ctx}"
        return {"activity_label": label, "ctx_a": context, "ctx_b": "", "endings": item.choices,
                "label": str(item.gold)}

    def process_docs(dataset):
        dataset = dataset.map(lambda doc, index: fields(doc, index), with_indices=True,
                              remove_columns=dataset.column_names)
        return own_process(dataset) if own_process else dataset

    # the cloze context where it differs from lm-eval's own (no passage / no question split in our files)
    text = {"openbookqa": "Question: {{question_stem}}\nAnswer:", "boolq": "{{question}}?\nAnswer:",
            "social_i_qa": "Question: {{context}}\nAnswer:"}
    metrics = ["acc"] if task == "winogrande" else ["acc", "acc_norm"]
    cfg.update(task=f"cloze_{task}", tag=None, dataset_path="json", dataset_name=None,
               dataset_kwargs={"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
               training_split=None, validation_split=None, test_split="test", fewshot_split=None,
               process_docs=process_docs, doc_to_text=text.get(task, cfg["doc_to_text"]),
               metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics])
    return cfg


def run_lm_eval(model, tokenizer, task_records: dict, tmp_path: Path) -> tuple[object, dict]:
    """(the HFLM, {task: lm-eval's logged samples in document order}) for our records."""
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    tmp_path.mkdir(parents=True, exist_ok=True)
    tasks = {}
    for task, records in task_records.items():
        path = tmp_path / f"{task}.json"
        path.write_text(json.dumps(records), encoding="utf-8")
        tasks[f"cloze_{task}"] = ConfigurableTask(config=lm_eval_config(task, path, tmp_path / "hf_cache"))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=16)
    out = evaluate(lm, tasks, bootstrap_iters=0, log_samples=True)
    samples = {task: sorted(out["samples"][f"cloze_{task}"], key=lambda s: s["doc_id"]) for task in task_records}
    for task in task_records:  # the aggregate lm-eval reports is the mean of its per-document values
        for metric in ("acc", "acc_norm") if task != "winogrande" else ("acc",):
            assert out["results"][f"cloze_{task}"][f"{metric},none"] == pytest.approx(
                np.mean([s[metric] for s in samples[task]]))
    return lm, samples


def assert_same_as_lm_eval(model, tokenizer, task_records: dict, tmp_path: Path) -> dict:
    """Ours (evaluate_task, mode cloze) == lm-eval's: request strings, token ids, log-likelihoods,
    per-example acc and acc_norm, accuracies. Returns {task: (our result, our rows)}."""
    lm, samples = run_lm_eval(model, tokenizer, task_records, tmp_path / "lm_eval")
    ours = {}
    for task, records in task_records.items():
        out = tmp_path / "ours" / task
        result = evaluate_task(model, tokenizer, records, task, out, protocol=get_protocol("hira"), mode="cloze",
                               batch_size=8, max_new_tokens=8, beam_size=1, max_examples=None, seed=0,
                               show_progress=False, answer_format="label")
        rows = [json.loads(line) for line in (out / "eval" / f"{task}.jsonl").read_text().splitlines()]
        theirs = samples[task]
        assert [s["doc_id"] for s in theirs] == [r["id"] for r in rows] == list(range(len(records)))
        for record, row, sample in zip(records, rows, theirs):
            pairs, _ = cloze_requests(parse_record(record, task, row["id"]), task)
            assert [tuple(a) for a in sample["arguments"]] == pairs, (task, row["id"])
            for context, continuation in pairs:
                assert encode_pair(tokenizer, context, continuation) == lm._encode_pair(context, continuation)
            lls = [resp[0] for resp in sample["filtered_resps"]]
            np.testing.assert_allclose(row["scores"], lls, rtol=1e-5, atol=1e-4, err_msg=f"{task} {row['id']}")
            assert bool(sample["acc"]) == row["correct"], (task, row["id"], row, lls)
            if task != "winogrande":
                assert bool(sample["acc_norm"]) == row["correct_norm"], (task, row["id"], row, lls)
            else:  # every option scores the same continuation: the length normalisation changes nothing
                assert row["pred_norm"] == row["extracted"]
            # the predicted choice itself, not only its correctness
            item = parse_record(record, task, row["id"])
            assert row["extracted"] == item.words[int(np.argmax(lls))]
        n = len(records)
        assert result["n"] == n and result["parse_failures"] == 0 and result["protocol"] == PROTOCOL_NAME
        assert result["correct"] == sum(s["acc"] for s in theirs)
        assert result["accuracy"] == pytest.approx(np.mean([s["acc"] for s in theirs]))
        assert (result["ci95_low"], result["ci95_high"]) == wilson_interval(result["correct"], n)
        if task != "winogrande":
            assert result["correct_norm"] == sum(s["acc_norm"] for s in theirs)
            assert result["accuracy_norm"] == pytest.approx(np.mean([s["acc_norm"] for s in theirs]))
        assert (result["ci95_low_norm"], result["ci95_high_norm"]) == wilson_interval(result["correct_norm"], n)
        ours[task] = (result, rows)
    return ours


def test_same_as_lm_eval_on_a_tiny_random_model(data_dir, gpt2_tokenizer, tmp_path):
    task_records = {task: first_records(data_dir, task) for task in REAL_TASKS} | FIXTURES
    ours = assert_same_as_lm_eval(tiny_model("gpt2", seed=3), gpt2_tokenizer, task_records, tmp_path)
    rows = [row for _, task_rows in ours.values() for row in task_rows]
    # the comparison is discriminating: acc and acc_norm disagree on some questions, and both get
    # some right and some wrong
    assert any(row["extracted"] != row["pred_norm"] for row in rows)
    assert 0 < sum(row["correct"] for row in rows) < len(rows)
    assert 0 < sum(row["correct_norm"] for row in rows) < len(rows)
    boolq = ours["boolq"][1][0]
    assert boolq["choices"] == ["no", "yes"] and boolq["gold"] == "false"


def test_same_as_lm_eval_on_smollm2(data_dir, tmp_path):
    """The real SmolLM2-135M-Instruct (GGUF), 20 ARC-Easy and 20 PIQA questions."""
    path = os.environ.get("KNOWHIRA_SMOLLM2_GGUF")
    if not path or not Path(path).is_file():
        pytest.skip("KNOWHIRA_SMOLLM2_GGUF is not set to the SmolLM2 GGUF file")
    from models.get_models import load_base_model

    model, tokenizer = load_base_model(path)
    records = {task: load_test(data_dir, task)[:20] for task in ("ARC-Easy", "piqa")}
    ours = assert_same_as_lm_eval(model.eval(), tokenizer, records, tmp_path)
    for task, (result, _) in ours.items():
        print(f"SmolLM2 cloze {task}: acc {result['accuracy']:.2f} acc_norm {result['accuracy_norm']:.2f} "
              f"chance {result['chance_accuracy']:.2f}")


def test_token_split_is_lm_evals(gpt2_tokenizer):
    """lm-eval's context/continuation split, on the cases where it is not "encode each part": a trailing
    space in the context (moved to the continuation), a word split across the boundary (the
    continuation gets the whole string's tokens after the context's), a double space."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=tiny_model("gpt2"), tokenizer=gpt2_tokenizer, batch_size=1)
    cases = [("Question: is it?\nAnswer: ", "yes"), ("The result was un", "believable story"), ("end.", "  Cross it"),
             ("Answer:", " no"), ("x", "\n\n y")]
    for context, continuation in cases:
        assert encode_pair(gpt2_tokenizer, context, continuation) == lm._encode_pair(context, continuation)
    ctx, cont = encode_pair(gpt2_tokenizer, "Question: is it?\nAnswer: ", "yes")
    assert gpt2_tokenizer.decode(cont) == " yes" and gpt2_tokenizer.decode(ctx).endswith("Answer:")
    ctx, cont = encode_pair(gpt2_tokenizer, "The result was un", "believable story")
    assert gpt2_tokenizer.decode(cont) == " story"  # "un" + "believable" merged into the context's last token
    assert cont != gpt2_tokenizer("believable story")["input_ids"]


def test_cloze_rows_do_not_depend_on_batch_size_or_subset(data_dir, gpt2_tokenizer):
    model = tiny_model("gpt2", seed=1)
    records = first_records(data_dir, "ARC-Easy")
    ids = list(range(len(records)))
    one = cloze_rows(model, gpt2_tokenizer, records, ids, "ARC-Easy", batch_size=1, show_progress=False)
    many = cloze_rows(model, gpt2_tokenizer, records, ids, "ARC-Easy", batch_size=32, show_progress=False)
    part = cloze_rows(model, gpt2_tokenizer, records, ids[5:9], "ARC-Easy", batch_size=3, show_progress=False)
    for a, b in zip(one, many):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-4)
        assert (a["extracted"], a["pred_norm"]) == (b["extracted"], b["pred_norm"])
    assert [r["id"] for r in part] == ids[5:9]
    for a, b in zip(one[5:9], part):
        np.testing.assert_allclose(a["scores"], b["scores"], rtol=1e-5, atol=1e-4)


def test_identical_choices_tie_to_the_first(gpt2_tokenizer):
    record = rec("Please choose the correct solution to the question: Open a jar\n\nSolution1: twist the lid\n\n"
                 "Solution2: twist the lid\n\nAnswer format: solution1/solution2", "solution2")
    [row] = cloze_rows(tiny_model("gpt2"), gpt2_tokenizer, [record], [0], "piqa", batch_size=8, show_progress=False)
    assert row["scores"][0] == row["scores"][1]
    assert (row["extracted"], row["pred_norm"], row["correct"], row["correct_norm"]) == (
        "solution1", "solution1", False, False)


def test_cli_zero_shot_cloze(tiny_neo_dir, data_dir, tmp_path, capsys):
    """`--eval_mode cloze` from the command line: results.json carries acc_norm with its interval, the
    cloze protocol name and no parse failures; the per-example file has the cloze rows."""
    import train_knowhira

    res = tmp_path / "res"
    assert train_knowhira.main(["--ckpt", "none", "--model_name", str(tiny_neo_dir), "--data_dir", str(data_dir),
                                "--dataset", "boolq,arc-e", "--eval_mode", "cloze", "--max_examples", "6",
                                "--results_dir", str(res)]) == 0, capsys.readouterr().err
    results = json.loads((res / "results.json").read_text())
    assert results["meta"]["eval_mode"] == "cloze"
    for task in ("boolq", "ARC-Easy"):
        result = results["tasks"][task]
        rows = [json.loads(line) for line in (res / "eval" / f"{task}.jsonl").read_text().splitlines()]
        assert len(rows) == result["n"] == 6 and result["protocol"] == PROTOCOL_NAME
        assert set(rows[0]) == {"id", "choices", "scores", "extracted", "pred_norm", "gold", "correct", "correct_norm"}
        assert result["correct"] == sum(r["correct"] for r in rows)
        assert result["correct_norm"] == sum(r["correct_norm"] for r in rows)
        assert result["accuracy_norm"] == result["correct_norm"] / 6
        assert (result["ci95_low_norm"], result["ci95_high_norm"]) == wilson_interval(result["correct_norm"], 6)
        assert result["parse_failures"] == 0 and result["max_new_tokens"] is None and result["beam_size"] is None


def test_generate_and_loglik_results_have_no_norm_fields(data_dir, gpt2_tokenizer, tmp_path):
    records = load_test(data_dir, "boolq")[:2]
    for mode in ("generate", "loglik"):
        result = evaluate_task(tiny_model("gpt2"), gpt2_tokenizer, records, "boolq", tmp_path / mode,
                               protocol=get_protocol("clean"), mode=mode, batch_size=2, max_new_tokens=2,
                               beam_size=1, max_examples=None, seed=0, show_progress=False, answer_format="label")
        assert not any(key.endswith("_norm") for key in result) and result["protocol"] == "clean"
