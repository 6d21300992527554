"""Helper functions: how they are described, registered and called, and the helper set that the
public conformance suites expect (uBPF's test helpers)."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jitbpf.contract import CallbackKind
from jitbpf.contract import HelperExit as HelperExit  # re-exported: helpers raise it
from jitbpf.errors import ExecutionError
from jitbpf.isa import MASK64

if TYPE_CHECKING:
    from jitbpf.memory import MemoryMap

HelperFn = Callable[[int, int, int, int, int], int]


class ArgType(enum.Enum):
    """What a helper expects in one argument register (``Helper.args`` names them by value)."""

    SCALAR = "scalar"  # an initialised number
    ANYTHING = "anything"  # not checked at all; the helper gets whatever the register holds
    IGNORED = "ignored"  # not checked, and never read by the helper (a ctx some helpers take and drop)
    MAP = "map"  # a map pointer loaded by lddw (MAP_FD / MAP_IDX)
    KEY = "key"  # pointer to key_size initialised readable bytes of the previous MAP argument's map
    VALUE = "value"  # pointer to value_size initialised readable bytes of that map
    VALUE_OR_NULL = "value_or_null"  # as VALUE, or the constant 0 (an initial value a helper may take)
    MEM = "mem"  # pointer to initialised readable memory; its length is the next SIZE argument
    MEM_OR_NULL = "mem_or_null"  # as MEM, or NULL (the constant 0) when the size is 0
    SIZE = "size"  # bounded length of the previous MEM/UNINIT_MEM argument, never zero
    SIZE_OR_ZERO = "size_or_zero"  # as SIZE, but zero is allowed
    CTX = "ctx"  # the program's context pointer, unmodified
    UNINIT_MEM = "uninit_mem"  # pointer to writable memory the helper fills; length is the next size
    UNINIT_VALUE = "uninit_value"  # pointer to value_size writable bytes of that map, which the helper fills
    RELEASED = "released"  # an unmodified pointer a helper acquired (a ring buffer record): the call releases it
    UNINIT_LONG = "uninit_long"  # pointer to 8 writable bytes the helper fills (the kernel's ARG_PTR_TO_LONG)
    # as CTX, but the helper only reads the context, so packet pointers stay valid; not checked
    # in the raw-memory mode, which has no context
    CTX_READ = "ctx_read"
    CTX_OR_NULL = "ctx_or_null"  # as CTX_READ, or the constant 0
    ALLOC_SIZE = "alloc_size"  # a known constant: the size of the memory the helper returns (may be 0)
    ZERO = "zero"  # a number the verifier knows is 0 (flags reserved for later use)
    CALLBACK = "callback"  # the address of a function of the program (lddw rX, func:F), which the helper calls
    STACK_OR_NULL = "stack_or_null"  # a pointer into the stack, or the constant 0 (the context handed to a callback)
    # the bpf_spin_lock field of a map value (where the map's BTF puts it): the call takes the
    # lock, which the program must give back before it exits and calls nothing else meanwhile
    SPIN_LOCK = "spin_lock"
    SPIN_UNLOCK = "spin_unlock"  # the lock the program holds: the call gives it back
    TIMER = "timer"  # the struct bpf_timer of a map value, exactly where the map's value type has it
    # a function of the program the helper keeps, to call later with (map, key, value) of the
    # timer's map (verified apart: it must return 0)
    ASYNC_CALLBACK = "async_callback"
    BTF_OBJECT = "btf_object"  # a kernel object's pointer from a BTF-typed context, checked non-NULL (a seq_file)
    SOCK_COMMON = "sock_common"  # a socket: sock_common, sock or tcp_sock, checked non-NULL (ARG_PTR_TO_SOCK_COMMON)
    # the same, or a kernel object's pointer from a BTF-typed context (ARG_PTR_TO_BTF_ID_SOCK_COMMON)
    BTF_SOCK_COMMON = "btf_sock_common"
    BTF_SOCK_COMMON_OR_NULL = "btf_sock_common_or_null"  # as BTF_SOCK_COMMON, or the constant 0
    RELEASED_SOCK = "released_sock"  # a socket a lookup acquired, checked non-NULL: the call releases it
    SOCKET_OR_NULL = "socket_or_null"  # a full socket checked non-NULL, or the constant 0 (ARG_PTR_TO_SOCKET_OR_NULL)
    # A struct bpf_dynptr on the stack (16 bytes at an 8-aligned constant offset), which the
    # program may not read or write itself: one the helper initialises as a dynptr over memory
    # (it may hold none before, or an unreferenced one, which it replaces) or over a ring buffer
    # record (acquired: it must be submitted or discarded); an initialised one the helper reads;
    # and an initialised ring buffer one the call releases.
    NEW_LOCAL_DYNPTR = "new_local_dynptr"
    NEW_RINGBUF_DYNPTR = "new_ringbuf_dynptr"
    DYNPTR = "dynptr"
    RELEASED_DYNPTR = "released_dynptr"
    VALUE_MEM = "value_mem"  # as UNINIT_MEM, but a map value's memory only (bpf_dynptr_from_mem's data)


class RetType(enum.Enum):
    """What a helper leaves in r0 (``Helper.ret`` names it by value)."""

    SCALAR = "scalar"  # a number
    MAP_VALUE_OR_NULL = "map_value_or_null"  # a value of the map passed as r1, or 0 (an outer map: an inner map)
    MAP_VALUE = "map_value"  # a value of the map passed as r1, never 0 (cgroup storage)
    # memory of the ALLOC_SIZE argument's size, or 0; acquired: the program must pass it to a
    # RELEASED argument before it exits (a ring buffer record)
    ACQUIRED_MEM_OR_NULL = "acquired_mem_or_null"
    VOID = "void"  # nothing usable: r0 is unreadable afterwards
    # a count of bytes written, at most the largest value of the SIZE argument, or a negative
    # errno (-4095 at the lowest): bpf_get_stack, bpf_probe_read_str and the like
    LENGTH_OR_ERRNO = "length_or_errno"
    SOCKET_OR_NULL = "socket_or_null"  # a full socket (struct bpf_sock), or 0: bpf_get_listener_sock
    # the SOCK_COMMON argument seen as a full socket, or as a TCP socket (struct bpf_tcp_sock), or
    # 0: it holds the argument's reference, if any (the kernel's pointer casts)
    CAST_SOCKET_OR_NULL = "cast_socket_or_null"
    CAST_TCP_SOCK_OR_NULL = "cast_tcp_sock_or_null"
    # a socket a lookup found (full, or any), or 0; acquired: the program must pass it to a
    # RELEASED_SOCK argument before it exits
    ACQUIRED_SOCKET_OR_NULL = "acquired_socket_or_null"
    ACQUIRED_SOCK_COMMON_OR_NULL = "acquired_sock_common_or_null"
    # ALLOC_SIZE bytes of the DYNPTR argument's memory, or 0; it goes with the dynptr (released
    # or overwritten, the dynptr takes its slices along)
    DYNPTR_MEM_OR_NULL = "dynptr_mem_or_null"


# Arguments that carry a pointer the helper follows: a C helper trusts these, so it is called
# directly only where the verifier checked them.
POINTER_ARGS = frozenset({ArgType.MAP, ArgType.KEY, ArgType.VALUE, ArgType.VALUE_OR_NULL, ArgType.MEM,
                          ArgType.MEM_OR_NULL,
                          ArgType.UNINIT_MEM,
                          ArgType.UNINIT_VALUE, ArgType.UNINIT_LONG, ArgType.CTX, ArgType.CTX_READ, ArgType.CTX_OR_NULL,
                          ArgType.ANYTHING, ArgType.RELEASED, ArgType.SPIN_LOCK, ArgType.SPIN_UNLOCK,
                          ArgType.BTF_OBJECT, ArgType.SOCK_COMMON, ArgType.BTF_SOCK_COMMON,
                          ArgType.BTF_SOCK_COMMON_OR_NULL, ArgType.RELEASED_SOCK, ArgType.SOCKET_OR_NULL,
                          ArgType.NEW_LOCAL_DYNPTR, ArgType.NEW_RINGBUF_DYNPTR, ArgType.DYNPTR,
                          ArgType.RELEASED_DYNPTR, ArgType.VALUE_MEM, ArgType.STACK_OR_NULL})


MAX_ERRNO = 4095  # the most negative errno a helper returns


class LengthChecked:
    """A helper function whose result must be a length of at most its size argument, or a
    negative errno (``RetType.LENGTH_OR_ERRNO``): anything else is an error of the helper."""

    __slots__ = ("fn", "name", "size_arg")

    def __init__(self, fn: HelperFn, name: str, size_arg: int) -> None:
        self.fn, self.name, self.size_arg = fn, name, size_arg

    def __call__(self, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        got = int(self.fn(r1, r2, r3, r4, r5)) & MASK64
        size = (r1, r2, r3, r4, r5)[self.size_arg] & MASK64
        signed = got - (1 << 64) if got >> 63 else got
        if not -MAX_ERRNO <= signed <= size:
            raise ExecutionError(f"helper {self.name} returned {signed}, neither a length of at most {size} "
                                 "nor a negative errno")
        return got

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LengthChecked) and (self.fn, self.size_arg) == (other.fn, other.size_arg)

    def __hash__(self) -> int:
        return hash((self.fn, self.size_arg))

    def __reduce__(self) -> tuple[object, ...]:
        return LengthChecked, (self.fn, self.name, self.size_arg)


@dataclass(frozen=True)
class Helper:
    """A helper function callable from eBPF code with ``call ID``.

    ``fn`` takes r1-r5 as unsigned 64-bit ints and returns r0. ``args`` declares the argument
    types the verifier checks and ``ret`` what r0 holds: ``ArgType``/``RetType`` members or their
    values (``("map", "key")``), checked here; empty ``args`` means five unchecked arguments.
    ``signature`` gives them typed.
    ``native`` is the address of a C function with the same signature, when there is one: the JIT
    then calls it directly without entering Python. ``callback`` marks a helper whose second
    argument is a function of the program that the engines call (``contract.CallbackKind``).
    """

    id: int  # call number
    name: str  # for errors and listings
    fn: HelperFn  # Python implementation, used by the interpreter (and the JIT without native)
    args: tuple[ArgType | str, ...] = ()  # verifier argument kinds (members or their values)
    ret: RetType | str = RetType.SCALAR  # verifier return kind
    native: int = 0  # address of an equivalent C function, or 0
    keepalive: tuple[object, ...] = field(default=(), compare=False, repr=False)  # owners of native
    map_types: tuple[int, ...] = ()  # the map types its map argument takes (empty: any)

    def __post_init__(self) -> None:
        args, ret = self.signature  # names that are no argument or return type fail here, not at verification
        if ret is RetType.LENGTH_OR_ERRNO and not isinstance(self.fn, LengthChecked):
            # The verifier trusts the range, so every engine's call checks it (as C code cannot).
            if self.native:
                raise ValueError(f"helper {self.id} ({self.name}): a length_or_errno result is checked in "
                                 "Python: give no native function")
            sizes = [i for i, a in enumerate(args) if a in (ArgType.SIZE, ArgType.SIZE_OR_ZERO)]
            if not sizes:
                raise ValueError(f"helper {self.id} ({self.name}): a length_or_errno result needs a size argument")
            object.__setattr__(self, "fn", LengthChecked(self.fn, self.name, sizes[0]))

    @property
    def signature(self) -> tuple[tuple[ArgType, ...], RetType]:
        """The argument types of r1-r5 (five ``ANYTHING`` when ``args`` is empty) and the return type."""
        try:
            args = tuple(ArgType(a) for a in self.args[:5]) if self.args else (ArgType.ANYTHING,) * 5
            return args, RetType(self.ret)
        except ValueError as exc:
            raise ValueError(f"helper {self.id} ({self.name}): {exc}") from None
    # Set for helpers that call back into the program (bpf_loop, bpf_for_each_map_elem): the
    # engines run those themselves, and ``fn`` is never called.
    callback: CallbackKind | None = None


def conformance_helpers(memory: Callable[[], MemoryMap]) -> list[Helper]:
    """The helpers uBPF's test plugin provides (ids 0-5), which the conformance files call.

    ``memory`` returns the running program's MemoryMap (helpers 1 and 4 follow pointers).
    """

    def gather_bytes(a: int, b: int, c: int, d: int, e: int) -> int:
        return (a & 0xFF) << 32 | (b & 0xFF) << 24 | (c & 0xFF) << 16 | (d & 0xFF) << 8 | (e & 0xFF)

    def memfrob(ptr: int, n: int, _c: int, _d: int, _e: int) -> int:
        mm = memory()
        mm.write(ptr, bytes(x ^ 42 for x in mm.read(ptr, n)))
        return 0

    def no_op(_a: int, _b: int, _c: int, _d: int, _e: int) -> int:
        return 0

    def sqrti(a: int, _b: int, _c: int, _d: int, _e: int) -> int:
        return int(math.sqrt(float(a)))

    def strcmp_ext(a: int, b: int, _c: int, _d: int, _e: int) -> int:
        mm = memory()
        s1, s2 = mm.read_cstring(a), mm.read_cstring(b)
        for x, y in zip(s1 + b"\0", s2 + b"\0", strict=False):
            if x != y:
                return (x - y) & MASK64
        return 0

    def unwind(a: int, _b: int, _c: int, _d: int, _e: int) -> int:
        if a == 0:
            raise HelperExit(0)
        return a

    return [
        Helper(0, "gather_bytes", gather_bytes),
        Helper(1, "memfrob", memfrob, args=("mem", "size")),
        Helper(2, "no_op", no_op),
        Helper(3, "sqrti", sqrti),
        Helper(4, "strcmp_ext", strcmp_ext, args=("mem", "mem")),
        Helper(5, "unwind", unwind),
    ]
