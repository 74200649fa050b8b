"""Fails when code outside the instruction-set kernels uses AVX (VEX) or AVX-512 (EVEX).

Only functions of the ISA namespaces (medrt::cpu::avx2, medrt::cpu::avx512,
medrt::cpu::quant::avx512vnni, ...) and what is named after them (their lambdas) may hold
VEX/EVEX instructions; they run only after
cpu_features found the ISA. Anything else runs on every x86-64 CPU, so a VEX instruction in it
(for example a standard-library template instantiated in an *_avx2.cpp file that the linker
picked for everyone) would crash older machines with SIGILL.

    python scripts/check_isa.py BINARY_OR_OBJECT...

For an *_avx2 / *_avx512 object file it checks the cause instead: the object may define no
global or weak symbol outside the ISA namespaces (cpp/src/kernels/isa_prelude.h says how to
keep standard-library templates out of it).
"""

from __future__ import annotations

import re
import subprocess
import sys

# medrt::cpu::avx2, medrt::cpu::avx512, medrt::cpu::quant::avx512vnni, ...
ISA_NAMESPACE = re.compile(r"::avx(2|512[a-z0-9]*)::")
# VEX/EVEX-only mnemonics start with "v"; AVX-512 mask-register ops with "k".
VEX = re.compile(r"^\s*[0-9a-f]+:\s+(v[a-z0-9]+|k(mov|and|or|xor|not|shift|unpck|add|test|ortest)"
                 r"[a-z]*)\b")
FUNC = re.compile(r"^([0-9a-f]+) <(.+)>:$")
ADDR = re.compile(r"^\s*([0-9a-f]+):")


def symbol_sizes(binary: str) -> dict[int, int]:
    """Start address -> size of every defined symbol (the dynamic ones of a stripped binary)."""
    sizes: dict[int, int] = {}
    for dynamic in ([], ["-D"]):
        out = subprocess.run(["nm", "-S", "--defined-only", *dynamic, binary],
                             capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4:
                sizes.setdefault(int(parts[0], 16), int(parts[1], 16))
        if sizes and not dynamic:
            break
    return sizes


def violations(binary: str) -> tuple[dict[str, str], int]:
    """Functions outside the ISA namespaces with a VEX/EVEX instruction, and the number of
    such instructions in code no symbol covers. objdump names code by the nearest symbol
    (as "<f+0x40>" or "<f-0xe0>" when none starts there, or under f's label past its end); in
    a stripped binary such code is often an internal function of an ISA file, so it is counted
    apart instead of charged to (or excused by) the symbol it is named after."""
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", binary],
                         capture_output=True, text=True, check=True).stdout
    sizes = symbol_sizes(binary)
    bad: dict[str, str] = {}
    unattributed = 0
    func, end = "", None
    for line in out.splitlines():
        m = FUNC.match(line)
        if m:
            start, func = int(m.group(1), 16), m.group(2)
            # A label no symbol starts at ("<f-0xe0>", "<f+0x40>") names unnamed code.
            end = start + sizes.get(start, 0) if sizes else None
            continue
        v = VEX.match(line)
        if not v:
            continue
        if end is not None and int(ADDR.match(line).group(1), 16) >= end:
            unattributed += 1
            continue
        if func in bad or ISA_NAMESPACE.search(func):
            continue
        bad[func] = line.strip()
    return bad, unattributed


def exported_outside_isa(obj: str) -> dict[str, str]:
    out = subprocess.run(["nm", "-C", "--defined-only", obj], capture_output=True, text=True,
                         check=True).stdout
    bad: dict[str, str] = {}
    for line in out.splitlines():
        parts = line.split(maxsplit=2)
        # Upper case: global (W, V: weak); u: unique global. Lower case is local: harmless.
        if (len(parts) == 3 and (parts[1].isupper() or parts[1] == "u")
                and not ISA_NAMESPACE.search(parts[2])):
            bad[parts[2]] = f"defines symbol type {parts[1]}"
    return bad


def main(binaries: list[str]) -> int:
    failed = False
    for b in binaries:
        isa_object = re.search(r"_avx(2|512[a-z0-9]*)\.cpp\.o$", b) is not None
        unattributed = 0
        if isa_object:
            bad = exported_outside_isa(b)
        else:
            bad, unattributed = violations(b)
        if unattributed:
            print(f"{b}: note: {unattributed} VEX/EVEX instruction(s) in code no symbol covers "
                  "(a stripped binary names only its exported functions): not checked; "
                  "check an unstripped build")
        for func, insn in sorted(bad.items()):
            print(f"{b}: {func}: {insn}")
        failed |= bool(bad)
        what = ("symbol(s) outside the ISA namespaces defined by an ISA object" if isa_object
                else "function(s) outside the ISA kernels use VEX/EVEX")
        print(f"{b}: {'FAIL' if bad else 'ok'}: {len(bad)} {what}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
