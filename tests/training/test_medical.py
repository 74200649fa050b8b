"""The medical classifier and templates (medrt.medical), on the shipped question sets."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from medrt import medical
from medrt.medical import KeywordClassifier, build_prompt, classify, system_prompt

DATA = Path(medical.__file__).with_name("data")
SEEDS = Path(__file__).parents[2] / "training" / "medrt_train" / "data" / "seed_questions.jsonl"
LABELS = ("medication", "diagnosis", "treatment", "prevention", "emergency", "general")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def confusion(rows: list[dict], clf: KeywordClassifier) -> tuple[float, dict]:
    matrix = Counter((r["category"], clf.classify(r["question"])) for r in rows)
    correct = sum(n for (true, pred), n in matrix.items() if true == pred)
    return correct / len(rows), matrix


def test_api_returns_one_of_six_categories() -> None:
    assert classify("What is the maximum daily dose of paracetamol?") == "medication"
    assert classify("My father collapsed and is not breathing") == "emergency"
    assert classify("How is gout treated?") == "treatment"
    assert classify("What are the symptoms of measles?") == "diagnosis"
    assert classify("How can I prevent the flu?") == "prevention"


def test_no_match_is_general_and_ties_follow_tie_order() -> None:
    clf = KeywordClassifier({"medication": ["pill"], "emergency": ["now"], "diagnosis": ["test"],
                             "treatment": ["cure"], "prevention": ["avoid"]},
                            tie_order=["prevention", "treatment", "diagnosis", "medication",
                                       "emergency"])
    assert clf.classify("hello there") == "general"
    assert clf.scores("take the pill now") == {"medication": 1, "emergency": 1, "diagnosis": 0,
                                               "treatment": 0, "prevention": 0}
    assert clf.classify("take the pill now") == "medication"  # listed before emergency
    assert clf.classify("a pill now, a pill to avoid, a cure") == "prevention"
    assert clf.classify("pills") == "general"  # whole words only without a trailing '*'


def test_default_tie_order_puts_emergency_first() -> None:
    scores = medical.default_classifier().scores("chest pain after taking aspirin")
    assert scores["emergency"] == scores["medication"] >= 1
    assert classify("chest pain after taking aspirin") == "emergency"


def test_user_keyword_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "kw.json"
    path.write_text(json.dumps({"categories": {"prevention": ["sunscreen"],
                                               "medication": ["tablet*"]}}))
    clf = KeywordClassifier.from_file(path)
    assert clf.classify("Which sunscreen is best?") == "prevention"
    assert clf.classify("Two tablets a day?") == "medication"
    monkeypatch.setenv("MEDRT_MEDICAL_KEYWORDS", str(path))
    medical.default_classifier.cache_clear()
    try:
        assert classify("How do I use an EpiPen?") == "general"
    finally:
        medical.default_classifier.cache_clear()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"categories": {"cardiology": ["heart"]}}))
    with pytest.raises(ValueError, match="cardiology"):
        KeywordClassifier.from_file(bad)


def test_templates_base_plus_category_suffix() -> None:
    emergency = system_prompt("emergency")
    medication = system_prompt("medication")
    assert emergency.startswith(medical.P_BASE) and medication.startswith(medical.P_BASE)
    assert "emergency number" in emergency and "steps" in emergency
    assert "doses" in medication and "contraindications" in medication
    prompt = build_prompt("My friend is choking, what do I do?")
    assert prompt.startswith(emergency) and prompt.endswith(
        "Question: My friend is choking, what do I do?\nAnswer:")
    assert build_prompt("x", category="prevention").startswith(system_prompt("prevention"))
    with pytest.raises(ValueError, match="cardiology"):
        build_prompt("x", category="cardiology")


def test_labelled_set_accuracy_and_confusion_matrix() -> None:
    rows = _read(DATA / "labelled_questions.jsonl")
    assert len(rows) >= 150
    assert {r["category"] for r in rows} == set(LABELS)
    accuracy, matrix = confusion(rows, medical.default_classifier())
    # Measured when the keyword sets were frozen (tuned on the seed set only): 144/160.
    assert accuracy >= 0.90, (accuracy, matrix)
    for label in LABELS[:5]:  # every category is recognised most of the time
        total = sum(n for (true, _), n in matrix.items() if true == label)
        assert matrix[(label, label)] / total >= 0.8, (label, matrix)


def test_seed_set_covers_the_five_categories() -> None:
    rows = _read(SEEDS)
    assert len(rows) >= 300
    counts = Counter(r["category"] for r in rows)
    assert set(counts) == set(LABELS[:5]) and min(counts.values()) >= 50
    assert len({r["question"] for r in rows}) == len(rows)
    labelled = {r["question"] for r in _read(DATA / "labelled_questions.jsonl")}
    assert not labelled & {r["question"] for r in rows}  # the evaluation set is disjoint


def test_imports_without_the_cpp_extension() -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'medrt._core':\n"
            "            raise ImportError('no C++ extension')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import medrt.medical as m\n"
            "print(m.classify('How do I prevent the flu?'))\n")
    root = Path(__file__).parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(root / "python")}, check=True)
    assert out.stdout.strip() == "prevention"
