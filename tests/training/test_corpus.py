"""Readers of the medical QA formats and their error messages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from medrt_train.corpus import CorpusError, load, question_text
from medrt_train.examples import load_instructions

PUBMEDQA = Path(__file__).parents[3] / "shared" / "data" / "pubmedqa" / "ori_pqal.json"


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_medqa(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "medqa.jsonl", [
        {"question": "A 45-year-old man has crushing chest pain. Next step?",
         "options": {"A": "Aspirin", "B": "Discharge", "C": "MRI", "D": "Antacids"},
         "answer_idx": "A", "answer": "Aspirin", "meta_info": "step1"},
        {"question": "Drug of choice for absence seizures?",
         "options": {"A": "Phenytoin", "B": "Ethosuximide"}, "answer_idx": "B"}])
    records = load(path, "medqa")
    assert [r.answer for r in records] == ["A", "B"]
    assert records[0].options["A"] == "Aspirin" and records[0].source == "medqa"
    assert records[1].context == ""
    assert question_text(records[1]).splitlines() == [
        "Drug of choice for absence seizures?", "A. Phenytoin", "B. Ethosuximide"]


def test_pubmedqa(tmp_path: Path) -> None:
    path = tmp_path / "ori_pqal.json"
    path.write_text(json.dumps({
        "222": {"QUESTION": "Does aspirin reduce stroke risk?", "CONTEXTS": ["Aim.", "Results."],
                "LABELS": ["OBJ", "RES"], "final_decision": "yes", "LONG_ANSWER": "It does."},
        "111": {"QUESTION": "Is X useful?", "CONTEXTS": ["Only one."], "final_decision": "maybe",
                "LONG_ANSWER": "Unclear."}}))
    records = load(path, "pubmedqa")
    assert [r.id for r in records] == ["111", "222"]  # sorted ids, the project's split order
    assert records[1].answer == "yes" and records[1].options == {}
    assert records[1].context == "Aim.\nResults." and records[1].explanation == "It does."


def test_medmcqa_one_and_zero_based(tmp_path: Path) -> None:
    row = {"question": "Vitamin deficient in scurvy?", "opa": "A", "opb": "B12", "opc": "C",
           "opd": "D", "exp": "Ascorbic acid."}
    one = load(_jsonl(tmp_path / "m1.jsonl", [dict(row, cop=3), dict(row, cop=1)]), "medmcqa")
    assert [r.answer for r in one] == ["C", "A"]
    assert one[0].options == {"A": "A", "B": "B12", "C": "C", "D": "D"}
    assert one[0].explanation == "Ascorbic acid."
    zero = load(_jsonl(tmp_path / "m0.jsonl", [dict(row, cop=2), dict(row, cop=0)]), "medmcqa")
    assert [r.answer for r in zero] == ["C", "A"]


def test_generic_jsonl(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "mine.jsonl", [{"question": "How is gout treated?",
                                             "category": "treatment"},
                                            {"question": "q", "answer": "yes", "context": "c",
                                             "source": "ward-notes"}])
    records = load(path, "jsonl")
    assert records[0].source == "mine" and records[0].category == "treatment"
    assert records[1].answer == "yes" and records[1].source == "ward-notes"


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok"}\n\n{"question": "broken",\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: malformed JSON"):
        load(path, "jsonl")
    path.write_text('{"question": "ok"}\n[1, 2]\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: expected a JSON object"):
        load(path, "jsonl")


def test_missing_field_is_named(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "medqa.jsonl", [{"question": "q", "options": {"A": "a"},
                                              "answer_idx": "A"},
                                             {"question": "q", "options": {"A": "a"}}])
    with pytest.raises(CorpusError, match=r"medqa\.jsonl:2: .*missing the field 'answer_idx'"):
        load(path, "medqa")
    pub = tmp_path / "p.json"
    pub.write_text(json.dumps({"9": {"QUESTION": "q", "final_decision": "yes"}}))
    with pytest.raises(CorpusError, match=r"entry 9: .*missing the field 'CONTEXTS'"):
        load(pub, "pubmedqa")
    mcq = _jsonl(tmp_path / "mcq.jsonl", [{"question": "q", "opa": "1", "opb": "2", "opd": "4",
                                           "cop": 1}])
    with pytest.raises(CorpusError, match="missing the field 'opc'"):
        load(mcq, "medmcqa")
    inst = _jsonl(tmp_path / "inst.jsonl", [{"question": "q"}])
    with pytest.raises(CorpusError, match=r"inst\.jsonl:1: .*missing the field 'response'"):
        load_instructions(inst)


def test_bad_values_and_unknown_format(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "medqa.jsonl", [{"question": "q", "options": {"A": "a"},
                                              "answer_idx": "E"}])
    with pytest.raises(CorpusError, match="answer_idx 'E'"):
        load(path, "medqa")
    with pytest.raises(CorpusError, match="unknown corpus format 'csv'"):
        load(path, "csv")
    with pytest.raises(CorpusError, match="no such file"):
        load(tmp_path / "absent.jsonl", "jsonl")


@pytest.mark.skipif(not PUBMEDQA.is_file(), reason=f"PubMedQA not found at {PUBMEDQA}")
def test_real_pubmedqa_file() -> None:
    records = load(PUBMEDQA, "pubmedqa")
    assert len(records) == 1000
    assert {r.answer for r in records} == {"yes", "no", "maybe"}
    assert sum(r.answer == "maybe" for r in records[800:]) == 18  # the README's test split
