"""tokenizer.json + tokenizer_config.json from arbitrary bytes -> medrt.Tokenizer: a working
tokenizer or InvalidCheckpoint/InvalidRequest, never another exception."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from medrt.errors import InvalidCheckpoint, InvalidRequest
    from medrt.tokenizer import Tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fuzz.common import run

SPLIT = b"\n\x00--tokenizer.json--\x00\n"
WORK = Path(tempfile.mkdtemp(prefix="medrt_fuzz_tok_"))


def seed(corpus: Path) -> None:
    from helpers.tiny_models import build_tiny_tokenizer

    d = build_tiny_tokenizer(WORK / "seed")
    cfg, tok = (d / "tokenizer_config.json").read_bytes(), (d / "tokenizer.json").read_bytes()
    (corpus / "tiny-chatml").write_bytes(cfg + SPLIT + tok)
    smol = Path("/work/medrt-home/eval-smollm2-f32/tokenizer_config.json")
    if smol.is_file():
        (corpus / "smollm2-config").write_bytes(smol.read_bytes() + SPLIT + tok)


def one_input(data: bytes) -> None:
    cfg, _, tok = data.partition(SPLIT)
    d = WORK / "case"
    d.mkdir(exist_ok=True)
    (d / "tokenizer_config.json").write_bytes(cfg)
    (d / "tokenizer.json").write_bytes(tok)
    try:
        t = Tokenizer(d)
    except InvalidCheckpoint:
        return
    ids = t.encode("Sepsis <|im_start|> 140/90 mmHg ü")
    t.decode(ids)
    try:
        t.encode_chat([{"role": "user", "content": "hi <|im_end|>"}])
    except InvalidRequest:
        pass


if __name__ == "__main__":
    run("tokenizer", seed, one_input)
