"""The corpus builder, encoding with entity weights, and the curriculum."""
from __future__ import annotations

import json
from pathlib import Path

from medrt.medical import system_prompt
from medrt_train.cli import main
from medrt_train.curriculum import complexity, curriculum_order
from medrt_train.entities import EntityLexicon
from medrt_train.examples import IGNORE, Instruction, encode
from transformers import AutoTokenizer


def test_corpus_builder_writes_provenance(tiny_pair, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "What is the dose of paracetamol for adults?", "source": "mine"},
        {"question": "How is gout treated?", "category": "treatment"},
        {"question": "Someone is choking, what do I do?"}]))
    assert main(["corpus", "--seeds", str(seeds), "--teacher", str(tiny_pair["teacher"]),
                 "--out", str(tmp_path / "c"), "--max-new-tokens", "4",
                 "--batch-size", "2"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "c" / "corpus.jsonl").read_text().splitlines()]
    assert [r["category"] for r in rows] == ["medication", "treatment", "emergency"]
    assert rows[2]["system"] == system_prompt("emergency")
    prov = rows[0]["provenance"]
    assert prov["source"] == "mine" and prov["teacher"] == str(tiny_pair["teacher"])
    assert prov["generation"]["max_new_tokens"] == 4 and prov["generation"]["temperature"] == 0
    assert all(isinstance(r["response"], str) for r in rows)
    assert (tmp_path / "c" / "config.yaml").is_file()


def test_encoding_masks_prompt_and_weights_entities(tiny_pair) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_pair["teacher"])
    item = Instruction("What is the dose of paracetamol?", "Take 500 mg of paracetamol.",
                       system_prompt("medication"), "medication")
    enc = encode(tok, item, 512, EntityLexicon.from_file())
    n_prompt = enc["labels"].count(IGNORE)
    response = [tok.convert_ids_to_tokens(i) for i in enc["input_ids"][n_prompt:]]
    assert response == ["take", "500", "mg", "of", "paracetamol", ".", "<|im_end|>"]
    weights = enc["entity_weights"][n_prompt:]
    assert weights == [0.0, 2.0, 2.0, 0.0, 2.0, 0.0, 0.0]  # dose and drug tokens
    assert all(w == 0.0 for w in enc["entity_weights"][:n_prompt])
    short = encode(tok, item, 20)
    assert len(short["input_ids"]) == 20 and short["labels"][-1] != IGNORE


def test_curriculum_orders_basic_to_complex() -> None:
    lex = EntityLexicon.from_file()
    basic = Instruction("How can I stay healthy?", "Exercise and sleep well.",
                        category="prevention")
    hard = Instruction("Can I take warfarin with ibuprofen?",
                       "No: ibuprofen interacts with warfarin and raises the bleeding risk; "
                       "paracetamol 500 mg is an alternative.", category="medication")
    assert complexity(basic, lex) < complexity(hard, lex)
    scores = [5.0, 1.0, 3.0, 0.5, 4.0, 2.0]
    order = curriculum_order(scores, stages=3, seed=1)
    assert sorted(order) == list(range(6))
    stage_of = lambda i: sorted(range(6), key=lambda k: scores[k]).index(i) // 2
    assert [stage_of(i) for i in order] == [0, 0, 1, 1, 2, 2]
    assert curriculum_order(scores, stages=6) == [3, 1, 5, 2, 4, 0]


def test_pubmedqa_seeds_never_bring_test_questions(tiny_pair, tmp_path: Path, caplog) -> None:
    import logging

    from medrt_train.data.pubmedqa import load_split

    caplog.set_level(logging.INFO)
    entries = {f"{i:05d}": {"QUESTION": f"Does drug {i} help?", "CONTEXTS": ["A trial."],
                            "LONG_ANSWER": "It helps.", "final_decision": "yes"}
               for i in range(1000)}
    seeds = tmp_path / "ori_pqal.json"
    seeds.write_text(json.dumps(entries))
    assert main(["corpus", "--seeds", str(seeds), "--format", "pubmedqa", "--sample", "50",
                 "--teacher", str(tiny_pair["teacher"]), "--out", str(tmp_path / "c"),
                 "--max-new-tokens", "1", "--batch-size", "25"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "c" / "corpus.jsonl").read_text().splitlines()]
    test_ids = {q.pubmed_id for q in load_split("test", seeds)}
    assert len(rows) == 50
    assert not [r["id"] for r in rows if r["id"].split("-", 1)[1] in test_ids]
    assert "kept 800 dev questions, dropped 200 test questions" in caplog.text
