"""The jitbpf error hierarchy: every failure the package reports is a ``BpfError``."""

from __future__ import annotations


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


class BudgetExceeded(ExecutionError):
    """The program executed more instructions than its budget allows."""


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
