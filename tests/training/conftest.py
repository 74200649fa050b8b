"""Tiny models for the training tests: a teacher/student pair that shares a word-level
tokenizer (different widths and depths) and a Qwen2 student with a character tokenizer."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' + message['content'] + ' <|im_end|> ' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{%- endif %}"
)
SPECIALS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]

RESPONSES = [
    "Take 500 mg of paracetamol every 6 hours and avoid it in liver disease.",
    "Call the emergency number now and start chest compressions.",
    "An HbA1c above 48 mmol confirms diabetes; criteria also include fasting glucose.",
    "Wash your hands and get the flu vaccine every year.",
    "Ibuprofen is contraindicated with a stomach ulcer; take 200 mg with food.",
    "Rest, ice and compression help a sprained ankle heal.",
    "Warfarin interacts with aspirin and raises the bleeding risk.",
    "Metformin 500 mg twice a day is the usual starting dose.",
]


def _word_tokenizer(out: Path, texts: list[str], chat: bool):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  eos_token="<|im_end|>", bos_token="<|im_start|>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return tok


def _char_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)]
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[EOS]"] + chars)}
    core = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                      max_input_chars_per_word=1000))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                  eos_token="[EOS]")
    tok.save_pretrained(out)
    return tok


def _model(out: Path, arch: str, vocab: int, hidden: int, layers: int, seed: int, tok) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = LlamaConfig if arch == "llama" else Qwen2Config
    config = cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                 num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=512, tie_word_embeddings=False,
                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                 bos_token_id=tok.bos_token_id if tok.bos_token_id is not None
                 else tok.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """teacher (Llama 4x64), student (Llama 2x32, same tokenizer), other (Qwen2, char tokenizer),
    corpus (instruction JSONL of 8 records)."""
    from medrt.medical import classify, system_prompt
    from medrt_train.corpus import load
    from medrt_train.corpus_cli import DEFAULT_SEEDS

    root = tmp_path_factory.mktemp("train_tiny")
    seeds = load(DEFAULT_SEEDS, "jsonl")[::37][:8]
    texts = [r.question for r in seeds] + RESPONSES + [system_prompt(c) for c in
                                                       ("medication", "diagnosis", "treatment",
                                                        "prevention", "emergency", "general")]
    texts.append("question answer : <|im_start|> <|im_end|> user assistant system")
    tok = _word_tokenizer(root / "tok", texts, chat=True)
    vocab = len(tok) + 3  # padded embedding rows, as real checkpoints often have
    teacher = _model(root / "teacher", "llama", vocab, 64, 4, 0, tok)
    student = _model(root / "student", "llama", vocab, 32, 2, 1, tok)
    ctok = _char_tokenizer(root / "ctok")
    other = _model(root / "other", "qwen2", len(ctok), 32, 2, 2, ctok)
    corpus = root / "corpus.jsonl"
    with open(corpus, "w") as f:
        for i, (rec, resp) in enumerate(zip(seeds, RESPONSES)):
            cat = classify(rec.question)
            f.write(json.dumps({"id": str(i), "question": rec.question, "category": cat,
                                "system": system_prompt(cat), "response": resp}) + "\n")
    return {"teacher": teacher, "student": student, "other": other, "corpus": corpus,
            "root": root}
