"""Opt-in end to end (`make test-llama-cpp`, which compiles llama-cpp-python from its sdist first): the real
bundled model, fine-tuned briefly, exported as GGUF and as LoRA-GGUF, loaded by llama.cpp itself; its greedy
answers to held-out prompts must be the tuned model's."""

import pytest

from leantune.evaluation.tasks import held_out_examples
from leantune.export.api import export
from leantune.generate import generate_reply, load_for_inference
from leantune.runs.rundir import open_run_dir
from leantune.training.api import train

pytestmark = [pytest.mark.llama_cpp, pytest.mark.slow]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    pytest.importorskip("llama_cpp")  # here, not at import: the default suite deselects these tests without a skip
    runs = tmp_path_factory.mktemp("llama-cpp-runs")
    result = train(None, ["model.base=smollm2-135m", "data.train=sms-spam", "data.eval_size=100", "data.max_seq_len=256",
                          "training.max_steps=30", "training.micro_batch_size=8", "training.lr=5e-4",
                          "eval.after_train=false", f"output.runs_dir={runs}"])
    run = open_run_dir(result.run_dir)
    # each prompt: the held-out conversation up to the reply (a system message, then the user's)
    prompts = [[m for m in ex.messages if m["role"] != "assistant"] for ex in held_out_examples(run.config())[:12]]
    model, tokenizer = load_for_inference(str(run.path), "cpu")
    expected = [generate_reply(model, tokenizer, p[-1]["content"], max_new_tokens=4,
                               system=p[0]["content"] if p[0]["role"] == "system" else None) for p in prompts]
    assert {"spam", "ham"} <= set(expected)  # it learned the task, so answers are not near-ties
    return run, prompts, expected


def _first_token_gap(model, tokenizer, messages) -> float:
    import torch

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        top = model(input_ids=ids["input_ids"]).logits[0, -1].topk(2).values
    return (top[0] - top[1]).item()


def _answers(llm, prompts):
    return [llm.create_chat_completion(messages=p, max_tokens=4, temperature=0)
            ["choices"][0]["message"]["content"].strip() for p in prompts]


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_llama_cpp_loads_the_merged_gguf(tuned, quant, tmp_path):
    run, prompts, expected = tuned
    record = export(str(run.path), "gguf", quant, out=tmp_path / "g", say=lambda _: None, check_items=8)
    name = next(n for n in record.files if n.endswith(".gguf"))
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(tmp_path / "g" / name), n_ctx=512, n_threads=2, verbose=False, seed=0)
    if quant != "f16":
        # 8 bits may flip a borderline answer of the tuned model: llama.cpp must answer what the same file
        # answers through transformers' GGUF loader (the quality cost is the export check's and the benchmark's)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(tmp_path / "g", gguf_file=name)
        tokenizer = load_for_inference(str(run.path), "cpu")[1]
        expected = [generate_reply(model, tokenizer, p[-1]["content"], max_new_tokens=4,
                                   system=p[0]["content"] if p[0]["role"] == "system" else None) for p in prompts]
        answers = _answers(llm, prompts)
        # llama.cpp also rounds activations to 8 bits in q8_0 matmuls, so a near-tie may still go the other way:
        # every differing answer must be one where the file's top two first tokens are within 0.5 logits
        for prompt, got, want in zip(prompts, answers, expected):
            if got != want:
                assert _first_token_gap(model, tokenizer, prompt) < 0.5, (prompt, got, want)
        assert sum(a == b for a, b in zip(answers, expected)) >= len(prompts) - 2
        return
    assert _answers(llm, prompts) == expected


def test_llama_cpp_applies_the_lora_gguf(tuned, tmp_path):
    run, prompts, expected = tuned
    export(str(run.path), "gguf-lora", out=tmp_path / "l", say=lambda _: None, check_items=8)
    base = (tmp_path / "l" / "Modelfile").read_text().splitlines()[0].removeprefix("FROM ").strip()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=base, lora_path=str(tmp_path / "l" / "adapter.gguf"), n_ctx=512, n_threads=2,
                          verbose=False, seed=0)
    assert _answers(llm, prompts) == expected
