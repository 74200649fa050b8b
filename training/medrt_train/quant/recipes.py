"""Recipes: which weight type each module of a model gets.

A recipe is an ordered list of rules (glob on the module name -> weight type); the first
match wins. Linear layers no rule matches get `default`; embeddings and the LM head get their
own settings; norms and biases are never quantized and keep `float_dtype`.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from pathlib import Path

from medrt_train.quant.calibrated import METHODS
from medrt_train.quant.types import QuantFormatError, WeightType, parse_type

F16 = WeightType("f16")
F32 = WeightType("f32")


@dataclass(frozen=True)
class Rule:
    pattern: str
    wtype: WeightType


@dataclass(frozen=True)
class Recipe:
    """Module-name rules mapped to weight types, plus the method it is meant for."""

    name: str
    rules: tuple[Rule, ...] = ()
    default: WeightType = F16
    embeddings: WeightType = F16
    lm_head: WeightType = F16
    float_dtype: WeightType = F32
    method: str = "rtn"

    def type_for(self, module: str, kind: str) -> WeightType:
        """Weight type of `module`; kind is `linear`, `embedding`, `lm_head` or `other`."""
        if kind == "other":
            return self.float_dtype
        for rule in self.rules:
            if fnmatch.fnmatchcase(module, rule.pattern):
                return rule.wtype
        return {"linear": self.default, "embedding": self.embeddings,
                "lm_head": self.lm_head}[kind]

    def with_overrides(self, embeddings: str | None = None, lm_head: str | None = None
                       ) -> Recipe:
        """Copy with the embeddings or LM head type replaced (CLI overrides)."""
        out = self
        if embeddings:
            out = replace(out, embeddings=parse_type(embeddings))
        if lm_head:
            out = replace(out, lm_head=parse_type(lm_head))
        return out


def _rules(pairs: list[tuple[str, str]]) -> tuple[Rule, ...]:
    return tuple(Rule(p, parse_type(t)) for p, t in pairs)


BUILTIN = {
    # The seed paper: attention stays at 8 bits, the MLP goes to NF4.
    "paper": Recipe("paper", _rules([("*.self_attn.*", "int8"), ("*.mlp.*", "nf4")]),
                    default=parse_type("int8"), method="rtn"),
    "int4": Recipe("int4", default=parse_type("int4-g64"), method="gptq"),
    "int8": Recipe("int8", default=parse_type("int8"), method="rtn"),
}


def recipe_from_dict(data: dict, where: str = "recipe") -> Recipe:
    """Build a recipe from the YAML structure documented in docs/quantization.md."""
    known = {"name", "rules", "default", "embeddings", "lm_head", "float_dtype", "method"}
    unknown = set(data) - known
    if unknown:
        raise QuantFormatError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(known)}")
    rules = []
    for i, item in enumerate(data.get("rules") or []):
        if not isinstance(item, dict) or "match" not in item or "type" not in item:
            raise QuantFormatError(f"{where}: rule {i} needs 'match' and 'type'")
        try:
            rules.append(Rule(str(item["match"]),
                              parse_type(str(item["type"]), item.get("group_size"))))
        except QuantFormatError as exc:
            raise QuantFormatError(f"{where}: rule {i} ({item['match']}): {exc}") from None
    method = str(data.get("method", "rtn"))
    if method not in METHODS:
        raise QuantFormatError(f"{where}: method {method!r} is not one of {', '.join(METHODS)}")
    float_dtype = parse_type(str(data.get("float_dtype", "f32")))
    if float_dtype.quantized:
        raise QuantFormatError(f"{where}: float_dtype must be f32, f16 or bf16")
    return Recipe(
        name=str(data.get("name", where)),
        rules=tuple(rules),
        default=parse_type(str(data.get("default", "f16"))),
        embeddings=parse_type(str(data.get("embeddings", "f16"))),
        lm_head=parse_type(str(data.get("lm_head", "f16"))),
        float_dtype=float_dtype,
        method=method,
    )


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name (paper, int4, int8) or a user recipe from a YAML file."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise QuantFormatError(
            f"recipe {name_or_path!r} is neither a built-in ({', '.join(BUILTIN)}) nor a file")
    import yaml

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise QuantFormatError(f"{path}: a recipe is a YAML mapping")
    return recipe_from_dict(data, where=str(path))
