"""The ``jitbpf`` command: assemble, disassemble, verify, run and JIT-dump eBPF programs."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from jitbpf import plugin
from jitbpf.errors import AssemblerError, BpfError, VerifierError
from jitbpf.isa import SLOT_SIZE, Program

PROG = "jitbpf"
EXIT_OK = 0
EXIT_FAILED = 1  # the program ran and failed, or a check failed
EXIT_USAGE = 2  # bad input or bad usage
ELF_MAGIC = b"\x7fELF"
STDIN_NAME = "<stdin>"
_HEX_TEXT = re.compile(r"[0-9a-fA-F\s]*")

DESCRIPTION = """\
A user-space eBPF virtual machine: assemble, disassemble, verify, interpret or JIT-compile
eBPF programs.

Every command that takes a program FILE accepts raw bytecode (8-byte instructions,
little-endian), a hex dump of it (hex digits and white space only), assembly text (uBPF or LLVM
syntax, including pasted "llvm-objdump -d" listings and kernel verifier logs) or an ELF object
from clang -target bpf (choose the program with --section). The kind is detected from the
content; "-" reads standard input.

Exit status: 0 success, 1 the program failed at run time (or a check failed), 2 bad input or
usage (missing file, malformed bytecode, assembler or verifier error).
"""

EPILOG = """\
examples:
  jitbpf asm prog.s                      # writes prog.bin
  jitbpf disasm prog.bin --syntax llvm
  jitbpf verify prog.o --section xdp --log
  jitbpf run prog.s --mem "01 02 03 04" --jit
  jitbpf run prog.o --section xdp --pcap capture.pcap
  jitbpf jit-dump prog.s
  jitbpf bench --quick
  echo "b7 00 00 00 2a 00 00 00 95 00 00 00 00 00 00 00" | jitbpf conformance-plugin --jit

Run "jitbpf COMMAND --help" for the options of a command.
"""

HELPER_LIB_HELP = """\
load helpers from Python: MODULE:FUNC (or path/to/file.py:FUNC). FUNC is called with the VM
before the program runs; it either registers helpers itself (vm.register_helper(id, fn)) and
returns None, or returns a list of jitbpf.helpers.Helper to register. FUNC may also be a list of
Helper. The current directory is searched for MODULE. May be given several times."""


class CliError(Exception):
    """A failure reported on one line of stderr, with the exit status to use."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit status 2, like every other input error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# -- input -------------------------------------------------------------------------------------


@dataclass
class ProgramSource:
    """A program read from a FILE argument, and where it came from (for messages)."""

    where: str  # shown before error messages: the path, plus the section of an ELF object
    code: bytes  # bytecode
    kind: str  # "raw", "hex", "asm" or "elf"
    elf_object: Any = None  # the loaded ELF object (its maps are attached to the VM)
    elf_program: Any = None  # the ELF loader's program object


def one_line(text: str) -> str:
    return " ".join(text.split())


def describe(exc: BpfError) -> str:
    """An error without its location prefix, with the PC first as the messages put it."""
    message = exc.message
    if isinstance(exc, VerifierError) and exc.insn:
        message = f"{message}: {exc.insn}"
    if exc.pc is not None:
        message = f"at PC {exc.pc}: {message}"
    return one_line(message)


@contextmanager
def reporting(where: str, *, running: bool = False) -> Iterator[None]:
    """Turn jitbpf errors into one-line CliErrors located at ``where``.

    While ``running``, failures are the program's own (exit status 1); before that they are
    problems with the input (exit status 2).
    """
    try:
        yield
    except AssemblerError as exc:
        raise CliError(f"{where}:{exc.line}:{exc.column}: {one_line(exc.message)}") from exc
    except BpfError as exc:
        raise CliError(f"{where}: {describe(exc)}", EXIT_FAILED if running else EXIT_USAGE) from exc


def read_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from exc


def as_text(data: bytes) -> str | None:
    """The content as text, or None when it is binary (bytecode always holds NUL bytes)."""
    if b"\0" in data:
        return None
    # Not UTF-8 (a Latin-1 comment, say) is still text: the assembler points at what it cannot read.
    return data.decode("utf-8", errors="replace")


def parse_hex_arg(text: str, what: str) -> bytes:
    try:
        return plugin.parse_hex(text)
    except plugin.HexError as exc:
        raise CliError(f"{what}: {exc}") from exc


def load_elf_object(path: str, data: bytes) -> Any:
    """The ElfObject of an ELF file, with at least one program."""
    try:
        from jitbpf.linux.elf import load_elf
    except ImportError as exc:
        raise CliError(f"{path}: ELF objects are not supported in this installation ({exc})") from exc
    with reporting(path):
        obj = load_elf(data, name=Path(path).name)
    if not obj.programs:
        raise CliError(f"{path}: no programs in this ELF object")
    return obj


def elf_source(path: str, obj: Any, program: Any) -> ProgramSource:
    return ProgramSource(f"{path} ({program.section}: {program.name})", bytes(program.code), "elf", obj, program)


def load_elf_source(path: str, data: bytes, section: str | None) -> ProgramSource:
    obj = load_elf_object(path, data)
    programs = list(obj.programs.values())
    listing = ", ".join(f"{p.name} (section {p.section})" for p in programs)
    if section is None:
        if len(programs) > 1:
            raise CliError(f"{path}: {len(programs)} programs; choose one with --section: {listing}")
        program = programs[0]
    else:
        if not any(section in (p.name, p.section) for p in programs):
            raise CliError(f"{path}: no program or section named '{section}' (programs: {listing})")
        with reporting(path):
            program = obj.program(section)  # by name, or the only program of a section
    return elf_source(path, obj, program)


_HEX_TOKEN = re.compile(r"(?:0[xX])?[0-9a-fA-F]+")


def hex_mistake(text: str) -> str | None:
    """Where text that is nearly all hex bytes (a hex dump with a typo) goes wrong: "LINE:COL: what".

    Such text is no assembly, and the assembler's complaint about it would mislead.
    """
    tokens = [(lineno, m.start() + 1, m.group()) for lineno, line in enumerate(text.split("\n"), 1)
              for m in re.finditer(r"\S+", re.split(r"[;#]", line, maxsplit=1)[0])]
    bad = [t for t in tokens if not _HEX_TOKEN.fullmatch(t[2])]
    if len(tokens) < SLOT_SIZE or not bad or bad[0] is tokens[0] or len(bad) > max(1, len(tokens) // 10):
        return None
    lineno, col, token = bad[0]
    skip = 2 if token[:2] in ("0x", "0X") else 0
    index = next(i for i, ch in enumerate(token) if i >= skip and ch not in "0123456789abcdefABCDEF")
    return f"{lineno}:{col + index}: hex bytecode: invalid hex digit {token[index]!r} in '{token}'"


def load_source(path: str, section: str | None = None, *, data: bytes | None = None) -> ProgramSource:
    """Read a program FILE (unless its ``data`` was read already), whichever of the accepted forms it is in."""
    if data is None:
        data = read_bytes(path)
    if path == "-":
        path = STDIN_NAME  # how messages name it
    if data.startswith(ELF_MAGIC):
        return load_elf_source(path, data, section)
    if section is not None:
        raise CliError(f"{path}: --section applies to ELF objects only, and this is not one")
    text = as_text(data)
    if text is not None and _HEX_TEXT.fullmatch(text):
        code = parse_hex_arg(text, f"{path}: hex bytecode")
        kind = "hex"
    elif text is not None:
        from jitbpf.asm import assemble

        try:
            with reporting(path):
                code = assemble(text)
        except CliError as exc:
            mistake = hex_mistake(text)
            if mistake is None:
                raise
            raise CliError(f"{path}:{mistake}") from exc
        kind = "asm"
    else:
        code, kind = data, "raw"
    if not code:
        raise CliError(f"{path}: no instructions")
    if len(code) % SLOT_SIZE:
        raise CliError(f"{path}: bytecode length {len(code)} is not a multiple of {SLOT_SIZE}"
                       " (and the file is neither an ELF object nor assembly text)")
    return ProgramSource(path, code, kind)


# -- helpers and VMs ---------------------------------------------------------------------------


def _import_helper_lib(spec: str) -> Any:
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"--helper-lib {spec}: expected MODULE:FUNC")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            file = Path(module_name)
            mod_spec = importlib.util.spec_from_file_location(file.stem, file)
            if mod_spec is None or mod_spec.loader is None or not file.is_file():
                raise CliError(f"--helper-lib {spec}: no such file: {module_name}")
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            # A console script's sys.path starts at its own directory, not the user's: helper
            # modules are looked up where the command runs, as "python -m" would.
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except CliError:
        raise
    except Exception as exc:  # the user's module may fail in any way while it is imported
        raise CliError(f"--helper-lib {spec}: cannot import {module_name}: {type(exc).__name__}: "
                       f"{one_line(str(exc))}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise CliError(f"--helper-lib {spec}: module {module_name} has no attribute '{attr}'") from exc


def apply_helper_lib(vm: Any, spec: str) -> None:
    """Register the helpers of one --helper-lib MODULE:FUNC on ``vm``."""
    from jitbpf.helpers import Helper

    target = _import_helper_lib(spec)
    try:
        helpers = target(vm) if callable(target) else target
    except Exception as exc:  # user code
        raise CliError(f"--helper-lib {spec}: {type(exc).__name__}: {one_line(str(exc))}") from exc
    if helpers is None:
        return
    try:
        items = list(helpers)
    except TypeError as exc:
        raise CliError(f"--helper-lib {spec}: expected None or a list of Helper, got {type(helpers).__name__}") from exc
    for item in items:
        if not isinstance(item, Helper):
            raise CliError(f"--helper-lib {spec}: expected Helper objects, got {type(item).__name__}")
        vm.register_helper(item)


def make_vm(source: ProgramSource, args: argparse.Namespace, *, verify: bool) -> Any:
    """A VM for ``source`` with the program type and helpers the command line asks for.

    An ELF program gets its object's maps, the program type of its section and the standard
    helpers, as ``ElfProgram.vm()`` gives them.
    """
    from jitbpf.contract import DEFAULT_BUDGET
    from jitbpf.helpers import conformance_helpers
    from jitbpf.vm import VM

    # An ELF program may loop (bounded), as the kernel lets C programs; assembly needs --allow-loops.
    kwargs: dict[str, Any] = {"verify": verify, "budget": getattr(args, "budget", None) or DEFAULT_BUDGET,
                              "allow_loops": getattr(args, "allow_loops", False) or source.elf_program is not None}
    prog_type = getattr(args, "prog_type", None)
    if prog_type is not None:
        kwargs["prog_type"] = prog_type
    with reporting(source.where):
        vm = source.elf_program.vm(**kwargs) if source.elf_program is not None else VM(source.code, **kwargs)
        if getattr(args, "std_helpers", False):
            vm.use_standard_helpers()
        if getattr(args, "conformance_helpers", False):
            for helper in conformance_helpers(lambda: vm.memory):
                vm.register_helper(helper)
        for spec in getattr(args, "helper_lib", None) or ():
            apply_helper_lib(vm, spec)
    return vm


def _prog_type(text: str) -> str:
    try:
        from jitbpf.linux.programs import program_type
    except ImportError:
        raise argparse.ArgumentTypeError("program types are not supported in this installation") from None
    try:
        program_type(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# -- commands ----------------------------------------------------------------------------------


def cmd_asm(args: argparse.Namespace, out: TextIO) -> int:
    from jitbpf.asm import assemble

    data = read_bytes(args.file)
    name = STDIN_NAME if args.file == "-" else args.file
    text = as_text(data)
    if text is None:
        raise CliError(f"{name}: not a text file (assembly source is expected)")
    with reporting(name):
        code = assemble(text)
    if args.hex:
        rendered = "".join(code[i : i + SLOT_SIZE].hex(" ") + "\n" for i in range(0, len(code), SLOT_SIZE))
        if args.output in (None, "-"):
            out.write(rendered)
        else:
            _write_file(args.output, rendered.encode())
        return EXIT_OK
    if args.output == "-" or (args.output is None and args.file == "-"):
        out.flush()
        sys.stdout.buffer.write(code)
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = args.output or str(Path(args.file).with_suffix(".bin"))
    if Path(target).resolve() == Path(args.file).resolve():
        raise CliError(f"{args.file}: the output would overwrite the input; name it with -o")
    _write_file(target, code)
    return EXIT_OK


def _write_file(path: str, data: bytes) -> None:
    try:
        Path(path).write_bytes(data)
    except OSError as exc:
        raise CliError(f"{path}: {exc.strerror or exc}") from exc


def _disasm_rows(code: bytes, syntax: str) -> list[dict[str, Any]]:
    from jitbpf.disasm import format_instruction

    rows = []
    for pc, insn, _info in Program.from_bytes(code):
        row: dict[str, Any] = {"pc": pc, "opcode": insn.opcode, "dst": insn.dst, "src": insn.src, "off": insn.off,
                               "imm": insn.imm}
        if insn.width == 2:
            row["imm64"] = insn.imm64
        row["hex"] = insn.encode().hex()
        row["text"] = format_instruction(insn, pc, syntax=syntax)
        rows.append(row)
    return rows


def cmd_disasm(args: argparse.Namespace, out: TextIO) -> int:
    from jitbpf.disasm import disassemble

    data = read_bytes(args.file)
    if data.startswith(ELF_MAGIC) and args.section is None:
        # The whole object, as llvm-objdump -d shows it: every program under a `<name>:` header.
        path = STDIN_NAME if args.file == "-" else args.file
        obj = load_elf_object(path, data)
        sources = [elf_source(path, obj, program) for program in obj.programs.values()]
    else:
        sources = [load_source(args.file, args.section, data=data)]
    texts: list[str] = []
    programs: list[dict[str, Any]] = []
    for source in sources:
        prog = source.elf_program
        with reporting(source.where):
            if args.json:
                entry = {"name": prog.name, "section": prog.section} if prog is not None else {}
                programs.append(entry | {"instructions": _disasm_rows(source.code, args.syntax)})
                continue
            text = disassemble(source.code, syntax=args.syntax, show_pc=not args.no_pc)
        if len(sources) > 1:
            text = f"; section {prog.section}\n<{prog.name}>:\n{text}"
        texts.append(text)
    if args.json:
        report: dict[str, Any] = {"file": args.file, "kind": sources[0].kind}
        _dump_json(report | (programs[0] if len(programs) == 1 else {"programs": programs}), out)
    else:
        out.write("\n\n".join(texts) + "\n")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    from jitbpf.verifier import verify

    source = load_source(args.file, args.section)
    vm = make_vm(source, args, verify=False)
    try:
        with reporting(source.where):
            vm.check()  # helper ids, map references and the program type's rules
            context_spec = getattr(vm, "context_spec", None)
            # The log is always kept: a rejection shows the path that led there, as the kernel's does.
            result = verify(vm.program, helpers=vm.helpers, allow_loops=args.allow_loops, log=True,
                            budget=vm.budget, maps=vm.maps,
                            context=context_spec() if context_spec is not None else None)
    except CliError as exc:
        cause = exc.__cause__
        if args.json:
            report: dict[str, Any] = {"ok": False, "file": args.file, "error": exc.message}
            if isinstance(cause, BpfError):
                report["message"] = cause.message
                report["pc"] = cause.pc
            if isinstance(cause, VerifierError):
                report["insn"] = cause.insn
                report["log"] = cause.log
            _dump_json(report, out)
        elif isinstance(cause, VerifierError) and cause.log:
            out.write(cause.log.rstrip("\n") + "\n")
        raise
    finally:
        vm.close()
    count = len(vm.program.insns)
    log = str(getattr(result, "log", "") or "")
    if args.json:
        report = {"ok": True, "file": args.file, "instructions": count}
        if args.log:
            report["log"] = log
        _dump_json(report, out)
    else:
        if args.log and log:
            out.write(log.rstrip("\n") + "\n")
        out.write(f"OK: {count} instructions verified\n")
    return EXIT_OK


def _dump_json(data: Any, out: TextIO) -> None:
    json.dump(data, out, indent=2)
    out.write("\n")


def _map_number(text: str, what: str) -> int | bytes:
    if text.startswith("hex:"):
        return parse_hex_arg(text[4:], what)
    try:
        return int(text, 0)
    except ValueError:
        raise CliError(f"{what}: expected an integer (42, 0x2a) or hex:BYTES, got {text!r}") from None


def set_map_entries(source: ProgramSource, vm: Any, entries: Sequence[Sequence[str]]) -> None:
    """--map-set MAP KEY VALUE: store entries before the program runs."""
    maps: dict[str, Any] = dict(source.elf_object.maps) if source.elf_object is not None else {
        str(getattr(m, "name", "")): m for m in vm.maps.values()}
    for name, key_text, value_text in entries:
        what = f"--map-set {name} {key_text} {value_text}"
        if name not in maps:
            raise CliError(f"{what}: {source.where} has no map named '{name}' (maps: {', '.join(maps) or 'none'})")
        key, value = _map_number(key_text, what), _map_number(value_text, what)
        try:
            maps[name][key] = value
        except (BpfError, TypeError, ValueError, OverflowError) as exc:
            message = exc.message if isinstance(exc, BpfError) else str(exc)
            raise CliError(f"{what}: {one_line(message)}") from exc


def _verdict(vm: Any, r0: int) -> str | None:
    try:
        from jitbpf.pcap import verdict_name
    except ImportError:  # dpkt missing: the number alone
        return None
    return verdict_name(getattr(vm, "prog_type", None), r0)


def run_capture(source: ProgramSource, vm: Any, args: argparse.Namespace, out: TextIO) -> int:
    """``run --pcap``: every packet of a capture through a packet program; verdict counts and maps."""
    from jitbpf.pcap import PcapError, run_pcap

    engine = "jit" if args.jit else "interp"
    if getattr(vm, "prog_type", None) is None:
        raise CliError(f"{source.where}: --pcap needs a packet program: an ELF program of a packet section "
                       "(xdp, tc, socket, ...) or --prog-type xdp|socket_filter|tc|cgroup_skb|sk_skb|sk_msg")
    with reporting(source.where):
        vm.check()
        if args.jit:
            vm.jit_compile()
    name = source.elf_program.name if source.elf_program is not None else Path(source.where).name
    try:
        summary = run_pcap(vm, args.pcap, engine=engine, progress=not args.no_progress, limit=args.limit,
                           stream=sys.stderr, name=name, threads=args.threads or 1)
    except PcapError as exc:
        raise CliError(one_line(exc.message)) from exc
    except BpfError as exc:
        raise CliError(f"{source.where}: {describe(exc)}") from exc
    output = run_output(vm)
    typed = object_contents(source)  # the same maps, decoded through the object's BTF
    for name, entries in typed.get("maps", {}).items():
        if name in summary.maps:
            summary.maps[name] = [(k, v) for k, v in entries]
    if args.json:
        report = summary.to_json()
        for name, entries in typed.get("maps", {}).items():
            if name in report["maps"]:
                report["maps"][name]["entries"] = entries
        globals_ = {"globals": typed["globals"]} if "globals" in typed else {}
        _dump_json(report | (output.to_json() if output else {}) | globals_, out)
    else:
        out.write(summary.report() + "\n")
        out.writelines(line + "\n" for line in output.lines())
        out.writelines(line + "\n" for line in contents_lines({"globals": typed.get("globals", {})}))
    if summary.errors:
        out.flush()
        raise CliError(f"{source.where}: {summary.errors} of {summary.packets} packets failed at run time (first: "
                       f"{one_line(summary.first_error)})", EXIT_FAILED)
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    if args.mem is not None:
        mem = parse_hex_arg(args.mem, "--mem")
    elif args.mem_file is not None:
        mem = read_bytes(args.mem_file)
    else:
        mem = b""
    if args.pcap is None and (args.limit is not None or args.no_progress or args.threads is not None):
        raise CliError("--limit, --no-progress and --threads apply to --pcap runs only")
    source = load_source(args.file, args.section)
    vm = make_vm(source, args, verify=not args.no_verify)
    engine = "jit" if args.jit else "interp"
    state = getattr(vm, "program_state", None)  # set for a program type (XDP, socket filter, ...)
    try:
        set_map_entries(source, vm, args.map_set)
        if args.pcap is not None:
            return run_capture(source, vm, args, out)
        with reporting(source.where):
            vm.check()
            if args.jit:
                vm.jit_compile()
            if state is not None and mem and not state.info.packet:
                raise CliError(f"{source.where}: {state.info.name} programs take no packet (--mem/--mem-file)")
        with reporting(source.where, running=True):
            if state is not None:
                # A typed program gets its context in r1, and the input memory as its packet.
                result = vm.run_context(packet=mem if state.info.packet else None, engine=engine)
                r0, after = result.retval, bytes(result.packet) if result.packet is not None else mem
            else:
                buf = bytearray(mem)
                r0 = vm.execute_jit(buf) if args.jit else vm.execute(buf)
                after = bytes(buf)
        verdict = _verdict(vm, r0) if state is not None else None
        output = run_output(vm)
        found = object_contents(source)
    finally:
        vm.close()
    changed = after != mem
    signed = r0 - (1 << 64) if r0 >> 63 else r0
    if args.json:
        report: dict[str, Any] = {"r0": r0, "r0_hex": f"{r0:#x}", "r0_signed": signed, "engine": engine}
        if state is not None:
            report["prog_type"] = state.info.name
        if verdict is not None:
            report["verdict"] = verdict
        if changed:
            report["mem"] = after.hex()
        _dump_json(report | (output.to_json() if output else {}) | found, out)
        return EXIT_OK
    extra = f", signed {signed}" if signed < 0 else ""
    out.write(f"r0 = {r0:#x} ({r0}{extra}){' ' + verdict if verdict else ''}\n")
    if changed:
        out.write(f"{'packet' if state is not None else 'mem'} = {after.hex(' ')}\n")
    out.writelines(line + "\n" for line in output.lines())
    out.writelines(line + "\n" for line in contents_lines(found))
    return EXIT_OK


def object_contents(source: ProgramSource) -> dict[str, Any]:
    """An ELF program's maps and globals, decoded through the object's BTF (nothing for other inputs)."""
    if source.elf_object is None:
        return {}
    from jitbpf.linux.btfvalues import contents

    return contents(source.elf_object)


def contents_lines(found: dict[str, Any]) -> list[str]:
    if not found:
        return []
    from jitbpf.linux.btfvalues import contents_lines as lines

    return lines(found)


def run_output(vm: Any) -> Any:
    """The trace lines and event records the runs of ``vm`` left (see ``jitbpf.output``)."""
    from jitbpf.output import collect

    return collect(vm)


def cmd_jit_dump(args: argparse.Namespace, out: TextIO) -> int:
    source = load_source(args.file, args.section)
    vm = make_vm(source, args, verify=not args.no_verify)
    try:
        with reporting(source.where):
            text = vm.jit_dump()
    finally:
        vm.close()
    if args.json:
        _dump_json({"file": args.file, "blocks": jit_blocks(text)}, out)
    else:
        out.write(text.rstrip("\n") + "\n")
    return EXIT_OK


_X86_LINE = re.compile(r"\s+(?P<offset>[0-9a-f]+)  (?P<bytes>[0-9a-f]{2}(?=\s)(?: [0-9a-f]{2}(?=\s))*)\s+(?P<asm>.*)")
_EBPF_LINE = re.compile(r"\s*(?P<pc>[0-9]+): (?P<insn>.*)")


def jit_blocks(listing: str) -> list[dict[str, Any]]:
    """The JIT listing as data: blocks headed by an eBPF instruction (pc, insn) or a routine's
    label (mark), each with its x86-64 instructions (offset, bytes, asm)."""
    blocks: list[dict[str, Any]] = []
    for line in listing.splitlines():
        if (m := _X86_LINE.fullmatch(line)) is not None:
            if not blocks:
                blocks.append({"mark": "", "x86": []})
            blocks[-1]["x86"].append({"offset": int(m["offset"], 16), "bytes": m["bytes"].replace(" ", ""),
                                      "asm": m["asm"].strip()})
        elif (m := _EBPF_LINE.fullmatch(line)) is not None:
            blocks.append({"pc": int(m["pc"]), "insn": m["insn"], "x86": []})
        elif line.strip():
            blocks.append({"mark": line.strip().removeprefix("; "), "x86": []})
    return blocks


def _checkout_root() -> Path:
    return Path(__file__).resolve().parent.parent


def cmd_bench(args: argparse.Namespace, out: TextIO) -> int:
    rest = list(args.args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    root = _checkout_root()
    # The suite lives beside the package in a checkout, outside what gets installed; prefer it
    # to any other "benchmarks" module on the path.
    if (root / "benchmarks" / "__main__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("benchmarks.__main__")
    except ImportError as exc:
        raise CliError(f"bench: the benchmark suite is not available ({exc}); it ships with a source checkout") from exc
    bench_main = getattr(module, "main", None)
    if not callable(bench_main):
        raise CliError("bench: benchmarks.__main__ has no main(argv) function")
    out.flush()
    status = bench_main(rest)
    return int(status or 0)


# -- parser ------------------------------------------------------------------------------------


def _budget(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: expected a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: expected a positive integer")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a subcommand must not reset a --debug given before it.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show Python tracebacks instead of one-line errors")

    def file_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", metavar="FILE", help="program: bytecode, hex, assembly or ELF object ('-' = stdin)")
        p.add_argument("--section", "-s", metavar="S", help="the program's section in an ELF object")

    def vm_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--prog-type", type=_prog_type, metavar="TYPE",
                       help="program type (xdp, socket_filter, tc, kprobe, ...): r1 points to its context and "
                            "the input memory is the packet; an ELF program takes it from its section")
        p.add_argument("--std-helpers", action="store_true",
                       help="provide the standard Linux helpers (map access, time, trace_printk, ...); "
                            "ELF programs and typed programs have them already")
        p.add_argument("--conformance-helpers", action="store_true",
                       help="provide uBPF's test helpers 0-5 (gather_bytes, memfrob, no_op, sqrti, strcmp_ext, "
                            "unwind), which the conformance suites call (they replace standard helpers 0-5)")
        p.add_argument("--helper-lib", metavar="MODULE:FUNC", action="append", default=[], help=HELPER_LIB_HELP)

    def sub(name: str, help_text: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=description, epilog=epilog,
                                   parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter)

    parser = _Parser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, nargs=0, help="show the version and exit")
    parser.add_argument("--debug", action="store_true", default=False,
                        help="show Python tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    p = sub("asm", "assemble a program",
            "Assemble uBPF- or LLVM-syntax assembly into bytecode. LLVM syntax may be a pasted listing:\n"
            "\"llvm-objdump -d\" output (with or without addresses and raw bytes; the bytes decide what\n"
            "the text leaves open, such as a bpf-to-bpf call) or a kernel verifier log / bpftool dump\n"
            "(each instruction placed by its number, revisits dropped, register states ignored).",
            "examples:\n  jitbpf asm prog.s              # writes prog.bin\n"
            "  jitbpf asm prog.s -o - | xxd\n  jitbpf asm prog.s --hex")
    p.add_argument("file", metavar="FILE", help="assembly source ('-' = stdin)")
    p.add_argument("-o", "--output", metavar="OUT", help="output file (default: FILE with suffix .bin; '-' = stdout)")
    p.add_argument("--hex", action="store_true", help="write hex text, one instruction per line (to stdout unless -o)")
    p.set_defaults(func=cmd_asm)

    p = sub("disasm", "disassemble a program",
            "Print a program as assembly text (every program of an ELF object unless --section picks one).\n"
            "Both syntaxes assemble back to the same bytes.",
            "examples:\n  jitbpf disasm prog.bin\n  jitbpf disasm prog.o --section xdp --syntax llvm\n"
            "  jitbpf disasm prog.bin --json")
    file_args(p)
    p.add_argument("--syntax", choices=("ubpf", "llvm"), default="ubpf", help="assembly dialect (default: ubpf)")
    p.add_argument("--no-pc", action="store_true", help="leave out the instruction numbers")
    p.add_argument("--json", action="store_true", help="print the instructions as JSON")
    p.set_defaults(func=cmd_disasm)

    p = sub("verify", "check a program without running it",
            "Run the verifier: the program is accepted if every path is safe to run.",
            "examples:\n  jitbpf verify prog.s\n  jitbpf verify prog.o --section xdp --log\n"
            "  jitbpf verify loop.s --allow-loops --json\n\n"
            "A rejection prints the verifier log (stdout) and the error with its instruction (stderr).\n"
            "exit status: 0 accepted, 2 rejected")
    file_args(p)
    p.add_argument("--allow-loops", action="store_true", help="accept bounded loops (back edges)")
    p.add_argument("--log", action="store_true",
                   help="print the verifier's log (the states along the paths) for an accepted program too; "
                        "a rejected one always gets it, on stdout before the error")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    vm_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub("run", "run a program and print r0",
            "Run a program on input memory (r1 = its address, r2 = its length) and print r0 in hex and\n"
            "decimal (with its verdict name for a packet program), and the memory if the program changed\n"
            "it. A typed program (ELF section or --prog-type) gets its context in r1 and the memory as its\n"
            "packet. With --pcap it runs on every packet of a capture and prints the verdict counts and\n"
            "the maps (a progress bar shows on a terminal).",
            "examples:\n  jitbpf run prog.s\n  jitbpf run prog.bin --mem '01 02 03 04' --jit\n"
            "  jitbpf run packet_filter.o --section xdp --mem-file packet.bin --json\n"
            "  jitbpf run prog.s --helper-lib myhelpers:register\n"
            "  jitbpf run xdp_firewall.o --section xdp --pcap capture.pcap --map-set BLOCKED_IPS 0xc0a80001 1\n\n"
            "exit status: 0 the program returned, 1 it failed at run time (with --pcap: on some packet),\n"
            "2 it could not be loaded")
    file_args(p)
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--mem", metavar="HEX", help="input memory as hex bytes (white space allowed)")
    mem.add_argument("--mem-file", metavar="F", help="input memory from a file (raw bytes)")
    mem.add_argument("--pcap", metavar="CAPTURE",
                     help="run a packet program (XDP, tc, socket filter, cgroup_skb, sk_skb, sk_msg) on every packet "
                          "of a pcap/pcapng capture; print the verdict counts and the maps' contents")
    p.add_argument("--limit", type=_positive, metavar="N", help="with --pcap: stop after N packets")
    p.add_argument("--no-progress", action="store_true",
                   help="with --pcap: no progress bar (it is shown only when stderr is a terminal)")
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="with --pcap --jit: run the packets in batches over N threads (per-CPU maps: one CPU each)")
    p.add_argument("--map-set", nargs=3, action="append", default=[], metavar=("MAP", "KEY", "VALUE"),
                   help="store an entry in a map before the run; KEY and VALUE are integers (stored in the map's "
                        "key and value sizes, little-endian) or hex:BYTES. May be given several times")
    engine = p.add_mutually_exclusive_group()
    engine.add_argument("--jit", action="store_true", help="run the x86-64 JIT")
    engine.add_argument("--interp", action="store_true", help="run the reference interpreter (the default)")
    p.add_argument("--no-verify", action="store_true", help="skip the verifier (structural checks still apply)")
    p.add_argument("--allow-loops", action="store_true", help="let the verifier accept bounded loops")
    p.add_argument("--budget", type=_budget, metavar="N", help="instructions allowed per run (default: 1000000)")
    vm_args(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_run)

    p = sub("jit-dump", "show the x86-64 code the JIT generates",
            "Compile a program with the JIT and print the x86-64 code beside each eBPF instruction.",
            "examples:\n  jitbpf jit-dump prog.s\n  jitbpf jit-dump prog.o --section xdp --json")
    file_args(p)
    p.add_argument("--no-verify", action="store_true", help="skip the verifier (structural checks still apply)")
    p.add_argument("--allow-loops", action="store_true", help="let the verifier accept bounded loops")
    vm_args(p)
    p.add_argument("--json", action="store_true", help="print the listing as JSON blocks")
    p.set_defaults(func=cmd_jit_dump)

    p = sub("bench", "run the benchmark suite",
            "Run the benchmark suite (the benchmarks/ directory of a source checkout); the arguments\n"
            "are passed on to it.",
            "examples:\n  jitbpf bench\n  jitbpf bench --quick\n"
            "  jitbpf bench -- --help      # the suite's own options")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the suite")
    p.set_defaults(func=cmd_bench)

    # Dispatched before argparse (its options are the runner's, unknown ones ignored); listed
    # here so that "jitbpf --help" shows it.
    sub("conformance-plugin", "act as a bpf_conformance plugin",
        "Speak bpf_conformance_runner's plugin protocol (see 'jitbpf conformance-plugin --help').", "")
    return parser


class _VersionAction(argparse.Action):
    """--version: the package's own ``__version__`` (the one the installed metadata is built from)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from jitbpf import __version__

        sys.stdout.write(f"{PROG} {__version__}\n")
        parser.exit(0)


def plugin_argv(argv: list[str]) -> list[str] | None:
    """The plugin's arguments when ``argv`` runs ``conformance-plugin``, else None.

    The plugin takes the runner's options, which argparse would reject, so it is dispatched by
    hand. The runner puts MEM_HEX before the plugin options, so with ``--plugin_path jitbpf
    --plugin_options conformance-plugin`` the subcommand comes after the memory.
    """
    for i, arg in enumerate(argv):
        if arg == "conformance-plugin":
            return [a for a in argv[:i] if a != "--debug"] + argv[i + 1 :]
        if arg != "--debug" and not _HEX_TEXT.fullmatch(arg):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jitbpf`` console script and ``python -m jitbpf``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    plugin_args = plugin_argv(args_list)
    if plugin_args is not None:
        return plugin.main(plugin_args)
    first = next((i for i, a in enumerate(args_list) if a != "--debug"), len(args_list))
    rest = args_list[first + 1 :]
    if args_list[first : first + 1] == ["bench"] and rest[:1] not in (["-h"], ["--help"]):
        # The suite's own options pass through untouched (argparse would claim the ones it
        # does not know); only "jitbpf bench --help" is ours.
        args = argparse.Namespace(command="bench", args=rest, func=cmd_bench, debug=first > 0)
    else:
        args = build_parser().parse_args(args_list)
    debug = bool(getattr(args, "debug", False))
    out = sys.stdout
    try:
        status: int = args.func(args, out)
        out.flush()
        return status
    except CliError as exc:
        if debug:
            raise
        _error(exc.message + loop_hint(exc, args))
        return exc.status
    except BpfError as exc:  # one that no command located: still one line
        if debug:
            raise
        _error(describe(exc))
        return EXIT_USAGE
    except ImportError as exc:  # a part of jitbpf (or a dependency) missing from this installation
        if debug:
            raise
        _error(f"not available in this installation: {one_line(str(exc))}")
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        if isinstance(exc, BrokenPipeError):
            return _broken_pipe()
        if debug:
            raise
        _error(one_line(str(exc)) or type(exc).__name__)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, with the way to see more
        if debug:
            raise
        _error(f"internal error: {type(exc).__name__}: {one_line(str(exc))} (run with --debug for the traceback)")
        return EXIT_FAILED


LOOP_REJECTION = "back-edge"  # how the verifier's rejection of a loop begins


def loop_hint(exc: CliError, args: argparse.Namespace) -> str:
    """For a verifier rejecting a loop: the options of this command that would let it through."""
    cause = exc.__cause__
    if not isinstance(cause, VerifierError) or not cause.message.startswith(LOOP_REJECTION):
        return ""
    options = []
    if getattr(args, "allow_loops", True) is False:
        options.append("--allow-loops accepts it if it is bounded")
    if getattr(args, "no_verify", True) is False:
        options.append("--no-verify skips the verifier")
    return f" (a loop: {'; '.join(options)})" if options else ""


def _error(message: str) -> None:
    # One line whatever the input held: names from a corrupt file may carry control characters.
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in one_line(message))
    sys.stderr.write(f"{PROG}: error: {text}\n")
    sys.stderr.flush()


def _broken_pipe() -> int:
    # The reader went away ("jitbpf disasm x | head"); silence the flush at exit, as the docs advise.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
