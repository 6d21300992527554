"""A bpf_conformance plugin: run one program given as hex on stdin and print r0 in hex."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from jitbpf.errors import BpfError

# uBPF's program size limit; its error tests count on a 65537-slot program being rejected.
MAX_INSNS = 65536
# Options of uBPF's and the libbpf plugin that are followed by a value; the value must not be
# mistaken for the memory argument.
VALUE_OPTIONS = frozenset({"--profile", "--program", "--xdp_prolog", "--cpu_version", "--plugin_path"})
ELF_SECTIONS = (".text", "xdp")  # where the runner's ELF objects keep the program, in order of preference

USAGE = """\
usage: jitbpf conformance-plugin [MEM_HEX] [--jit | --interp] [--elf] [--program HEX] [OPTIONS...]

The plugin protocol of bpf_conformance_runner: the program is read from stdin as hex (8 bytes
per instruction, little-endian, any whitespace), the input memory is the first argument as hex
bytes ("01  02  03  "). The program runs unverified, with uBPF's test helpers 0-5 (gather_bytes,
memfrob, no_op, sqrti, strcmp_ext, unwind), and r0 is printed in lower-case hex without 0x.

  --jit            run the x86-64 JIT
  --interp         run the reference interpreter (the default; also --interpret)
  --elf            stdin holds an ELF object (program in section .text or xdp), hex-encoded
  --program HEX    take the program from this argument instead of stdin

Other options (e.g. --profile safe) are accepted and ignored.
On failure the exit status is 1: a program that cannot be loaded prints
"Failed to load code: MESSAGE" on stdout, a run-time failure prints "jitbpf error: MESSAGE" on stderr.

example (the runner starts "jitbpf MEM_HEX conformance-plugin --jit" for each test):
  bpf_conformance_runner --test_file_directory tests --plugin_path "$(command -v jitbpf)" \\
      --plugin_options "conformance-plugin --jit"
"""


class HexError(ValueError):
    """Text that is not a sequence of hex bytes."""


def parse_hex(text: str) -> bytes:
    """Bytes written as hex digits, with any whitespace between them (and optional ``0x`` prefixes)."""
    digits: list[str] = []
    for m in re.finditer(r"\S+", text):
        token, start = m.group(), m.start()
        if token[:2] in ("0x", "0X"):
            token, start = token[2:], start + 2
        for i, ch in enumerate(token):
            if ch not in "0123456789abcdefABCDEF":
                raise HexError(f"invalid hex digit {ch!r} at character {start + i + 1}")
        digits.append(token)
    joined = "".join(digits)
    if len(joined) % 2:
        raise HexError(f"odd number of hex digits ({len(joined)})")
    return bytes.fromhex(joined)


@dataclass
class RunnerOptions:
    """What the runner asked for."""

    mem: bytes | None = None  # input memory; None when the runner passed none
    jit: bool = False
    elf: bool = False
    program_hex: str | None = None  # --program HEX, else read stdin
    help: bool = False


def parse_args(argv: Sequence[str]) -> RunnerOptions:
    """Read the runner's arguments: MEM_HEX is the first free argument, unknown options are ignored."""
    opts = RunnerOptions()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            opts.help = True
        elif arg == "--jit":
            opts.jit = True
        elif arg in ("--interp", "--interpret"):
            opts.jit = False
        elif arg == "--elf":
            # The runner writes "--elf"; accept "--elf true"/"--elf false" too, as its own flag reads.
            opts.elf = True
            if i + 1 < len(argv) and argv[i + 1] in ("true", "false"):
                opts.elf = argv[i + 1] == "true"
                i += 1
        elif arg in VALUE_OPTIONS:
            if arg == "--program" and i + 1 < len(argv):
                opts.program_hex = argv[i + 1]
            i += 1
        elif arg.startswith("-") and arg.strip():
            pass  # another plugin's option: ignored, as the protocol allows
        elif opts.mem is None:
            try:
                opts.mem = parse_hex(arg)
            except HexError as exc:
                raise HexError(f"invalid memory argument: {exc}") from None
        i += 1
    return opts


def load_elf_program(data: bytes) -> Any:
    """The program of an ELF object as the runner builds it: section ``.text``, else ``xdp``,
    else the object's only program."""
    try:
        from jitbpf.linux.elf import load_elf
    except ImportError:
        raise BpfError("ELF objects are not supported in this installation (no jitbpf.linux.elf)") from None
    obj = load_elf(data)
    for section in ELF_SECTIONS:
        found = obj.sections().get(section)
        if found:
            return found[0]
    programs = list(obj.programs.values())
    if len(programs) == 1:
        return programs[0]
    names = ", ".join(f"{p.name} ({p.section})" for p in programs) or "none"
    raise BpfError(f"no program in section {' or '.join(ELF_SECTIONS)} (programs: {names})")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run the plugin; streams default to the process's own (tests pass StringIO)."""
    from jitbpf.helpers import conformance_helpers
    from jitbpf.vm import VM

    args = list(sys.argv[1:] if argv is None else argv)
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr

    try:
        opts = parse_args(args)
    except HexError as exc:
        stderr.write(f"jitbpf conformance-plugin: {exc}\n")
        return 2
    if opts.help:
        stdout.write(USAGE)
        return 0

    # Load: anything that goes wrong before the first instruction runs is "Failed to load code".
    try:
        text = stdin.read() if opts.program_hex is None else opts.program_hex
        try:
            data = parse_hex(text)
        except HexError as exc:
            raise BpfError(f"invalid program hex: {exc}") from None
        if opts.elf:
            # With the object's maps and its section's program type (XDP: r1 = an xdp_md).
            vm = load_elf_program(data).vm(verify=False, max_insns=MAX_INSNS)
        else:
            vm = VM(data, verify=False, max_insns=MAX_INSNS)
        for helper in conformance_helpers(lambda: vm.memory):
            vm.register_helper(helper)
        vm.check()
        if opts.jit:
            vm.jit_compile()
    except Exception as exc:  # BpfError, or anything else that broke: the runner wants one line
        message = exc.message if isinstance(exc, BpfError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, BpfError) and exc.pc is not None:
            message = f"{message} at PC {exc.pc}"
        stdout.write(f"Failed to load code: {_one_line(message)}\n")
        return 1

    mem = bytearray(opts.mem) if opts.mem else None
    state = getattr(vm, "program_state", None)  # a typed program: the memory is its packet
    try:
        if state is not None:
            packet = bytes(mem or b"") if state.info.packet else None
            result = vm.run_context(packet=packet, engine="jit" if opts.jit else "interp").retval
        else:
            result = vm.execute_jit(mem) if opts.jit else vm.execute(mem)
    except BpfError as exc:
        stderr.write(f"jitbpf error: {_one_line(str(exc))}\n")
        return 1
    except Exception as exc:  # the runner wants one line, whatever broke
        stderr.write(f"jitbpf error: internal error: {type(exc).__name__}: {_one_line(str(exc))}\n")
        return 1
    finally:
        vm.close()
    stdout.write(f"{result:x}\n")
    return 0


def run(argv: Sequence[str], stdin_text: str) -> tuple[int, str, str]:
    """Run the plugin in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, stdin=io.StringIO(stdin_text), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


if __name__ == "__main__":
    sys.exit(main())
