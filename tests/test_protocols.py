"""The published protocols (data/protocols.py) against ../shared/protocols/published_protocols.json:
prompt strings byte for byte, the token ids and labels rules (BOS, EOS, masking, truncation) with the
real GPT-2 BPE tokenizer and with a Llama-style tokenizer that prepends BOS, post-processing and the
extraction rules."""
import json
import os
from pathlib import Path

import pytest

from data.protocols import (HIRA_TEMPLATE, LLM_ADAPTERS_EVAL_NO_INPUT, LLM_ADAPTERS_EVAL_WITH_INPUT,
                            LLM_ADAPTERS_TRAIN_NO_INPUT, LLM_ADAPTERS_TRAIN_WITH_INPUT, PROTOCOLS,
                            PUBLISHED_PATTERNS, get_protocol, published_extract, word_extract)
from utils.batching import IGNORE_INDEX


@pytest.fixture(scope="module")
def published():
    path = Path(os.environ.get("KNOWHIRA_PROTOCOLS_JSON",
                               Path(__file__).resolve().parents[2] / "shared" / "protocols" / "published_protocols.json"))
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return json.loads(path.read_text())


def test_prompt_strings_are_the_published_ones(published):
    la = published["llm_adapters"]

    def from_json(s):
        return s.replace("{data_point['instruction']}", "{instruction}").replace(
            "{data_point['input']}", "{input}").replace("{data_point['output']}", "{output}")

    assert from_json(la["train_prompt_with_input"]) == LLM_ADAPTERS_TRAIN_WITH_INPUT
    assert from_json(la["train_prompt_no_input"]) == LLM_ADAPTERS_TRAIN_NO_INPUT
    assert la["eval_prompt_with_input"] == LLM_ADAPTERS_EVAL_WITH_INPUT
    assert la["eval_prompt_no_input"] == LLM_ADAPTERS_EVAL_NO_INPUT
    assert published["hira"]["template"] == HIRA_TEMPLATE
    assert la["extract"]["patterns"] == PUBLISHED_PATTERNS
    # the details the issue names: 16-space indentation, two spaces after "request." in training
    assert "request.  \n\n                ### Instruction" in LLM_ADAPTERS_TRAIN_NO_INPUT
    assert "request. \n\n                ### Instruction" in LLM_ADAPTERS_EVAL_NO_INPUT
    assert "\n### Instruction:\n{cinput}" in HIRA_TEMPLATE  # no indentation


def test_decoding_settings(published):
    la, hira = get_protocol("llm_adapters"), get_protocol("hira")
    assert (la.num_beams, la.max_new_tokens, la.train_on_inputs) == (
        published["llm_adapters"]["eval"]["num_beams"], published["llm_adapters"]["eval"]["max_new_tokens"],
        published["llm_adapters"]["train"]["train_on_inputs_default"]) == (4, 32, True)
    assert (hira.num_beams, hira.max_new_tokens, hira.train_on_inputs) == (
        published["hira"]["eval"]["num_beams"], published["hira"]["eval"]["max_new_tokens"], False) == (4, 16, False)
    assert set(PROTOCOLS) == {"clean", "llm_adapters", "hira"}


RECORD = {"instruction": "Please answer the following question with true or false, question: is the sky "
                         "blue?\n\nAnswer format: true/false", "input": "", "output": "the correct answer is true",
          "answer": "true"}


def test_llm_adapters_tokens_gpt2(gpt2_tokenizer):
    p, tok = get_protocol("llm_adapters"), gpt2_tokenizer
    ex = p.train_example(tok, RECORD, 256, train_on_inputs=True)
    text = LLM_ADAPTERS_TRAIN_NO_INPUT.format(instruction=RECORD["instruction"], output=RECORD["output"])
    # the whole text encoded at once (GPT-2 adds no BOS), then EOS; loss on every token
    assert tok.decode(ex["input_ids"]) == text + tok.eos_token
    assert ex["input_ids"][-1] == tok.eos_token_id and ex["labels"] == ex["input_ids"]
    masked = p.train_example(tok, RECORD, 256, train_on_inputs=False)
    n_prompt = len(tok(LLM_ADAPTERS_TRAIN_NO_INPUT.format(instruction=RECORD["instruction"], output=""))["input_ids"])
    assert masked["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert masked["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    # truncation from the RIGHT, and no EOS when the text fills the cutoff (as finetune.py does)
    short = p.train_example(tok, RECORD, 20, train_on_inputs=True)
    assert short["input_ids"] == tok(text)["input_ids"][:20]
    # evaluation: the other prompt string; the input field is ignored
    ids = p.eval_prompt_ids(tok, {**RECORD, "input": "ignored context"})
    assert tok.decode(ids) == LLM_ADAPTERS_EVAL_NO_INPUT.format(instruction=RECORD["instruction"])


def test_llm_adapters_tokens_bos(bos_tokenizer):
    p, tok = get_protocol("llm_adapters"), bos_tokenizer
    ex = p.train_example(tok, RECORD, 256, train_on_inputs=False)
    assert ex["input_ids"][0] == tok.bos_token_id and ex["input_ids"].count(tok.bos_token_id) == 1
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert ex["labels"][0] == IGNORE_INDEX  # BOS belongs to the masked prompt
    assert p.eval_prompt_ids(tok, RECORD)[0] == tok.bos_token_id


def test_hira_tokens(gpt2_tokenizer, bos_tokenizer):
    p = get_protocol("hira")
    for tok in (gpt2_tokenizer, bos_tokenizer):
        ex = p.train_example(tok, {**RECORD, "input": "ignored", "output": "  the correct answer is true "}, 256, False)
        ctx = tok(HIRA_TEMPLATE.format(cinput=RECORD["instruction"], target=""), add_special_tokens=False)["input_ids"]
        target = tok("the correct answer is true", add_special_tokens=False)["input_ids"]  # output stripped
        assert ex["input_ids"] == ctx + target  # no BOS in training, no EOS after the target
        assert tok.bos_token_id not in ex["input_ids"][:1] or tok is gpt2_tokenizer
        assert ex["labels"] == [IGNORE_INDEX] * len(ctx) + target  # loss on the answer only
        ids = p.eval_prompt_ids(tok, RECORD)  # evaluation: BOS + prompt
        assert ids[0] == tok.bos_token_id and ids[1:] == ctx
    long_target = p.train_example(gpt2_tokenizer, {**RECORD, "output": "word " * 40}, 256, False)
    assert sum(label != IGNORE_INDEX for label in long_target["labels"]) == 16  # target cut to 16 tokens


def test_clean_is_the_projects_protocol(gpt2_tokenizer):
    from data.tokenize import tokenize_record

    assert get_protocol("clean").train_example(gpt2_tokenizer, RECORD, 256, False) == \
        tokenize_record(gpt2_tokenizer, RECORD, 256, False)


def test_extraction_rules():
    # llm_adapters / hira: first match, case-sensitive, no word boundaries
    assert published_extract("this is untrue", "boolq") == "true"
    assert published_extract("TRUE", "boolq") is None
    assert published_extract("answer12 then answer3", "ARC-Easy") == "answer1"
    assert published_extract("false, not true", "boolq") == "false"
    # clean: word boundaries, case-insensitive
    assert word_extract("this is untrue", "boolq") is None
    assert word_extract("TRUE", "boolq") == "true"
    assert word_extract("answer12 then answer3", "ARC-Easy") == "answer3"
    # hira compares the extraction of the gold output
    assert get_protocol("hira").gold(RECORD, "boolq") == "true"
    assert get_protocol("llm_adapters").gold(RECORD, "boolq") == "true"


def test_post_processing(gpt2_tokenizer):
    tok = gpt2_tokenizer
    prompt = tok(LLM_ADAPTERS_EVAL_NO_INPUT.format(instruction="q"))["input_ids"]
    new = tok(" the correct answer is true\n\n### Response: answer2")["input_ids"]
    assert get_protocol("llm_adapters").answer_text(tok, prompt, new) == "the correct answer is true"
    hira_new = tok(" the answer is true Q: more R: x")["input_ids"] + [tok.eos_token_id] + tok(" false")["input_ids"]
    assert get_protocol("hira").answer_text(tok, [], hira_new) == " the answer is true "
    cut_at_eos = tok(" true")["input_ids"] + [tok.eos_token_id] + tok(" false")["input_ids"]
    assert get_protocol("hira").answer_text(tok, [], cut_at_eos) == " true"


@pytest.fixture(scope="module")
def bos_tokenizer(gpt2_tokenizer):
    """The GPT-2 BPE with a Llama-style post-processor: <s> (a new id) prepended to every text."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer.name_or_path)
    tok.add_special_tokens({"bos_token": "<s>"})
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))])
    tok.pad_token = tok.eos_token
    assert tok("a")["input_ids"][0] == tok.bos_token_id != tok.eos_token_id
    return tok


# ---- through the CLI ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(boolq_dir):
    return boolq_dir


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("protocol", ["hira", "llm_adapters"])
def test_protocol_recorded_and_used_by_evaluation(protocol, data, tiny_neo_dir, tmp_path):
    import train_knowhira

    common = ["--data_dir", str(data), "--dataset", "boolq"]
    assert train_knowhira.main(["--model_name", str(tiny_neo_dir), *common, "--protocol", protocol,
                                "--r_ab", "4", "--target_modules", "q_proj,v_proj", "--batch", "2",
                                "--max_steps", "1", "--val_size", "4", "--output_folder", str(tmp_path),
                                "--run_name", "r"]) == 0
    run = tmp_path / "r"
    saved = json.loads((run / "args.json").read_text())
    assert saved["protocol"] == protocol and saved["train_on_inputs"] == (protocol == "llm_adapters")
    assert train_knowhira.main(["--ckpt", str(run), *common, "--max_examples", "2"]) == 0
    res = json.loads((run / "results.json").read_text())
    p = get_protocol(protocol)
    assert res["meta"]["protocol"] == protocol and res["meta"]["protocol_deviations"] == {}
    assert (res["tasks"]["boolq"]["beam_size"], res["tasks"]["boolq"]["max_new_tokens"]) == (p.num_beams, p.max_new_tokens)
    assert res["tasks"]["boolq"]["protocol"] == protocol
    # another protocol or decoding at evaluation time is recorded as a deviation
    assert train_knowhira.main(["--ckpt", str(run), *common, "--max_examples", "2", "--protocol", "clean",
                                "--results_dir", str(tmp_path / "other")]) == 0
    other = json.loads((tmp_path / "other" / "results.json").read_text())["meta"]
    assert other["protocol"] == "clean" and other["protocol_deviations"]["trained_protocol"] == protocol
