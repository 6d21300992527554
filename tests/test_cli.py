"""The ``jitbpf`` command, run as a real process: output, exit status and one-line errors."""

from __future__ import annotations

import contextlib
import importlib
import io
import ipaddress
import json
import os
import pty
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dpkt
import pytest
from elftools.elf.elffile import ELFFile

from jitbpf import cli, load_elf
from jitbpf.asm import assemble
from tests.test_elf import Compiler, example_compiler
from tests.test_programs import udp_frame

PROG_S = "mov r0, 42\nexit\n"
STORE_S = "ldxw r0, [r1]\nstw [r1+4], 7\nexit\n"  # reads mem[0:4], writes mem[4:8]
HELPER_S = "mov r1, 1\nmov r2, 2\nmov r3, 3\nmov r4, 4\nmov r5, 5\ncall 0\nexit\n"
LOOP_S = "mov r0, 0\nadd r0, 1\nja -2\nexit\n"  # never ends
UNINIT_S = "mov r0, r5\nexit\n"  # reads r5 before anything wrote it
LDDW_S = "lddw r1, 0x1122334455667788\njeq r1, 0, +1\nmov r0, 1\nexit\n"
ENTRY_POINT = Path(sys.executable).parent / "jitbpf"
SUBCOMMANDS = ("asm", "disasm", "verify", "run", "jit-dump", "bench", "conformance-plugin")
# Each command is a fresh interpreter that spends most of its time importing; independent ones
# run side by side to keep the suite quick.
PARALLEL = max(2, min(8, 2 * (os.cpu_count() or 1)))

Proc = subprocess.CompletedProcess[bytes]


def provides(module: str, *names: str) -> bool:
    """Whether ``module`` imports and defines ``names`` (parts of the package are optional)."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return False
    return all(hasattr(mod, name) for name in names)


needs_verifier = pytest.mark.skipif(not provides("jitbpf.verifier", "verify", "verify_flow"),
                                    reason="the verifier (jitbpf.verifier) is not available")
needs_jit = pytest.mark.skipif(not provides("jitbpf.jit", "JitProgram"), reason="the JIT (jitbpf.jit) is not available")


def jitbpf(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> Proc:
    """``python -m jitbpf ARGS`` in a new process."""
    return subprocess.run([sys.executable, "-m", "jitbpf", *args], cwd=cwd, input=stdin, capture_output=True,
                          timeout=120, check=False)


def jitbpf_all(*calls: Sequence[str], cwd: Path | None = None) -> list[Proc]:
    """Several independent ``jitbpf`` commands, run concurrently; results in order."""
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        return list(pool.map(lambda args: jitbpf(*args, cwd=cwd), calls))


def in_process(*args: str) -> Proc:
    """``jitbpf ARGS`` through ``cli.main`` in this process: for the variants of a behaviour that
    a real process has shown already (processes cost a Python start-up each)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(list(args))
        except SystemExit as exc:  # argparse's help and usage errors
            status = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(list(args), status, out.getvalue().encode(), err.getvalue().encode())


def ok(proc: Proc) -> str:
    assert proc.returncode == 0, (proc.args, proc.stderr.decode())
    assert b"Traceback" not in proc.stderr
    return proc.stdout.decode()


def error(proc: Proc, status: int = 2) -> str:
    """The one-line message of a failed command (checked: status, one line, no traceback)."""
    err = proc.stderr.decode()
    assert proc.returncode == status, (proc.args, proc.returncode, proc.stdout, err)
    assert "Traceback" not in err
    assert err.startswith("jitbpf: error: ") and err.count("\n") == 1, err
    return err.removeprefix("jitbpf: error: ").rstrip("\n")


@pytest.fixture(autouse=True)
def bytecode_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Let the commands cache compiled bytecode outside the tree: where the environment forbids
    caching (PYTHONDONTWRITEBYTECODE), every process would compile the whole package again."""
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path_factory.getbasetemp() / "pycache"))


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "prog.s").write_text(PROG_S)
    (tmp_path / "prog.bin").write_bytes(assemble(PROG_S))
    (tmp_path / "prog.hex").write_text(assemble(PROG_S).hex(" ") + "\n")
    (tmp_path / "store.s").write_text(STORE_S)
    (tmp_path / "helper.s").write_text(HELPER_S)
    (tmp_path / "loop.s").write_text(LOOP_S)
    (tmp_path / "uninit.s").write_text(UNINIT_S)
    (tmp_path / "lddw.s").write_text(LDDW_S)
    (tmp_path / "neg.s").write_text("mov r0, -1\nexit\n")
    (tmp_path / "empty.s").write_text("# nothing\n")
    (tmp_path / "bad.s").write_text("mov r0, 1\n\nexit\n  mvo r0, 2\n")
    (tmp_path / "short.bin").write_bytes(bytes([0x95, 0, 0, 0, 0, 0, 0, 0, 0xB7, 0, 0x01]))
    (tmp_path / "unknown-op.bin").write_bytes(bytes([0xFF]) + bytes(7) + assemble("exit"))
    (tmp_path / "odd.hex").write_text("95 00 00 00 00 00 00 0\n")
    (tmp_path / "mem.bin").write_bytes(bytes([9, 0, 0, 0, 7, 0, 0, 0]))
    return tmp_path


# -- help, usage and entry points --------------------------------------------------------------


def test_help_and_version() -> None:
    top, version, run = jitbpf_all(["--help"], ["--version"], ["run", "--help"])
    subs = [run if name == "run" else in_process(name, "--help") for name in SUBCOMMANDS]
    out = ok(top)
    assert "examples:" in out and "Exit status" in out
    for name in SUBCOMMANDS:
        assert name in out
    assert ok(version).startswith("jitbpf ")
    for name, proc in zip(SUBCOMMANDS, subs, strict=True):
        text = ok(proc)
        assert text.startswith("usage: jitbpf") and "example" in text, name


def test_usage_errors_are_one_line() -> None:
    procs = [*jitbpf_all([], ["frobnicate"]), in_process("run"), in_process("run", "x.s", "--budget", "lots"),
             in_process("run", "x.s", "--jit", "--interp"), in_process("disasm", "x.bin", "--syntax", "att")]
    messages = [error(p) for p in procs]
    assert "required: COMMAND" in messages[0]
    assert "invalid choice: 'frobnicate'" in messages[1]
    assert "required: FILE" in messages[2] and "see 'jitbpf run --help'" in messages[2]
    assert "invalid budget 'lots'" in messages[3]
    assert "not allowed with argument" in messages[4]
    assert "invalid choice: 'att'" in messages[5]


def test_installed_entry_point(files: Path) -> None:
    entry = shutil.which("jitbpf", path=str(ENTRY_POINT.parent)) or shutil.which("jitbpf")
    if entry is None:
        pytest.skip("the jitbpf console script is not installed (pip install -e .)")
    proc = subprocess.run([entry, "run", str(files / "prog.s"), "--no-verify"], capture_output=True, timeout=120,
                          check=False)
    assert ok(proc) == "r0 = 0x2a (42)\n"
    proc = subprocess.run([entry, "disasm", str(files / "missing.s")], capture_output=True, timeout=120, check=False)
    assert error(proc) == f"{files / 'missing.s'}: No such file or directory"


# -- asm ---------------------------------------------------------------------------------------


def test_asm(files: Path) -> None:
    (files / "prog.bin").unlink()
    code = assemble(PROG_S)
    default, to_stdout, bad = jitbpf_all(
        ["asm", str(files / "prog.s")],
        ["asm", str(files / "prog.s"), "-o", "-"],
        ["asm", str(files / "bad.s")],
    )
    hex_text = in_process("asm", str(files / "prog.s"), "--hex")
    named = in_process("asm", str(files / "prog.s"), "-o", str(files / "out.o"))
    missing = in_process("asm", str(files / "nope.s"))
    assert ok(default) == "" and (files / "prog.bin").read_bytes() == code
    assert to_stdout.returncode == 0 and to_stdout.stdout == code
    assert ok(hex_text) == "b7 00 00 00 2a 00 00 00\n95 00 00 00 00 00 00 00\n"
    ok(named)
    assert (files / "out.o").read_bytes() == code
    assert error(bad) == f"{files / 'bad.s'}:4:3: unknown mnemonic 'mvo'"
    assert not (files / "bad.bin").exists()
    assert error(missing) == f"{files / 'nope.s'}: No such file or directory"


def test_asm_from_stdin_llvm_syntax() -> None:
    proc = jitbpf("asm", "-", "-o", "-", stdin=b"r0 = 42\nexit\n")
    assert proc.returncode == 0 and proc.stdout == assemble(PROG_S)


# -- disasm ------------------------------------------------------------------------------------


def test_disasm(files: Path) -> None:
    procs = [
        jitbpf("disasm", str(files / "prog.s")),
        in_process("disasm", str(files / "prog.bin")),
        in_process("disasm", str(files / "prog.hex")),
        in_process("disasm", str(files / "prog.bin"), "--syntax", "llvm", "--no-pc"),
        in_process("disasm", str(files / "prog.bin"), "--json"),
        in_process("disasm", str(files / "lddw.s")),
    ]
    for proc in procs[:3]:  # assembly, raw bytecode and hex all read the same
        assert ok(proc) == "   0: mov r0, 42\n   1: exit\n"
    assert ok(procs[3]) == "r0 = 42\nexit\n"
    report = json.loads(ok(procs[4]))
    assert report["kind"] == "raw"
    assert report["instructions"][0] == {"pc": 0, "opcode": 0xB7, "dst": 0, "src": 0, "off": 0, "imm": 42,
                                         "hex": "b70000002a000000", "text": "mov r0, 42"}
    assert [i["pc"] for i in report["instructions"]] == [0, 1]
    assert assemble(ok(procs[5])) == assemble(LDDW_S)  # the listing, PC column and all, reassembles


def test_disasm_bad_inputs(files: Path) -> None:
    unknown, short = jitbpf_all(["disasm", str(files / "unknown-op.bin")], ["disasm", str(files / "short.bin")])
    odd = in_process("disasm", str(files / "odd.hex"))
    section = in_process("disasm", str(files / "prog.bin"), "--section", "xdp")
    directory = in_process("disasm", str(files))
    assert error(unknown) == f"{files / 'unknown-op.bin'}: at PC 0: unknown opcode 0xff"
    assert error(short).startswith(f"{files / 'short.bin'}: bytecode length 11 is not a multiple of 8")
    assert error(odd) == f"{files / 'odd.hex'}: hex bytecode: odd number of hex digits (15)"
    assert "--section applies to ELF objects only" in error(section)
    assert error(directory) == f"{files}: Is a directory"


# -- verify ------------------------------------------------------------------------------------


@needs_verifier
def test_verify(files: Path) -> None:
    procs = [
        jitbpf("verify", str(files / "prog.s")),
        in_process("verify", str(files / "prog.s"), "--json"),
        in_process("verify", str(files / "prog.s"), "--log"),
        in_process("verify", str(files / "helper.s"), "--conformance-helpers"),
        in_process("verify", str(files / "lddw.s")),
    ]
    assert ok(procs[0]) == "OK: 2 instructions verified\n"
    report = json.loads(ok(procs[1]))
    assert report == {"ok": True, "file": str(files / "prog.s"), "instructions": 2}
    assert ok(procs[2]).endswith("OK: 2 instructions verified\n")
    assert ok(procs[3]) == "OK: 7 instructions verified\n"
    assert ok(procs[4]) == "OK: 4 instructions verified\n"


@needs_verifier
def test_verify_rejections(files: Path) -> None:
    uninit = jitbpf("verify", str(files / "uninit.s"))
    as_json = in_process("verify", str(files / "uninit.s"), "--json")
    logged = in_process("verify", str(files / "uninit.s"), "--log")
    loop = in_process("verify", str(files / "loop.s"))
    helper = in_process("verify", str(files / "helper.s"))
    assert error(uninit).startswith(f"{files / 'uninit.s'}: at PC 0: ")
    assert uninit.stdout and uninit.stdout == logged.stdout  # the log comes with a rejection, --log or not
    assert json.loads(as_json.stdout)["log"] == uninit.stdout.decode().rstrip("\n")
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["pc"] == 0 and report["insn"]
    assert error(as_json) == error(uninit)
    assert error(logged) == error(uninit)
    assert error(loop).startswith(f"{files / 'loop.s'}: at PC ")
    assert error(helper) == f"{files / 'helper.s'}: at PC 5: call to nonexistent function 0"


# -- run ---------------------------------------------------------------------------------------


def test_run(files: Path) -> None:
    procs = [
        *jitbpf_all(["run", str(files / "prog.bin"), "--no-verify"],
                    ["run", str(files / "store.s"), "--no-verify", "--mem", "01 02 03 04  00 00 00 00"]),
        in_process("run", str(files / "neg.s"), "--no-verify", "--interp"),
        in_process("run", str(files / "store.s"), "--no-verify", "--mem-file", str(files / "mem.bin"), "--json"),
        in_process("run", str(files / "store.s"), "--no-verify", "--mem", "0x0a000000ffffffff", "--json"),
        in_process("run", str(files / "helper.s"), "--no-verify", "--conformance-helpers"),
    ]
    assert ok(procs[0]) == "r0 = 0x2a (42)\n"
    assert ok(procs[1]) == "r0 = 0x4030201 (67305985)\nmem = 01 02 03 04 07 00 00 00\n"
    assert ok(procs[2]) == "r0 = 0xffffffffffffffff (18446744073709551615, signed -1)\n"
    report = json.loads(ok(procs[3]))
    assert report == {"r0": 9, "r0_hex": "0x9", "r0_signed": 9, "engine": "interp"}  # memory unchanged: no "mem"
    report = json.loads(ok(procs[4]))
    assert report["r0"] == 10 and report["mem"] == "0a00000007000000"
    assert ok(procs[5]) == "r0 = 0x102030405 (4328719365)\n"


def test_run_program_types_and_standard_helpers(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (files / "ktime.s").write_text("call 5\nexit\n")  # bpf_ktime_get_ns
    assert "r0 = 0x" in ok(in_process("run", str(files / "ktime.s"), "--std-helpers"))
    out = ok(in_process("run", str(files / "prog.s"), "--prog-type", "xdp", "--mem", "00 11", "--json"))
    assert json.loads(out)["prog_type"] == "xdp"
    message = error(in_process("run", str(files / "prog.s"), "--prog-type", "kprobe", "--mem", "00"))
    assert message == f"{files / 'prog.s'}: kprobe programs take no packet (--mem/--mem-file)"
    assert "unknown program type 'bogus'" in error(in_process("run", str(files / "prog.s"), "--prog-type", "bogus"))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"mov r0, 1\nmvo r0, 2\n")))
    assert error(in_process("run", "-")) == "<stdin>:2:1: unknown mnemonic 'mvo'"


@needs_verifier
def test_run_verified(files: Path) -> None:
    accepted, rejected = in_process("run", str(files / "prog.s")), in_process("run", str(files / "uninit.s"))
    assert ok(accepted) == "r0 = 0x2a (42)\n"
    assert error(rejected).startswith(f"{files / 'uninit.s'}: at PC 0: ")


def test_run_bad_inputs(files: Path) -> None:
    procs = [
        jitbpf("run", str(files / "prog.s"), "--mem", "01 0g"),
        in_process("run", str(files / "prog.s"), "--mem", "012"),
        in_process("run", str(files / "prog.s"), "--mem-file", str(files / "missing.bin")),
        in_process("run", str(files / "missing.s")),
        in_process("run", str(files / "short.bin")),
        in_process("run", str(files / "bad.s")),
        in_process("run", str(files / "unknown-op.bin"), "--no-verify"),
        in_process("run", str(files / "empty.s")),
        in_process("run", str(files / "helper.s"), "--no-verify"),
    ]
    assert error(procs[0]) == "--mem: invalid hex digit 'g' at character 5"
    assert error(procs[1]) == "--mem: odd number of hex digits (3)"
    assert error(procs[2]) == f"{files / 'missing.bin'}: No such file or directory"
    assert error(procs[3]) == f"{files / 'missing.s'}: No such file or directory"
    assert "bytecode length 11 is not a multiple of 8" in error(procs[4])
    assert error(procs[5]) == f"{files / 'bad.s'}:4:3: unknown mnemonic 'mvo'"
    assert error(procs[6]) == f"{files / 'unknown-op.bin'}: at PC 0: unknown opcode 0xff"
    assert error(procs[7]) == f"{files / 'empty.s'}: no instructions"
    assert error(procs[8]) == f"{files / 'helper.s'}: at PC 5: call to nonexistent function 0"


def test_run_time_failures_exit_1(files: Path) -> None:
    no_mem = jitbpf("run", str(files / "store.s"), "--no-verify")  # reads memory it was not given
    endless = in_process("run", str(files / "loop.s"), "--no-verify", "--budget", "1000")
    message = error(no_mem, status=1)
    assert message.startswith(f"{files / 'store.s'}: at PC 0: r1: 4-byte load at an address in no region of the run")
    assert "budget" in error(endless, status=1)


HELPER_LIB = '''
from jitbpf.helpers import Helper


def as_list(vm):
    return [Helper(0, "seven", lambda a, b, c, d, e: 7 + a)]


def registering(vm):
    vm.register_helper(0, lambda a, b, c, d, e: 100 + e, name="hundred")


def broken(vm):
    raise RuntimeError("no helpers today")


def wrong(vm):
    return [1, 2]
'''


def test_run_helper_lib(files: Path) -> None:
    (files / "myhelpers.py").write_text(HELPER_LIB)
    prog = str(files / "helper.s")
    lib = files / "myhelpers.py"
    # By module name, found in the working directory (a real process: its sys.path is at stake);
    # the variants load the module by file name in this process.
    by_name, missing = jitbpf_all(["run", prog, "--no-verify", "--helper-lib", "myhelpers:as_list"],
                                  ["run", prog, "--helper-lib", "nosuchmodule:f"], cwd=files)
    assert ok(by_name) == "r0 = 0x8 (8)\n"
    assert "cannot import nosuchmodule: ModuleNotFoundError" in error(missing)
    assert ok(in_process("run", prog, "--no-verify", "--helper-lib", f"{lib}:registering")) == "r0 = 0x69 (105)\n"
    assert "expected MODULE:FUNC" in error(in_process("run", prog, "--helper-lib", "myhelpers"))
    assert f"module {lib} has no attribute 'nope'" in error(in_process("run", prog, "--helper-lib", f"{lib}:nope"))
    message = error(in_process("run", prog, "--helper-lib", f"{lib}:broken"))
    assert message == f"--helper-lib {lib}:broken: RuntimeError: no helpers today"
    assert "expected Helper objects, got int" in error(in_process("run", prog, "--helper-lib", f"{lib}:wrong"))


@needs_jit
def test_run_jit_and_dump(files: Path) -> None:
    run, dump = jitbpf_all(["run", str(files / "store.s"), "--jit", "--no-verify", "--mem", "01020304 00000000"],
                           ["jit-dump", str(files / "prog.s")])
    as_json = in_process("run", str(files / "helper.s"), "--jit", "--conformance-helpers", "--json")
    bad = in_process("jit-dump", str(files / "bad.s"))
    assert ok(run) == "r0 = 0x4030201 (67305985)\nmem = 01 02 03 04 07 00 00 00\n"
    report = json.loads(ok(as_json))
    assert report["r0"] == 0x102030405 and report["engine"] == "jit"
    listing = ok(dump)
    assert "exit" in listing and "ret" in listing
    assert error(bad) == f"{files / 'bad.s'}:4:3: unknown mnemonic 'mvo'"


# -- ELF objects -------------------------------------------------------------------------------

TWO_PROGRAMS_C = """
#define SEC(x) __attribute__((section(x), used))
SEC("xdp") int pass_all(void *ctx) { return 2; }
SEC("socket") int keep_none(void *ctx) { return 0; }
char LICENSE[] SEC("license") = "MIT";
"""


@pytest.fixture
def elf_file(tmp_path: Path) -> Path:
    clang = shutil.which("clang")
    if clang is None or not provides("jitbpf.linux.elf", "load_elf"):
        pytest.skip("needs clang and jitbpf.linux.elf")
    (tmp_path / "two.c").write_text(TWO_PROGRAMS_C)
    subprocess.run([clang, "-O2", "-target", "bpf", "-c", "two.c", "-o", "two.o"], cwd=tmp_path, check=True,
                   timeout=120)
    (tmp_path / "bad.o").write_bytes(b"\x7fELF" + bytes(100))
    return tmp_path / "two.o"


def test_elf(elf_file: Path) -> None:
    several, unknown = jitbpf_all(["run", str(elf_file)], ["disasm", str(elf_file), "--section", "nope"])
    xdp = in_process("run", str(elf_file), "--section", "xdp", "--mem", "00" * 64, "--no-verify")
    socket = in_process("run", str(elf_file), "-s", "keep_none", "--json", "--no-verify")
    disasm = in_process("disasm", str(elf_file), "-s", "socket")
    malformed = in_process("disasm", str(elf_file.parent / "bad.o"))
    assert error(several) == (f"{elf_file}: 2 programs; choose one with --section: pass_all (section xdp), "
                              "keep_none (section socket)")
    assert ok(xdp) == "r0 = 0x2 (2) XDP_PASS\n"
    report = json.loads(ok(socket))
    assert report["r0"] == 0 and report["prog_type"] == "socket_filter"
    assert ok(disasm) == "   0: mov r0, 0\n   1: exit\n"
    assert error(unknown).startswith(f"{elf_file}: no program or section named 'nope' (programs: pass_all")
    assert error(malformed).startswith(f"{elf_file.parent / 'bad.o'}: ")


@needs_verifier
def test_elf_verify(elf_file: Path) -> None:
    assert ok(in_process("verify", str(elf_file), "-s", "xdp")) == "OK: 2 instructions verified\n"


# -- bench and the plugin entry ----------------------------------------------------------------


def test_bench_and_plugin_entry() -> None:
    program = b"b7 00 00 00 2a 00 00 00 95 00 00 00 00 00 00 00\n"
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        bench = pool.submit(jitbpf, "bench", "--", "--help")
        plain = pool.submit(jitbpf, "conformance-plugin", "--interp", stdin=program)
        # As the runner starts it: MEM_HEX first, then the plugin options (the subcommand).
        options = pool.submit(jitbpf, "01  02  ", "conformance-plugin", "--profile", "safe", stdin=program)
        broken = pool.submit(jitbpf, "conformance-plugin", stdin=b"95 00 00 00 00 00 00 0z\n")
    root = Path(__file__).resolve().parent.parent
    if (root / "benchmarks" / "__main__.py").is_file():
        assert "--quick" in ok(bench.result())
    else:
        assert "benchmark suite is not available" in error(bench.result())
    assert (plain.result().returncode, plain.result().stdout) == (0, b"2a\n")
    assert (options.result().returncode, options.result().stdout) == (0, b"2a\n")
    assert broken.result().returncode == 1
    assert broken.result().stdout.startswith(b"Failed to load code: invalid program hex")


# -- pasted listings, whole objects and captures ------------------------------------------------

OBJDUMP = shutil.which("llvm-objdump") or next(
    (found for v in range(30, 10, -1) if (found := shutil.which(f"llvm-objdump-{v}"))), None)
needs_objdump = pytest.mark.skipif(OBJDUMP is None, reason="llvm-objdump is not installed (it comes with llvm)")


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory) -> Compiler:
    if not provides("jitbpf.linux.elf", "load_elf"):
        pytest.skip("needs jitbpf.linux.elf")
    return example_compiler(tmp_path_factory)


def section_bytes(obj: Path, name: str) -> bytes:
    with obj.open("rb") as f:
        section = ELFFile(f).get_section_by_name(name)
        assert section is not None
        return bytes(section.data())


@needs_objdump
def test_asm_reads_pasted_objdump_listings(example: Compiler, tmp_path: Path) -> None:
    # xdp_adjust calls a .text function (llvm-objdump prints it as `call -1`, only the bytes say
    # it is local); every column layout objdump offers must give the section's bytes back.
    assert OBJDUMP is not None
    obj = example("xdp_adjust")
    layouts = {"plain": [], "relocs": ["-r"], "source": ["-S"], "no-addr": ["--no-leading-addr"],
               "no-bytes": ["--no-show-raw-insn"], "bare": ["--no-show-raw-insn", "--no-leading-addr"],
               "hex-imm": ["--print-imm-hex"]}
    for name, flags in layouts.items():
        listing = subprocess.run([OBJDUMP, "-d", *flags, "-j", "xdp", str(obj)], capture_output=True, check=True,
                                 timeout=120).stdout
        (tmp_path / f"{name}.txt").write_bytes(listing)
    procs = jitbpf_all(*(["asm", f"{name}.txt", "-o", f"{name}.bin"] for name in layouts), cwd=tmp_path)
    expected = section_bytes(obj, "xdp")
    for name, proc in zip(layouts, procs, strict=True):
        ok(proc)
        assert (tmp_path / f"{name}.bin").read_bytes() == expected, name


def test_disasm_llvm_output_reassembles(example: Compiler, tmp_path: Path) -> None:
    obj = str(example("xdp_adjust"))
    for syntax in ("llvm", "ubpf"):
        listing = ok(in_process("disasm", obj, "-s", "xdp_vlan_push", "--syntax", syntax))
        (tmp_path / f"{syntax}.s").write_text(listing)
    run_llvm, run_ubpf = jitbpf_all(["asm", "llvm.s", "-o", "-"], ["asm", "ubpf.s", "-o", "-"], cwd=tmp_path)
    code = load_elf(obj).programs["xdp_vlan_push"].code
    assert run_llvm.returncode == 0 and run_llvm.stdout == code
    assert run_ubpf.returncode == 0 and run_ubpf.stdout == code


def test_asm_and_run_a_pasted_verifier_log(tmp_path: Path) -> None:
    log = ("func#0 @0\n0: R1=ctx() R10=fp0\n0: (b7) r0 = 7                 ; R0_w=7\n"
           "1: (15) if r1 == 0x0 goto pc+1\n2: (07) r0 += 1\n3: (95) exit\nfrom 1 to 3: R0_w=7\n3: (95) exit\n"
           "processed 5 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0\n")
    (tmp_path / "log.txt").write_text(log)
    (tmp_path / "gap.txt").write_text("0: (b7) r0 = 7\n2: (95) exit\n")
    run, gap = jitbpf_all(["run", "log.txt", "--no-verify", "--mem", "00"], ["asm", "gap.txt"], cwd=tmp_path)
    assert ok(run) == "r0 = 0x8 (8)\n"
    assert error(gap) == "gap.txt:2:1: instruction 1 is missing from the listing (it goes on with instruction 2)"


def test_hex_dump_typo_is_located(tmp_path: Path) -> None:
    (tmp_path / "typo.hex").write_text("b7 00 00 00 2a 00 00 00\n95 00 00 00 00 00 00 0g\n")
    (tmp_path / "commented.hex").write_text("b7 00 00 00 2a 00 00 00  ; r0 = 42\n95 00 00 00 00 00 00 00  ; exit\n")
    typo, commented = jitbpf_all(["run", "typo.hex", "--no-verify"], ["run", "commented.hex", "--no-verify"],
                                 cwd=tmp_path)
    assert error(typo) == "typo.hex:2:23: hex bytecode: invalid hex digit 'g' in '0g'"
    assert ok(commented) == "r0 = 0x2a (42)\n"


def test_disasm_whole_object(elf_file: Path) -> None:
    text = ok(jitbpf("disasm", str(elf_file), "--syntax", "llvm"))
    assert text == ("; section xdp\n<pass_all>:\n   0: r0 = 2\n   1: exit\n\n"
                    "; section socket\n<keep_none>:\n   0: r0 = 0\n   1: exit\n")
    report = json.loads(ok(in_process("disasm", str(elf_file), "--json")))
    assert [(p["name"], p["section"], len(p["instructions"])) for p in report["programs"]] == [
        ("pass_all", "xdp", 2), ("keep_none", "socket", 2)]
    assert assemble(text) == assemble("r0 = 2\nexit\nr0 = 0\nexit")  # the headers are labels


def test_error_names_are_one_line(elf_file: Path, tmp_path: Path) -> None:
    # A corrupt object may name its sections with anything, line breaks included.
    data = elf_file.read_bytes()
    assert data.count(b"\0socket\0") == 1
    (tmp_path / "odd.o").write_bytes(data.replace(b"\0socket\0", b"\0so\nk\x01t\0"))
    message = error(jitbpf("run", str(tmp_path / "odd.o")))
    assert message.endswith("keep_none (section so k\\x01t)")


BLOCKED_IP = "192.168.0.1"


def firewall_capture(path: Path, *, cut: int = 0) -> Path:
    sources = [BLOCKED_IP, "10.0.0.7", BLOCKED_IP, "172.16.5.4", "10.0.0.8"]
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f)
        for i, src in enumerate(sources):
            writer.writepkt(udp_frame(src), ts=1_700_000_000 + i)
    if cut:
        path.write_bytes(path.read_bytes()[:-cut])
    return path


def test_run_pcap(example: Compiler, tmp_path: Path) -> None:
    obj = str(example("xdp_firewall"))
    capture = str(firewall_capture(tmp_path / "capture.pcap"))
    blocked = ["--map-set", "BLOCKED_IPS", str(int(ipaddress.IPv4Address(BLOCKED_IP))), "1"]
    text, as_json = jitbpf_all(["run", obj, "--pcap", capture, *blocked],
                               ["run", obj, "-s", "xdp", "--pcap", capture, "--jit", "--json", "--limit", "4"])
    report = ok(text)
    assert report.startswith(f"xdp_firewall (xdp) over {capture} [interp]\n  packets: 5 (")
    assert re.search(r"XDP_DROP +2 +40\.0%", report) and re.search(r"XDP_PASS +3 +60\.0%", report)
    assert "BLOCKED_IPS (HASH, 1/1024 entries)\n      3232235521 (0xc0a80001) -> 1" in report
    summary = json.loads(ok(as_json))
    assert (summary["engine"], summary["packets"], summary["verdicts"]) == ("jit", 4, {"XDP_PASS": 4})
    assert summary["maps"] == {"BLOCKED_IPS": {"info": "HASH, 0/1024 entries", "entries": []}}
    # An assembled program runs over a capture once it has a packet program type.
    (tmp_path / "pass.s").write_text("r0 = 2\nexit\n")
    typed = ok(in_process("run", str(tmp_path / "pass.s"), "--prog-type", "xdp", "--pcap", capture))
    assert re.search(r"XDP_PASS +5 +100\.0%", typed)
    threaded = ok(in_process("run", obj, "--pcap", capture, *blocked, "--jit", "--threads", "2"))
    assert re.search(r"XDP_DROP +2 +40\.0%", threaded) and re.search(r"XDP_PASS +3 +60\.0%", threaded)


def test_run_pcap_problems(example: Compiler, tmp_path: Path) -> None:
    obj = str(example("xdp_firewall"))
    capture = str(firewall_capture(tmp_path / "capture.pcap"))
    cut = str(firewall_capture(tmp_path / "cut.pcap", cut=10))
    (tmp_path / "junk.pcap").write_bytes(b"\xd4\xc3\xb2\xa1" + bytes(20) + b"\xff" * 16)
    (tmp_path / "prog.s").write_text("r0 = 2\nexit\n")
    (tmp_path / "loop.s").write_text(LOOP_S)
    missing, kprobe = jitbpf_all(["run", obj, "--pcap", str(tmp_path / "none.pcap")],
                                 ["run", str(example("kprobe")), "--pcap", capture])
    assert error(missing) == f"{tmp_path / 'none.pcap'}: No such file or directory"
    assert "kprobe programs do not take packets" in error(kprobe)
    truncated = ok(in_process("run", obj, "--pcap", cut))
    assert "packets: 4 (" in truncated
    assert f"warning: {cut}: the capture ends in the middle of packet 4 (37 of its 47 bytes); it was left out" in (
        truncated)
    assert error(in_process("run", obj, "--pcap", str(tmp_path / "junk.pcap"))) == (
        f"{tmp_path / 'junk.pcap'}: packet 0 at offset 0x18 claims 4294967295 bytes (corrupt capture)")
    assert error(in_process("run", str(tmp_path / "prog.s"), "--pcap", capture)).startswith(
        f"{tmp_path / 'prog.s'}: --pcap needs a packet program")
    assert error(in_process("run", obj, "--limit", "3")) == (
        "--limit, --no-progress and --threads apply to --pcap runs only")
    assert error(in_process("run", obj, "--pcap", capture, "--map-set", "NOPE", "1", "1")) == (
        f"--map-set NOPE 1 1: {obj} (xdp: xdp_firewall) has no map named 'NOPE' (maps: BLOCKED_IPS)")
    assert error(in_process("run", obj, "--map-set", "BLOCKED_IPS", "0x1ffffffff", "1")) == (
        "--map-set BLOCKED_IPS 0x1ffffffff 1: key 8589934591 does not fit in 4 bytes")
    # Packets whose run fails (here: the budget) are counted, and the exit status says so.
    failing = in_process("run", str(tmp_path / "loop.s"), "--prog-type", "xdp", "--no-verify", "--budget", "100",
                         "--pcap", capture)
    assert error(failing, status=1) == (f"{tmp_path / 'loop.s'}: 5 of 5 packets failed at run time (first: packet 0: "
                                        "instruction budget exhausted at PC 1)")
    assert re.search(r"error +5 +100\.0%", failing.stdout.decode())


def test_run_pcap_progress_bar_on_a_terminal(example: Compiler, tmp_path: Path) -> None:
    capture = str(firewall_capture(tmp_path / "capture.pcap"))
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "jitbpf", "run", str(example("xdp_firewall")), "--pcap", capture],
                              stdout=subprocess.PIPE, stderr=follower, timeout=120, check=False)
        os.close(follower)
        follower = -1
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal has nothing more
            while chunk := os.read(leader, 4096):
                shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0 and b"XDP_PASS" in proc.stdout
    assert b"xdp_firewall [" in shown and b"100.0%" in shown and b"5 packets" in shown


def test_run_prints_packet_verdicts(example: Compiler) -> None:
    text = ok(jitbpf("run", str(example("tc_classifier")), "--mem", "00" * 64))
    assert text.startswith("r0 = ") and " TC_ACT_" in text


@needs_jit
def test_jit_dump_json(files: Path) -> None:
    report = json.loads(ok(jitbpf("jit-dump", str(files / "prog.s"), "--json")))
    ebpf = [b for b in report["blocks"] if "pc" in b]
    assert [(b["pc"], b["insn"]) for b in ebpf] == [(0, "mov r0, 42"), (1, "exit")]
    assert any(x["asm"] == "mov eax, 0x2a" and x["bytes"] == "b82a000000" for x in ebpf[0]["x86"])
    assert all(x["x86"] for x in report["blocks"] if "pc" in x)


def test_text_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin1.s").write_bytes(b"mov r0, 1 ; caf\xe9\nexit\n")
    (tmp_path / "stray.s").write_bytes(b"mov r0, 1\xe9\nexit\n")
    latin1, stray = jitbpf_all(["run", "latin1.s", "--no-verify"], ["run", "stray.s"], cwd=tmp_path)
    assert ok(latin1) == "r0 = 0x1 (1)\n"
    assert error(stray) == "stray.s:1:10: unexpected character '\ufffd'"
