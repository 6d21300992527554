"""The benchmark workloads: each an eBPF program (assembly text) and the same algorithm in C (``native/*.c``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.native import NativeLib
from benchmarks.packets import packet_mix
from jitbpf.asm import assemble
from jitbpf.helpers import Helper
from jitbpf.isa import MASK64
from jitbpf.linux.maps import Array, HashMap
from jitbpf.sandbox import Pages
from jitbpf.vm import VM

BUFFER_BYTES = 1500  # an Ethernet MTU's worth of payload
MIX_HELPER_ID = 1000  # bench_mix registered with its C address: the JIT calls it directly
PY_HELPER_ID = 1001  # the same function registered in Python only: the JIT calls back into Python
MAP_ENTRIES = 256  # keys 0..255 in both map workloads
MAP_LOOKUP_ID = 1  # bpf_map_lookup_elem, as in Linux
PRANDOM_ID = 7  # bpf_get_prandom_u32
ARRAY_MAP, HASH_MAP = "bench_array", "bench_hash"
MAP_HANDLES = {ARRAY_MAP: 1, HASH_MAP: 2}  # fixed, so programs assemble before any VM exists


@dataclass(frozen=True)
class Scale:
    """Units of work per call: the interpreter gets a smaller dose of the same program than the JIT."""

    interp: int  # units per interpreter call
    jit: int  # units per JIT call, and per call of the C reference


@dataclass(frozen=True)
class NativeCall:
    """How to call the C reference: ``fn(*args)``, with the argument tuples used in turn."""

    fn: Callable[..., Any]  # a function of the cffi library
    args: list[tuple[Any, ...]]  # ready-made arguments (pointers already taken)


@dataclass
class Context:
    """What workloads share during one run: the native library, the maps, the standard helpers' addresses."""

    native: NativeLib
    _maps: dict[str, Any] = field(default_factory=dict)  # map name -> map, made on first use
    _std: dict[int, Helper] = field(default_factory=dict)  # the standard helpers, by id
    _pages: list[Pages] = field(default_factory=list)  # program memory handed to C references

    def program_memory(self, size: int) -> int:
        """The address of ``size`` zeroed bytes of program memory (sandbox pages, kept for the run)."""
        pages = Pages(size)
        self._pages.append(pages)
        return pages.address

    def maps(self) -> dict[str, Any]:
        """The two maps of the map workloads, filled with ``value(key) = key * 7 + 1``."""
        if not self._maps:
            array = Array(value_size=8, max_entries=MAP_ENTRIES, name=ARRAY_MAP)
            # Room to spare, as a hash map in use has: 256 keys in 1024 buckets.
            table = HashMap(key_size=4, value_size=8, max_entries=4 * MAP_ENTRIES, name=HASH_MAP)
            for key in range(MAP_ENTRIES):
                array.set(key, map_value(key))
                table[key] = map_value(key)
            self._maps = {ARRAY_MAP: array, HASH_MAP: table}
        return self._maps

    def std_helper(self, helper_id: int) -> Helper:
        """A standard helper (the C address of its twin is in ``native``), as a VM registers it."""
        if not self._std:
            with VM(assemble("mov r0, 0\nexit"), verify=False) as vm:
                vm.use_standard_helpers()
                self._std = dict(vm.helpers)
        return self._std[helper_id]


@dataclass(frozen=True)
class Workload:
    """One benchmark: the program, its inputs, its C twin, and how much work one call does.

    ``source(units)`` is the assembly of a program doing ``units`` units of work per call (a loop
    count baked in as an immediate), or the same text whatever ``units`` is when ``scales`` is off
    (one unit per call, such as one packet). The interpreter, the JIT and the C function all get
    the inputs in the same order and must return the same r0.
    """

    key: str  # JSON key
    title: str  # table row
    unit: str  # what one unit of work is
    source: Callable[[int], str]  # assembly text for a given number of units per call
    native: Callable[[Context, Sequence[bytearray], int], NativeCall]  # the C reference for those inputs
    full: Scale  # units per call in a full run
    quick: Scale  # units per call with --quick
    inputs: Callable[[], list[bytearray]] = list  # memory given to successive calls; none: called without
    helpers: Callable[[Context], list[Helper]] = lambda ctx: []  # helpers the program calls
    configure: Callable[[Context, VM], None] = lambda ctx, vm: None  # maps, standard helpers
    scales: bool = True  # the program's work grows with units
    loops: bool = True  # the program has a loop (run with allow_loops)
    bounded: bool = False  # its loop count is small enough for the verifier to walk: verified

    def scale(self, quick: bool) -> Scale:
        return self.quick if quick else self.full


# --- the programs ------------------------------------------------------------------------------------
# r1 = the buffer, r2 = its length (the VM's calling convention); loop counts are immediates.


def bytesum_source(passes: int) -> str:
    return f"""
    mov r0, 0
    mov r6, {passes}        ; passes over the buffer, all in this one call
pass:
    mov r3, r1              ; cursor
    mov r4, r1
    add r4, r2              ; end of the buffer
    jge r3, r4, next
byte:
    ldxb r5, [r3]
    add r0, r5
    add r3, 1
    jlt r3, r4, byte
next:
    sub r6, 1
    jne r6, 0, pass
    exit
"""


def fnv1a_source(passes: int) -> str:
    return f"""
    lddw r0, 0xcbf29ce484222325   ; FNV-1a offset basis; the hash carries over from pass to pass
    lddw r7, 0x100000001b3        ; FNV prime
    mov r6, {passes}
pass:
    mov r3, r1
    mov r4, r1
    add r4, r2
    jge r3, r4, next
byte:
    ldxb r5, [r3]
    xor r0, r5
    mul r0, r7
    add r3, 1
    jlt r3, r4, byte
next:
    sub r6, 1
    jne r6, 0, pass
    exit
"""


FILTER_SOURCE = """
    mov r0, 0
    jlt r2, 34, out           ; Ethernet header + minimal IPv4 header
    ldxh r3, [r1+12]
    jne r3, 0x0008, out       ; ethertype 0x0800 (big-endian on the wire)
    ldxb r4, [r1+14]
    mov r3, r4
    rsh r3, 4
    jne r3, 4, out            ; IP version 4
    and r4, 0x0f
    lsh r4, 2                 ; header length in bytes
    jlt r4, 20, out
    ldxb r3, [r1+23]
    jne r3, 6, out            ; protocol TCP
    ldxh r3, [r1+20]
    and r3, 0xff1f
    jne r3, 0, out            ; a later fragment has no TCP header
    mov r3, r4
    add r3, 18
    jgt r3, r2, out           ; room for both ports
    add r4, r1
    ldxh r3, [r4+16]
    jne r3, 0x5000, out       ; destination port 80
    mov r0, 1
out:
    exit
"""


def xorshift_source(iterations: int) -> str:
    return f"""
    lddw r0, 88172645463325252    ; Marsaglia's xorshift64 seed
    mov r7, 0                     ; sum of the sequence
    mov r6, {iterations}
loop:
    mov r3, r0
    lsh r3, 13
    xor r0, r3
    mov r3, r0
    rsh r3, 7
    xor r0, r3
    mov r3, r0
    lsh r3, 17
    xor r0, r3
    add r7, r0
    sub r6, 1
    jne r6, 0, loop
    mov r0, r7
    exit
"""


def helper_loop_source(helper_id: int) -> Callable[[int], str]:
    def source(calls: int) -> str:
        return f"""
    mov r7, 0
    mov r6, {calls}
loop:
    mov r1, r7
    mov r2, r6
    call {helper_id}          ; acc = helper(acc, i)
    mov r7, r0
    sub r6, 1
    jne r6, 0, loop
    mov r0, r7
    exit
"""

    return source


def u32_helper_loop_source(helper_id: int) -> Callable[[int], str]:
    """Calls a helper that returns random u32s; counts the results that fit in 32 bits (all)."""

    def source(calls: int) -> str:
        return f"""
    mov r7, 0
    mov r6, {calls}
loop:
    call {helper_id}
    rsh r0, 32
    jne r0, 0, skip           ; a result wider than 32 bits is not counted
    add r7, 1
skip:
    sub r6, 1
    jne r6, 0, loop
    mov r0, r7
    exit
"""

    return source


def map_loop_source(map_name: str) -> Callable[[int], str]:
    def source(lookups: int) -> str:
        return f"""
    mov r7, 0
    mov r6, {lookups}
loop:
    mov r3, r6
    mod r3, {MAP_ENTRIES}
    stxw [r10-4], r3          ; the key, on the stack
    lddw r1, map:{map_name}
    mov r2, r10
    add r2, -4
    call {MAP_LOOKUP_ID}      ; bpf_map_lookup_elem(map, &key)
    jeq r0, 0, skip
    ldxdw r3, [r0]
    add r7, r3
skip:
    sub r6, 1
    jne r6, 0, loop
    mov r0, r7
    exit
"""

    return source


EMPTY_SOURCE = """
    mov r0, 0
    exit
"""


# --- inputs and C references -------------------------------------------------------------------------


def payload() -> list[bytearray]:
    """1500 bytes that look like data (not all zeros, not a pattern the hash would shortcut)."""
    state = 0x2545F4914F6CDD1D
    out = bytearray()
    for _ in range(BUFFER_BYTES):
        state ^= state << 13 & MASK64
        state ^= state >> 7
        state ^= state << 17 & MASK64
        out.append(state & 0xFF)
    return [out]


def packets() -> list[bytearray]:
    return [bytearray(p.frame) for p in packet_mix()]


def _buffer_call(name: str) -> Callable[[Context, Sequence[bytearray], int], NativeCall]:
    def make(ctx: Context, inputs: Sequence[bytearray], units: int) -> NativeCall:
        lib = ctx.native
        return NativeCall(getattr(lib.lib, name), [(lib.pointer(b), len(b), units) for b in inputs])

    return make


def _filter_call(ctx: Context, inputs: Sequence[bytearray], units: int) -> NativeCall:
    lib = ctx.native
    return NativeCall(lib.lib.bench_filter, [(lib.pointer(b), len(b)) for b in inputs])


def _xorshift_call(ctx: Context, inputs: Sequence[bytearray], units: int) -> NativeCall:
    return NativeCall(ctx.native.lib.bench_xorshift, [(units,)])


def _helper_loop_call(ctx: Context, inputs: Sequence[bytearray], units: int) -> NativeCall:
    return NativeCall(ctx.native.lib.bench_helper_loop, [(ctx.native.address("bench_mix"), units)])


def _empty_call(ctx: Context, inputs: Sequence[bytearray], units: int) -> NativeCall:
    return NativeCall(ctx.native.lib.bench_zero, [()])


def _prandom_call(ctx: Context, inputs: Sequence[bytearray], units: int) -> NativeCall:
    return NativeCall(ctx.native.lib.bench_u32_helper_loop, [(ctx.std_helper(PRANDOM_ID).native, units)])


def _map_call(map_name: str) -> Callable[[Context, Sequence[bytearray], int], NativeCall]:
    def make(ctx: Context, inputs: Sequence[bytearray], units: int) -> NativeCall:
        lookup = ctx.std_helper(MAP_LOOKUP_ID).native
        key = ctx.program_memory(4)  # where the JIT's key lives too: the stack, in the sandbox
        return NativeCall(ctx.native.lib.bench_map_loop,
                          [(lookup, ctx.maps()[map_name].address, units, MAP_ENTRIES, key)])

    return make


def map_value(key: int) -> int:
    return key * 7 + 1


def _with_std_helpers(ctx: Context, vm: VM) -> None:
    vm.use_standard_helpers()


def _with_maps(ctx: Context, vm: VM) -> None:
    for name, m in ctx.maps().items():
        vm.add_map(m, MAP_HANDLES[name])
    vm.use_standard_helpers()


def mix(a: int, b: int, _c: int, _d: int, _e: int) -> int:
    """bench_mix of calls.c, in Python."""
    return ((a ^ (a >> 29)) * 0x9E3779B97F4A7C15 + b) & MASK64


def _native_mix(ctx: Context) -> list[Helper]:
    return [Helper(MIX_HELPER_ID, "bench_mix", mix, native=ctx.native.address("bench_mix"),
                   keepalive=(ctx.native,))]


def _python_mix(ctx: Context) -> list[Helper]:
    return [Helper(PY_HELPER_ID, "bench_mix_py", mix)]


BYTESUM = Workload(
    "bytesum", "byte sum", "1500-byte pass", bytesum_source, _buffer_call("bench_bytesum"),
    full=Scale(interp=4, jit=2000), quick=Scale(interp=1, jit=20), inputs=payload,
)
FNV1A = Workload(
    "fnv1a", "FNV-1a hash", "1500-byte pass", fnv1a_source, _buffer_call("bench_fnv1a"),
    full=Scale(interp=4, jit=2000), quick=Scale(interp=1, jit=20), inputs=payload,
)
FILTER = Workload(
    "filter", "packet filter", "packet", lambda units: FILTER_SOURCE, _filter_call,
    full=Scale(interp=1, jit=1), quick=Scale(interp=1, jit=1), inputs=packets, scales=False, loops=False,
)
XORSHIFT = Workload(
    "alu", "ALU loop (xorshift64)", "iteration", xorshift_source, _xorshift_call,
    full=Scale(interp=2000, jit=1_000_000), quick=Scale(interp=200, jit=10_000),
)
HELPER_NATIVE = Workload(
    "helper_native", "helper calls (C helper)", "call", helper_loop_source(MIX_HELPER_ID), _helper_loop_call,
    full=Scale(interp=2000, jit=1_000_000), quick=Scale(interp=200, jit=10_000), helpers=_native_mix,
)
HELPER_PYTHON = Workload(
    "helper_python", "helper calls (Python helper)", "call", helper_loop_source(PY_HELPER_ID), _helper_loop_call,
    full=Scale(interp=2000, jit=20_000), quick=Scale(interp=200, jit=1_000), helpers=_python_mix,
)
HELPER_STD = Workload(
    "helper_std", "helper calls (bpf_get_prandom_u32)", "call", u32_helper_loop_source(PRANDOM_ID), _prandom_call,
    full=Scale(interp=2000, jit=1_000_000), quick=Scale(interp=200, jit=10_000), configure=_with_std_helpers,
)
# Map lookups run verified (256 per call, a loop the verifier walks): only then do pointer-taking
# helpers run as C from JIT code (unverified programs reach them through checked Python).
ARRAY_LOOKUP = Workload(
    "array_lookup", "array map lookups", "lookup", map_loop_source(ARRAY_MAP), _map_call(ARRAY_MAP),
    full=Scale(interp=256, jit=256), quick=Scale(interp=256, jit=256), configure=_with_maps, bounded=True,
)
HASH_LOOKUP = Workload(
    "hash_lookup", "hash map lookups", "lookup", map_loop_source(HASH_MAP), _map_call(HASH_MAP),
    full=Scale(interp=256, jit=256), quick=Scale(interp=256, jit=256), configure=_with_maps, bounded=True,
)
EMPTY = Workload(
    "call_overhead", "call overhead (empty program)", "call", lambda units: EMPTY_SOURCE, _empty_call,
    full=Scale(interp=1, jit=1), quick=Scale(interp=1, jit=1), scales=False, loops=False,
)


def all_workloads(ctx: Context) -> list[Workload]:
    """Every workload, in table order."""
    return [BYTESUM, FNV1A, FILTER, XORSHIFT, HELPER_NATIVE, HELPER_PYTHON, HELPER_STD, ARRAY_LOOKUP, HASH_LOOKUP,
            EMPTY]
