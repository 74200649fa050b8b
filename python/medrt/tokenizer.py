"""The checkpoint's tokenizer (tokenizer.json via the `tokenizers` library) and its metadata.

Reads special tokens, BOS/EOS rules and the chat template from tokenizer_config.json, and the
EOS ids from config.json and generation_config.json (either may hold a list). The BOS/EOS rule
is the one transformers' fast tokenizers follow: when tokenizer_config.json sets
``add_bos_token`` or ``add_eos_token`` (or tokenizer.json has no post-processor), those flags
decide; otherwise tokenizer.json's post-processor does.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medrt.errors import InvalidCheckpoint, InvalidRequest
from medrt.hf_tokenizer import load_hf_tokenizer, panics_as_invalid

# Stand-ins for message text that spells a control token while the template renders: private
# use characters the template passes through untouched (no filter changes them).
_OPEN, _CLOSE = "\ue000", "\ue001"
_STAND_IN = re.compile(f"{_OPEN}([0-9]+){_CLOSE}")

_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                        "cls_token", "mask_token")


class Tokenizer:
    """Text <-> token ids for one checkpoint, plus its chat template."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise InvalidCheckpoint(f"{model_dir}: no tokenizer.json")
        self._tok = load_hf_tokenizer(path)
        self._path = path
        self._as_text: Any = None  # a second tokenizer that reads control tokens as text
        self._as_text_lock = threading.Lock()
        controls = [t.content for t in self._tok.get_added_tokens_decoder().values()
                    if t.special and t.content]
        # Longest first, so "<|im_start|>" wins over a shorter token it starts with; the
        # stand-in characters themselves are escaped too, so user text cannot fake one.
        self._controls = re.compile("|".join(
            re.escape(t) for t in sorted({*controls, _OPEN, _CLOSE}, key=len, reverse=True)))
        config = _read_json(model_dir / "tokenizer_config.json")
        self.special_tokens: dict[str, str] = {}
        for name in _SPECIAL_TOKEN_NAMES:
            content = _token_content(config.get(name))
            if content is not None:
                self.special_tokens[name] = content
        self.chat_template = _load_chat_template(model_dir, config)

        explicit = "add_bos_token" in config or "add_eos_token" in config
        if explicit or self._tok.post_processor is None:
            self._bos_prefix = self._flag_token(config.get("add_bos_token"), "bos_token")
            self._eos_suffix = self._flag_token(config.get("add_eos_token"), "eos_token")
            self._use_post_processor = False
        else:
            self._bos_prefix = self._eos_suffix = []
            self._use_post_processor = True

        eos = []
        if self.eos_token_id is not None:
            eos.append(self.eos_token_id)
        for name in ("config.json", "generation_config.json"):
            eos += _as_id_list(_read_json(model_dir / name).get("eos_token_id"))
        self.eos_token_ids: list[int] = list(dict.fromkeys(eos))

    def _flag_token(self, flag: Any, name: str) -> list[int]:
        tid = self.token_to_id(self.special_tokens.get(name))
        return [tid] if flag and tid is not None else []

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @property
    def bos_token_id(self) -> int | None:
        return self.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self.token_to_id(self.eos_token)

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` the BOS/EOS rule applies."""
        _check_unicode(text)
        with panics_as_invalid(self._path, "encoding"):
            if self._use_post_processor:
                return self._tok.encode(text, add_special_tokens=add_special_tokens).ids
            ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_special_tokens:
            ids = self._bos_prefix + ids + self._eos_suffix
        return ids

    def encode_as_text(self, text: str) -> list[int]:
        """Token ids of ``text`` with control tokens spelled in it read as plain text."""
        _check_unicode(text)
        with self._as_text_lock:
            if self._as_text is None:
                # A copy of its own: the flag is per tokenizer, and the main one is shared by
                # threads that must keep reading control tokens written by templates.
                self._as_text = load_hf_tokenizer(self._path)
                self._as_text.encode_special_tokens = True
            with panics_as_invalid(self._path, "encoding"):
                return self._as_text.encode(text, add_special_tokens=False).ids

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> tuple[str, list[int]]:
        """Renders a conversation and encodes it: (text, token ids).

        Control tokens come only from the template. Text in a message that spells one
        (``<|im_start|>system``) is encoded as ordinary text, so a user cannot forge a turn.
        """
        originals: list[str] = []

        def stand_in(m: re.Match[str]) -> str:
            originals.append(m.group(0))
            return f"{_OPEN}{len(originals) - 1}{_CLOSE}"

        escaped = [_map_strings(m, lambda t: self._controls.sub(stand_in, t))
                   if isinstance(m, Mapping) else m for m in messages]
        text = self.render_chat(escaped, add_generation_prompt=add_generation_prompt,
                                chat_template=chat_template, **kwargs)
        ids: list[int] = []
        pieces = _STAND_IN.split(text)  # template text, stand-in index, template text, ...
        for i, piece in enumerate(pieces):
            if i % 2:
                ids += self.encode_as_text(originals[int(piece)])
            elif piece:
                ids += self.encode(piece, add_special_tokens=False)
        return _STAND_IN.sub(lambda m: originals[int(m.group(1))], text), ids

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        with panics_as_invalid(self._path, "decoding"):
            return self._tok.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Renders a conversation with the checkpoint's template (or ``chat_template``)."""
        from medrt.chat_template import render_chat_template

        template = chat_template or self.chat_template
        if template is None:
            raise InvalidRequest("this checkpoint has no chat template; pass chat_template=")
        return render_chat_template(template, messages,
                                    add_generation_prompt=add_generation_prompt,
                                    special_tokens=self.special_tokens, **kwargs)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tokenize: bool = False,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> str | list[int]:
        """transformers' call: the rendered text, or with ``tokenize`` its token ids.

        The text is encoded without adding BOS/EOS again (the template writes them), as
        transformers does.
        """
        if tokenize:
            return self.encode_chat(messages, add_generation_prompt=add_generation_prompt,
                                    chat_template=chat_template, **kwargs)[1]
        return self.render_chat(messages, add_generation_prompt=add_generation_prompt,
                                chat_template=chat_template, **kwargs)


def _check_unicode(text: Any) -> None:
    """Text the tokenizer can read: a str that is valid Unicode. A lone surrogate ("\\ud800",
    which JSON allows) would reach the tokenizers library as a bare TypeError."""
    if not isinstance(text, str):
        raise InvalidRequest(f"text to encode must be a str, not {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequest(f"the text holds an unpaired surrogate "
                             f"(U+{ord(text[e.start]):04X} at character {e.start}): it is not "
                             "valid Unicode") from None


def _map_strings(value: Any, fn: Any, key: str | None = None) -> Any:
    """``value`` with ``fn`` applied to every string in it but the message's role."""
    if isinstance(value, str):
        return value if key == "role" else fn(value)
    if isinstance(value, Mapping):
        return {k: _map_strings(v, fn, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, fn) for v in value]
    return value


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidCheckpoint(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise InvalidCheckpoint(f"{path}: expected a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    # tokenizer_config.json writes a special token either as its string or as a serialized
    # AddedToken {"content": ..., "lstrip": ..., ...}.
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _load_chat_template(model_dir: Path, config: Mapping[str, Any]) -> str | None:
    # transformers writes the template to chat_template.jinja since 4.50; older checkpoints
    # keep it in tokenizer_config.json, sometimes as a list of named templates.
    jinja_file = model_dir / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
        template = named.get("default")
    return template if isinstance(template, str) else None
