"""Listings of generated code: capstone's disassembly grouped under the eBPF instruction (or
the prologue, stub or runtime routine) each machine instruction came from."""

from __future__ import annotations

from jitbpf.isa import Program
from jitbpf.jit.target import CompiledCode


def _describe(program: Program, pc: int) -> str:
    insn = program.slots[pc]
    if insn is None:
        return f"{pc:5d}: ?"
    try:
        from jitbpf.disasm import format_instruction
    except ImportError:  # the disassembler is optional for listings
        return f"{pc:5d}: {insn!r}"
    return f"{pc:5d}: {format_instruction(insn, pc)}"


def listing(compiled: CompiledCode, program: Program, arch: tuple[int, int]) -> str:
    """The text of the listing (no trailing newline)."""
    import capstone

    headers: list[tuple[int, int, str]] = []  # (offset, order, text): marks sort before pcs
    for offset, pc in compiled.pcs:
        headers.append((offset, 1, _describe(program, pc)))
    for offset, text, pc in compiled.marks:
        headers.append((offset, 0, f"; {text}" + (f" (pc {pc})" if pc >= 0 else "")))
    headers.sort()
    disassembler = capstone.Cs(*arch)
    code = compiled.code
    lines: list[str] = []
    h = 0
    for address, size, mnemonic, operands in disassembler.disasm_lite(code, 0):
        while h < len(headers) and headers[h][0] <= address:
            lines.append(headers[h][2])
            h += 1
        raw = code[address : address + size].hex(" ")
        lines.append(f"    {address:06x}  {raw:<30} {mnemonic} {operands}".rstrip())
    lines.extend(text for _off, _order, text in headers[h:])
    return "\n".join(lines)
