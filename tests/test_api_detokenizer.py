"""Incremental detokenization and stop strings, with real byte-level BPE tokenizers."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from medrt.detokenizer import IncrementalDetokenizer, StopStringMatcher, TextStream
from medrt.request_state import RequestState
from medrt.sampling_params import SamplingParams
from medrt.tokenizer import Tokenizer

CORPUS = [
    "The patient was given amoxicillin 500 mg three times a day for otitis media.",
    "Adults with community acquired pneumonia receive antibiotics and fluids.",
    "Stop the infusion if the blood pressure drops. STOP means stop.",
    "Dose, route, frequency and duration are recorded in the chart.",
] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Characters the tokenizer never saw: each is split into 2, 3 or 4 byte tokens.
MULTIBYTE = "Fièvre 39 °C, 发烧 😷 → ОРВИ"


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    model_dir = tmp_path_factory.mktemp("bpe")
    tok.save(str(model_dir / "tokenizer.json"))
    (model_dir / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}), encoding="utf-8")
    (model_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return model_dir


@pytest.fixture(scope="module")
def tokenizer(bpe_dir: Path) -> Tokenizer:
    return Tokenizer(bpe_dir)


def _stream(tokenizer: Tokenizer, ids: list[int], prompt: list[int] | None = None,
            **kwargs: object) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, prompt or [], **kwargs)  # type: ignore[arg-type]
    chunks = []
    for tid in ids:
        done = stream.push(tid)
        chunks.append(stream.take_delta())
        if done:
            break
    else:
        stream.finish()
        chunks.append(stream.take_delta())
    return [c for c in chunks if c], stream


def test_tokenizer_metadata(tokenizer: Tokenizer) -> None:
    assert tokenizer.bos_token == "<|endoftext|>" and tokenizer.bos_token_id == 0
    assert tokenizer.eos_token_id == 2
    # tokenizer_config's EOS first, then generation_config's list, without repeats.
    assert tokenizer.eos_token_ids == [2, 0]
    # No add_bos_token in tokenizer_config and no post-processor: nothing is added.
    assert tokenizer.encode("Dose") == tokenizer.encode("Dose", add_special_tokens=False)


def test_multibyte_characters_split_across_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MULTIBYTE)
    # Confirm the premise: some tokens hold only part of a character.
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids)
    chunks, stream = _stream(tokenizer, ids)
    assert "".join(chunks) == MULTIBYTE == stream.text
    assert not any("\ufffd" in c for c in chunks)
    assert len(chunks) > 5  # streamed, not produced at the end


def test_truncated_character_is_flushed_as_the_tokenizer_decodes_it(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("ok 😷")
    cut = ids[:-1]  # the emoji's last byte never arrives
    _, stream = _stream(tokenizer, cut)
    assert stream.text == tokenizer.decode(cut)
    assert stream.text.endswith("\ufffd")


def test_leading_space_kept_with_prompt_context(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("The patient was")
    out = tokenizer.encode(" given amoxicillin")
    _, stream = _stream(tokenizer, out, prompt=prompt)
    assert stream.text == " given amoxicillin"


def test_decoding_work_is_linear(tokenizer: Tokenizer) -> None:
    decoded = []
    real_decode = tokenizer.decode

    class Counting:
        def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
            decoded.append(len(ids))
            return real_decode(ids, skip_special_tokens)

    ids = tokenizer.encode(" ".join(CORPUS) + MULTIBYTE) * 3
    detok = IncrementalDetokenizer(Counting(), [])  # type: ignore[arg-type]
    text = "".join(detok.push(t) for t in ids) + detok.flush()
    assert text == real_decode(ids)
    assert sum(decoded) < 10 * len(ids)


def test_special_tokens_skipped_or_kept(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Dose") + [tokenizer.token_to_id("<|im_end|>")]
    assert _stream(tokenizer, ids)[1].text == "Dose"
    kept = _stream(tokenizer, ids, skip_special_tokens=False)[1].text
    assert kept == "Dose<|im_end|>"


def _split_ids(tokenizer: Tokenizer, pieces: list[str]) -> list[int]:
    return [t for p in pieces for t in tokenizer.encode(p)]


def test_stop_string_split_across_tokens_is_not_leaked(tokenizer: Tokenizer) -> None:
    ids = _split_ids(tokenizer, ["Give fluids", " S", "T", "OP", " then more"])
    chunks, stream = _stream(tokenizer, ids, stop=["STOP"])
    assert stream.stop_string == "STOP"
    assert "".join(chunks) == stream.text == "Give fluids "
    assert not any("S" in c for c in chunks)


def test_stop_string_kept_when_asked(tokenizer: Tokenizer) -> None:
    ids = _split_ids(tokenizer, ["Give fluids", " S", "T", "OP", " then more"])
    chunks, stream = _stream(tokenizer, ids, stop=["STOP"], include_stop_str_in_output=True)
    assert "".join(chunks) == stream.text == "Give fluids STOP"


def test_stop_at_the_first_token(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Dose then")
    first = tokenizer.decode(ids[:1])
    chunks, stream = _stream(tokenizer, ids, stop=[first])
    assert stream.text == "" and chunks == [] and stream.stop_string == first


def test_false_start_of_stop_string_is_released(tokenizer: Tokenizer) -> None:
    stream = TextStream(tokenizer, [], stop=["STOP"])
    for tid in _split_ids(tokenizer, ["Check S", "T"]):
        assert not stream.push(tid)
    # "S", then "ST", are held back while they could still become "STOP".
    assert stream.take_delta() == "Check "
    for tid in tokenizer.encode(" segment"):
        assert not stream.push(tid)
    stream.finish()
    assert stream.take_delta() == "ST segment" and stream.stop_string is None


def test_earliest_of_several_stop_strings_wins(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("Dose: 500 mg. Route: oral.")
    _, stream = _stream(tokenizer, ids, stop=["oral", "mg"])
    assert stream.text == "Dose: 500 " and stream.stop_string == "mg"


def test_stop_string_inside_a_multibyte_stream(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("发烧 😷 END rest")
    chunks, stream = _stream(tokenizer, ids, stop=["😷 E"])
    assert stream.text == "发烧 " and "".join(chunks) == "发烧 "


def test_stop_strings_wait_for_min_tokens(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("STOP a b c")
    _, stream = _stream(tokenizer, ids, stop=["STOP"], min_tokens=len(ids))
    assert stream.stop_string is None and stream.text == "STOP a b c"


def test_matcher_safe_length() -> None:
    m = StopStringMatcher(["</answer>", "\n\n"])
    assert m.safe_length("done </ans") == len("done ")
    assert m.safe_length("line\n") == len("line")
    assert m.safe_length("plain") == 5
    assert m.find("a\n\nb", 2) == (1, "\n\n")


def _raw(ids: list[int], finished: bool = False, reason: str = "", stop_id: int = -1,
         logprobs: list | None = None) -> SimpleNamespace:
    return SimpleNamespace(request_id=7, new_token_ids=ids, logprobs=logprobs or [],
                           finished=finished, finish_reason=reason, stop_token_id=stop_id,
                           num_prompt_tokens=3, num_cached_tokens=2)


def test_request_state_eos_text_left_out_and_stop_token_reason(tokenizer: Tokenizer) -> None:
    eos = tokenizer.token_to_id("<|im_end|>")
    ids = tokenizer.encode("Rest")
    params = SamplingParams(skip_special_tokens=False, stop_token_ids=[eos])
    state = RequestState("r", None, [1, 2, 3], params, tokenizer)
    state.process(_raw(ids), 1.0)
    state.process(_raw([eos], finished=True, reason="stop", stop_id=eos), 2.0)
    out = state.output()
    assert out.finished and out.outputs[0].text == "Rest"
    assert out.outputs[0].token_ids == ids + [eos]
    assert out.outputs[0].finish_reason == "stop" and out.outputs[0].stop_reason == eos
    assert out.num_cached_tokens == 2 and out.metrics.time_to_first_token is not None


def test_request_state_stop_string_asks_for_abort(tokenizer: Tokenizer) -> None:
    head = _split_ids(tokenizer, ["Give", " S"])
    ids = head + _split_ids(tokenizer, ["TOP", " more"])
    n = len(head)
    state = RequestState("r", None, [1], SamplingParams(stop="STOP", logprobs=1), tokenizer)
    lps = [(-0.5, [(t, -0.5), (t + 1, -1.0)]) for t in ids]
    state.process(_raw(head, logprobs=lps[:n]), 1.0)
    assert not state.finished and state.output().outputs[0].text == "Give "
    state.process(_raw(ids[n:], logprobs=lps[n:]), 2.0)
    assert state.finished and state.needs_abort and not state.engine_done
    state.process(_raw([], finished=True, reason="abort"), 3.0)
    out = state.output().outputs[0]
    assert state.engine_done and out.finish_reason == "stop" and out.stop_reason == "STOP"
    # Tokens after the one that completed the stop string are dropped.
    stop_end = n + len(tokenizer.encode("TOP"))
    assert out.text == "Give " and out.token_ids == ids[:stop_end]
    assert out.logprobs is not None and len(out.logprobs) == stop_end
    assert out.logprobs[0][ids[0]].rank == 1
    assert out.cumulative_logprob == pytest.approx(-0.5 * stop_end)


def test_delta_outputs_concatenate(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MULTIBYTE)
    state = RequestState("r", None, [1], SamplingParams(), tokenizer)
    texts, tokens = [], []
    for i, t in enumerate(ids):
        last = i == len(ids) - 1
        state.process(_raw([t], finished=last, reason="length" if last else ""), float(i))
        out = state.output(delta=True).outputs[0]
        texts.append(out.text)
        tokens += out.token_ids
    assert "".join(texts) == MULTIBYTE and tokens == ids


def test_tokenizer_bos_rules(tmp_path: Path, bpe_dir: Path, tokenizer: Tokenizer) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import processors

    src = tmp_path / "pp"
    src.mkdir()
    hf = HFTokenizer.from_file(str(bpe_dir / "tokenizer.json"))
    hf.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", 0)])
    hf.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>",
                                                           "bos_token": "<|endoftext|>"}))
    plain = tokenizer.encode("Dose", add_special_tokens=False)
    # The post-processor decides when tokenizer_config has no add_bos_token ...
    assert Tokenizer(src).encode("Dose") == [0] + plain
    # ... and tokenizer_config's flags win when they are set, as in transformers.
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "bos_token": "<|endoftext|>", "add_bos_token": False,
         "add_eos_token": True}))
    assert Tokenizer(src).encode("Dose") == plain + [2]
    assert Tokenizer(src).encode("Dose", add_special_tokens=False) == plain


@pytest.fixture(scope="module")
def qwen2_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    vocab = Path(__file__).resolve().parents[2] / "shared/data/tokenizers/ggml-vocab-qwen2.gguf"
    if not vocab.is_file():
        pytest.skip(f"no Qwen2 vocabulary at {vocab}")
    from medrt.models import gguf_metadata as metadata
    from medrt.models import gguf_tokenizer as converter
    out = tmp_path_factory.mktemp("qwen2")
    converter.write_tokenizer_files(metadata.read_metadata(vocab), out)
    return Tokenizer(out)


def test_qwen2_vocabulary_streams_multibyte_text_and_stops(qwen2_tokenizer: Tokenizer) -> None:
    text = "Fièvre 39 °C, 发烧 😷 → ОРВИ. Amoxicillin 500 mg три раза в день."
    ids = qwen2_tokenizer.encode(text)
    assert any(qwen2_tokenizer.decode([t]).endswith("\ufffd") for t in ids)  # 😷 is split
    chunks, stream = _stream(qwen2_tokenizer, ids)
    assert "".join(chunks) == stream.text == text
    assert not any("\ufffd" in c for c in chunks)
    chunks, stream = _stream(qwen2_tokenizer, ids, stop=["😷 →"])
    assert "".join(chunks) == stream.text == "Fièvre 39 °C, 发烧 "
