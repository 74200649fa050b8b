"""Chat templates render exactly as transformers renders them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from medrt.chat_template import render_chat_template
from medrt.errors import InvalidRequest
from medrt.tokenizer import Tokenizer

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers"
DEEPSEEK_TEMPLATES = sorted(TEMPLATE_DIR.glob("deepseek-ai-DeepSeek-R1-Distill-*.jinja"))
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"

CONVERSATION = [
    {"role": "system", "content": "You are a careful clinician."},
    {"role": "user", "content": "Dose of amoxicillin for otitis media in adults?"},
    {"role": "assistant",
     "content": "<think>\nAdult, uncomplicated.\n</think>\n\n500 mg every 8 hours for 5 days."},
    {"role": "user", "content": "And for a child of 20 kg?"},
]
TOOL_CONVERSATION = [
    {"role": "user", "content": "What does the patient weigh?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function",
         "function": {"name": "lookup_weight", "arguments": '{"patient": "<id 7>"}'}}]},
    {"role": "tool", "content": "70 kg"},
]


def _model_dir(tmp_path: Path, template: str) -> Path:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    tok = HFTokenizer(models.WordLevel({"<unk>": 0, BOS: 1, EOS: 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": BOS, "special": True}, "eos_token": EOS,
         "chat_template": template}), encoding="utf-8")
    return tmp_path


def _transformers_tokenizer(model_dir: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"), bos_token=BOS, eos_token=EOS)


def _render_both(tok: Tokenizer, hf: Any, template: str, conversation: list[dict],
                 **kwargs: Any) -> tuple[str, str]:
    try:
        expected = hf.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                          **kwargs)
    except Exception as e:  # noqa: BLE001 - parity includes failing the same way
        expected = type(e).__name__
    try:
        got = tok.apply_chat_template(conversation, **kwargs)
    except InvalidRequest as e:
        got = type(e.__cause__).__name__
    return got, expected


@pytest.mark.skipif(not DEEPSEEK_TEMPLATES, reason=f"no DeepSeek templates in {TEMPLATE_DIR}")
@pytest.mark.parametrize("template_path", DEEPSEEK_TEMPLATES, ids=lambda p: p.stem)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_deepseek_templates_match_transformers(tmp_path: Path, template_path: Path,
                                               add_generation_prompt: bool) -> None:
    template = template_path.read_text(encoding="utf-8")
    model_dir = _model_dir(tmp_path, template)
    tok = Tokenizer(model_dir)
    hf = _transformers_tokenizer(model_dir)
    assert tok.chat_template == template
    got, expected = _render_both(tok, hf, template, CONVERSATION,
                                 add_generation_prompt=add_generation_prompt)
    assert got == expected
    # The reasoning of earlier assistant turns is dropped; the answer is kept.
    assert got.startswith(BOS + "You are a careful clinician.<｜User｜>")
    assert "Adult, uncomplicated" not in got and "500 mg every 8 hours" in got
    if add_generation_prompt:
        # The Qwen template closes the think block unless enable_thinking is passed.
        closing = "</think>" if "Qwen" in template_path.stem else ""
        assert got.endswith("<｜User｜>And for a child of 20 kg?<｜Assistant｜><think>\n" + closing)
    else:
        assert got.endswith("<｜User｜>And for a child of 20 kg?")

    for extra in ({"enable_thinking": True}, {}):
        got, expected = _render_both(tok, hf, template, TOOL_CONVERSATION,
                                     add_generation_prompt=add_generation_prompt, **extra)
        assert got == expected


def test_template_helpers_behave_like_transformers(tmp_path: Path) -> None:
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | tojson }}\n{% endfor %}"
        "{% if tools %}{{ tools | tojson(indent=2) }}{% endif %}"
        "{% if add_generation_prompt %}{{ eos_token }}{% endif %}"
        "{% if messages | length > 2 %}{{ raise_exception('too long') }}{% endif %}")
    model_dir = _model_dir(tmp_path, template)
    tok = Tokenizer(model_dir)
    hf = _transformers_tokenizer(model_dir)
    chat = [{"role": "user", "content": "5 < 7 & \"x\" ≥ é"},
            {"role": "assistant", "content": "ok", "name": None}]
    tools = [{"name": "f", "parameters": {"a": "<b>"}}]
    for agp in (False, True):
        got = tok.apply_chat_template(chat, add_generation_prompt=agp, tools=tools)
        assert got == hf.apply_chat_template(chat, chat_template=template, tokenize=False,
                                             add_generation_prompt=agp, tools=tools)
    assert "\"5 < 7 & \\\"x\\\" ≥ é\"" in got  # tojson neither escapes HTML nor non-ASCII
    with pytest.raises(InvalidRequest, match="too long"):
        tok.apply_chat_template(chat * 2)
    with pytest.raises(InvalidRequest, match="TypeError"):  # tojson of a missing key
        render_chat_template("{{ messages[0]['name'] | tojson }}", [{"role": "user",
                                                                      "content": "x"}])
    # a user message without content is named before the template runs
    with pytest.raises(InvalidRequest, match=r"messages\[0\].content: is missing or null"):
        tok.apply_chat_template([{"role": "user"}])


def test_sandbox_blocks_python_internals() -> None:
    with pytest.raises(InvalidRequest):
        render_chat_template("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": ""}])
    with pytest.raises(InvalidRequest):
        render_chat_template("{% set x = messages.append(1) %}", [{"role": "user", "content": ""}])


@pytest.mark.parametrize(("template", "message"), [
    ("{{ " + "{" * 3000 + " }}", "nested too deeply"),          # found by fuzz_tokenizer_files
    ("{% if " + "(" * 3000 + " %}", "nested too deeply"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursion too deep"),
    ("{{ 'a' * 10**12 }}", "repeats a sequence"),
    ("{{ [0] * 10**9 }}", "repeats a sequence"),
    ("{{ 3 ** 100000 }}", "power of more than"),
])
def test_hostile_templates_fail_cleanly(template: str, message: str) -> None:
    # A checkpoint's template is untrusted: deep nesting, endless recursion and huge
    # repetitions end as InvalidRequest instead of RecursionError or an exhausted memory.
    with pytest.raises(InvalidRequest, match=message):
        render_chat_template(template, [{"role": "user", "content": "x"}])
    # Small uses of the same operators still work.
    assert render_chat_template("{{ '-' * 3 }}{{ 2 ** 10 }}", []) == "---1024"


def test_strftime_and_generation_block() -> None:
    out = render_chat_template(
        "{% generation %}{{ strftime_now('%Y') | length }}{% endgeneration %}",
        [{"role": "user", "content": "hi"}])
    assert out == "4"


def test_bad_messages_and_missing_template(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="role"):
        render_chat_template("{{ messages }}", [{"content": "no role"}])
    with pytest.raises(InvalidRequest, match="does not compile"):
        render_chat_template("{% for %}", [{"role": "user", "content": "x"}])
    model_dir = _model_dir(tmp_path, "")
    (model_dir / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InvalidRequest, match="no chat template"):
        Tokenizer(model_dir).apply_chat_template([{"role": "user", "content": "x"}])


def test_chat_template_jinja_file_wins(tmp_path: Path) -> None:
    model_dir = _model_dir(tmp_path, "from config")
    (model_dir / "chat_template.jinja").write_text("from file", encoding="utf-8")
    assert Tokenizer(model_dir).apply_chat_template([{"role": "user", "content": "x"}]) == \
        "from file"
