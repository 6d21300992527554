"""The jitbpf error hierarchy: every failure the package reports is a ``BpfError``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only names: this module's classes are the package's errors
    from collections.abc import Iterable

    from jitbpf.memory import Span


class BpfError(Exception):
    """Base class of every error raised by jitbpf.

    ``pc`` is the instruction index (in 8-byte slots) the error is about, when there is one.
    """

    def __init__(self, message: str, *, pc: int | None = None) -> None:
        self.message = message
        self.pc = pc
        super().__init__(f"{message} at PC {pc}" if pc is not None else message)


class DecodeError(BpfError):
    """Malformed bytecode: bad length, unknown opcode, non-zero unused field, bad register."""


class AssemblerError(BpfError):
    """Assembly text that cannot be assembled; carries the line and column (1-based)."""

    def __init__(self, message: str, *, line: int, column: int = 1, text: str = "") -> None:
        self.line = line
        self.column = column
        self.text = text
        BpfError.__init__(self, message)
        Exception.__init__(self, f"line {line}, column {column}: {message}")


class VerifierError(BpfError):
    """A program rejected before it runs (structure, control flow or data flow).

    ``insn`` is the offending instruction disassembled; ``log`` the verifier's state trace
    that led there, when requested.
    """

    def __init__(self, message: str, *, pc: int | None = None, insn: str = "", log: str = "") -> None:
        self.insn = insn
        self.log = log
        super().__init__(message, pc=pc)
        if insn:
            Exception.__init__(self, f"{self.args[0]}: {insn}")


class ExecutionError(BpfError):
    """A failure while a program runs: bad memory access, budget exhausted, helper failure."""

    def __init__(self, message: str, *, pc: int | None = None, address: int | None = None) -> None:
        self.address = address
        super().__init__(message, pc=pc)


class AccessError(ExecutionError):
    """A load or store outside every region of the run, or a store into read-only memory.

    ``kind`` is "load", "store" or "atomic", ``size`` the access width, ``where`` where the
    address lies relative to the run's regions, ``operand`` the base register and offset of the
    instruction ("r1+4", "fp-8") when known.
    """

    def __init__(self, kind: str, size: int, address: int, where: str, *, pc: int | None = None,
                 operand: str = "") -> None:
        self.kind, self.size, self.where, self.operand = kind, size, where, operand
        lead = f"{operand}: " if operand else ""
        super().__init__(f"{lead}{size}-byte {kind} {where} (address {address:#x})", pc=pc, address=address)

    def at(self, pc: int, operand: str) -> AccessError:
        """The same failure, located at the instruction ``pc`` whose base operand is ``operand``."""
        assert self.address is not None
        return AccessError(self.kind, self.size, self.address, self.where, pc=pc, operand=operand)


NEAR_REGION = 1 << 16  # an address this close to a region is described relative to it


def operand_text(reg: int, off: int) -> str:
    """An instruction's memory operand as the errors show it: "r1+4", "r2", "fp-520" (r10)."""
    name = "fp" if reg == 10 else f"r{reg}"
    return f"{name}{off:+d}" if off else name


def _label(span: Span) -> str:
    return "input" if span.name == "mem" else span.name


def out_of_bounds(kind: str, size: int, address: int, regions: Iterable[Span], *, pc: int | None = None,
                  operand: str = "", read_only: bool = False) -> AccessError:
    """The error of an access of ``size`` bytes at ``address`` that no region of the run (or no
    writable one, with ``read_only``) holds, described relative to the nearest region: both
    engines and the Python helpers raise it, so a failure reads the same whichever ran."""
    end = address + size
    best: tuple[int, Span] | None = None
    for r in regions:
        if not r.size:
            continue
        r_end = r.base + r.size
        if read_only and r.base <= address and end <= r_end:
            where = f"into the read-only {r.size}-byte {_label(r)} at offset {address - r.base}"
            return AccessError(kind, size, address, where, pc=pc, operand=operand)
        gap = r.base - address if address < r.base else max(end - r_end, 0)
        if best is None or gap < best[0]:
            best = (gap, r)
    if best is None or best[0] > NEAR_REGION:
        where = "at an address in no region of the run"
    else:
        r = best[1]
        if address < r.base:
            where = (f"{r.base - address} bytes below the stack" if r.name == "stack"
                     else f"{r.base - address} bytes before the {r.size}-byte {_label(r)}")
        else:
            where = f"{end - (r.base + r.size)} bytes past the end of the {r.size}-byte {_label(r)}"
    return AccessError(kind, size, address, where, pc=pc, operand=operand)


class BudgetExceeded(ExecutionError):
    """The program executed more instructions than its budget allows."""


def budget_exhausted(pc: int) -> BudgetExceeded:
    """The run executed its whole instruction budget; ``pc`` is the block it stopped at."""
    return BudgetExceeded("instruction budget exhausted", pc=pc)


def not_an_async_callback(value: int) -> ExecutionError:
    """A timer was to run ``value`` as its callback, which is no function of the program."""
    return ExecutionError(f"{value:#x} is not the address of a function of the program to run as a timer's callback",
                          address=value)


def not_a_callback(value: int, pc: int) -> ExecutionError:
    """A helper that calls back (bpf_loop, ...) at ``pc`` got ``value`` in r2, which is not the
    address of one of the program's functions."""
    return ExecutionError(f"r2 ({value:#x}) is not the address of a function of the program to call back",
                          pc=pc, address=value)


def call_too_deep(pc: int) -> ExecutionError:
    """A bpf-to-bpf call at (the block of) ``pc`` would exceed the frames a run may have."""
    from jitbpf.contract import MAX_CALL_DEPTH

    return ExecutionError(f"call depth exceeds {MAX_CALL_DEPTH} frames", pc=pc)


class InternalError(BpfError):
    """A case that jitbpf's own tables rule out happened: a bug in jitbpf, not in the program.
    Raised rather than going on with a wrong translation or verdict; please report it with the
    program that caused it."""


class JitError(BpfError):
    """The JIT compiler cannot translate a program (or the platform does not support it)."""


class MapError(BpfError):
    """A map operation failed (missing key, full map, existing key, bad size).

    ``errno`` is the kernel's error number for the same failure (ENOENT, E2BIG, EEXIST, EINVAL).
    """

    def __init__(self, message: str, *, errno: int = 0) -> None:
        self.errno = errno
        super().__init__(message)


class ElfError(BpfError):
    """An ELF object that cannot be loaded; names the section or relocation at fault."""

    def __init__(self, message: str, *, section: str | None = None) -> None:
        self.section = section
        super().__init__(f"{message} (section {section})" if section else message)
