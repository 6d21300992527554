"""Loading eBPF ELF objects built by clang ``-target bpf``: programs, maps, global data and relocations."""

from __future__ import annotations

import bisect
import enum
import io
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from jitbpf.errors import BpfError, ElfError, VerifierError
from jitbpf.isa import OPCODE_CALL, OPCODE_LDDW, SLOT_SIZE, CallSrc, PseudoSrc
from jitbpf.linux.programs import (
    PROGRAM_TYPES,
    AttachType,
    ProgType,
    program_type,
    section_attach_type,
    section_program_type,
)

if TYPE_CHECKING:
    from jitbpf.linux.btfctx import BtfTypes
    from jitbpf.vm import VM

EM_BPF = 247  # e_machine of eBPF objects
LDDW = OPCODE_LDDW
CALL = OPCODE_CALL
BPF_F_RDONLY_PROG = 0x80  # map flag: the program may not write the map (.rodata)
DATA_SECTIONS = (".data", ".rodata", ".bss")  # global data sections (and their ".name.*" variants)
MAX_GLOBAL_DATA = 1 << 24  # bytes of one global data section


class Reloc(enum.IntEnum):
    """eBPF relocation types (``R_BPF_*``)."""

    NONE = 0  # nothing to do
    R_BPF_64_64 = 1  # lddw: 64-bit address of a map or of global data
    R_BPF_64_ABS64 = 2  # 64-bit data address (debug info, BTF)
    R_BPF_64_ABS32 = 3  # 32-bit data address (debug info)
    R_BPF_64_NODYLD32 = 4  # 32-bit address ignored by dynamic loaders (.BTF.ext)
    R_BPF_64_32 = 10  # call: pc-relative offset of a bpf-to-bpf callee


class RelocTarget(enum.Enum):
    """What a relocation in code refers to."""

    KCONFIG = "__kconfig extern"  # an undefined symbol libbpf places in .kconfig
    FUNCTION = "function"  # a symbol in a code section: a callee, or a callback's address
    DATA = "global variable"  # a symbol in .data/.rodata/.bss (an array map's value)
    MAP = "map"  # a map definition in .maps (or the legacy maps section)


@dataclass(frozen=True)
class RelocRule:
    """How one kind of relocation is applied: on which instruction, by which loader method."""

    opcode: int  # the instruction it must be on
    insn: str  # that instruction, for errors
    apply: str  # the _Loader method that patches it
    call_src: int | None = None  # for calls: the src field the call must have


RELOCATIONS: Mapping[tuple[Reloc, RelocTarget], RelocRule] = MappingProxyType({
    (Reloc.R_BPF_64_64, RelocTarget.KCONFIG): RelocRule(OPCODE_LDDW, "an lddw instruction", "_reloc_kconfig"),
    (Reloc.R_BPF_64_64, RelocTarget.FUNCTION): RelocRule(OPCODE_LDDW, "an lddw instruction",
                                                         "_reloc_function_address"),
    (Reloc.R_BPF_64_64, RelocTarget.DATA): RelocRule(OPCODE_LDDW, "an lddw instruction", "_reloc_data"),
    (Reloc.R_BPF_64_64, RelocTarget.MAP): RelocRule(OPCODE_LDDW, "an lddw instruction", "_reloc_map"),
    (Reloc.R_BPF_64_32, RelocTarget.FUNCTION): RelocRule(OPCODE_CALL, "a bpf-to-bpf call instruction", "_reloc_call",
                                                         call_src=CallSrc.LOCAL),
})
"""The relocations clang emits in code, keyed by type and by what the symbol is."""


@dataclass(frozen=True)
class _Site:
    """One relocation being applied: the linked code, the instruction and what it refers to."""

    out: bytearray  # the linked program
    pc: int  # the instruction's slot in it
    dst: int  # its dst register
    sym: _Symbol  # the relocation's symbol
    label: str  # the symbol's name for errors
    offset: int  # the target offset in the symbol's section
    imm: int  # the instruction's immediate before patching
    sec: _Section  # the code section the relocation is in
    where: str  # the relocation's location, for errors
    place: Any  # places a function in the linked program, returning its first slot


class BtfKind(enum.IntEnum):
    """BTF type kinds (``BTF_KIND_*``)."""

    UNKN = 0  # void
    INT = 1  # integer
    PTR = 2  # pointer
    ARRAY = 3  # array
    STRUCT = 4  # struct
    UNION = 5  # union
    ENUM = 6  # 32-bit enum
    FWD = 7  # forward declaration
    TYPEDEF = 8  # typedef
    VOLATILE = 9  # volatile qualifier
    CONST = 10  # const qualifier
    RESTRICT = 11  # restrict qualifier
    FUNC = 12  # function
    FUNC_PROTO = 13  # function prototype
    VAR = 14  # variable
    DATASEC = 15  # section of variables
    FLOAT = 16  # floating point
    DECL_TAG = 17  # declaration tag
    TYPE_TAG = 18  # type tag
    ENUM64 = 19  # 64-bit enum


@dataclass(frozen=True)
class BtfType:
    """One BTF type record: its kind, name, size-or-type word and kind-specific members."""

    kind: BtfKind  # BTF_KIND_*
    name: str  # name, "" when anonymous
    size_or_type: int  # size for INT/STRUCT/UNION/ENUM/DATASEC/FLOAT, referenced type id otherwise
    # STRUCT/UNION (name, type, bit offset); DATASEC ("", type, offset); FUNC_PROTO (name, type, 0) per parameter
    members: tuple[tuple[str, int, int], ...] = ()
    array: tuple[int, int] = (0, 0)  # ARRAY: (element type, number of elements)
    # INT: BTF_INT_SIGNED (1), CHAR (2), BOOL (4); ENUM/ENUM64: 1 if signed; STRUCT/UNION: kind_flag;
    # FUNC: linkage (0 static, 1 global, 2 extern); DECL_TAG: the parameter tagged (-1: the declaration)
    encoding: int = 0
    enumerators: tuple[tuple[str, int], ...] = ()  # ENUM/ENUM64: (name, value), values as declared


_MODIFIERS = (BtfKind.TYPEDEF, BtfKind.VOLATILE, BtfKind.CONST, BtfKind.RESTRICT, BtfKind.TYPE_TAG)


class Btf:
    """The types of a ``.BTF`` section, read far enough for BTF-defined maps."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise ElfError("BTF header is truncated", section=".BTF")
        magic, version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != 0xEB9F:
            raise ElfError(f"bad BTF magic {magic:#x}", section=".BTF")
        if version != 1:
            raise ElfError(f"unsupported BTF version {version}", section=".BTF")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        types_at, strs_at = hdr_len + type_off, hdr_len + str_off
        if types_at + type_len > len(data) or strs_at + str_len > len(data):
            raise ElfError("BTF type or string data extends past the section", section=".BTF")
        self._strings = data[strs_at : strs_at + str_len]
        self.types: list[BtfType] = [BtfType(BtfKind.UNKN, "", 0)]
        self._parse(data[types_at : types_at + type_len])

    def string(self, off: int) -> str:
        """The string at this offset of the string table (also names ``.BTF.ext`` records)."""
        return self._str(off)

    def _str(self, off: int) -> str:
        if off >= len(self._strings) and off:
            raise ElfError(f"BTF string offset {off} out of range", section=".BTF")
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else len(self._strings)].decode("utf-8", "replace")

    def _parse(self, blob: bytes) -> None:
        pos = 0
        while pos < len(blob):
            if pos + 12 > len(blob):
                raise ElfError("BTF type record is truncated", section=".BTF")
            name_off, info, size_or_type = struct.unpack_from("<III", blob, pos)
            pos += 12
            vlen, raw_kind = info & 0xFFFF, (info >> 24) & 0x1F
            try:
                kind = BtfKind(raw_kind)
            except ValueError:
                raise ElfError(f"unknown BTF kind {raw_kind}", section=".BTF") from None
            members: tuple[tuple[str, int, int], ...] = ()
            array = (0, 0)
            extra = {BtfKind.INT: 4, BtfKind.ARRAY: 12, BtfKind.STRUCT: 12 * vlen, BtfKind.UNION: 12 * vlen,
                     BtfKind.ENUM: 8 * vlen, BtfKind.FUNC_PROTO: 8 * vlen, BtfKind.VAR: 4,
                     BtfKind.DATASEC: 12 * vlen, BtfKind.DECL_TAG: 4, BtfKind.ENUM64: 12 * vlen}.get(kind, 0)
            if pos + extra > len(blob):
                raise ElfError(f"BTF type {len(self.types)} is truncated", section=".BTF")
            encoding = 0
            enumerators: tuple[tuple[str, int], ...] = ()
            if kind is BtfKind.INT:
                encoding = struct.unpack_from("<I", blob, pos)[0] >> 24
            elif kind in (BtfKind.ENUM, BtfKind.ENUM64, BtfKind.STRUCT, BtfKind.UNION):
                encoding = info >> 31  # kind_flag: the enum is signed, the members' offsets hold bitfield sizes
            elif kind is BtfKind.FUNC:
                encoding = vlen
            elif kind is BtfKind.DECL_TAG:
                encoding = struct.unpack_from("<i", blob, pos)[0]
            if kind in (BtfKind.ENUM, BtfKind.ENUM64):
                enumerators = tuple(self._enumerator(kind, blob, pos, i, encoding) for i in range(vlen))
            if kind is BtfKind.ARRAY:
                elem, _index, nelems = struct.unpack_from("<III", blob, pos)
                array = (elem, nelems)
            elif kind in (BtfKind.STRUCT, BtfKind.UNION, BtfKind.DATASEC):
                rows = [struct.unpack_from("<III", blob, pos + 12 * i) for i in range(vlen)]
                if kind is BtfKind.DATASEC:
                    members = tuple(("", t, off) for t, off, _size in rows)
                else:
                    members = tuple((self._str(n), t, off) for n, t, off in rows)
            elif kind is BtfKind.FUNC_PROTO:
                params = [struct.unpack_from("<II", blob, pos + 8 * i) for i in range(vlen)]
                members = tuple((self._str(n), t, 0) for n, t in params)
            pos += extra
            self.types.append(BtfType(kind, self._str(name_off), size_or_type, members, array, encoding, enumerators))

    def _enumerator(self, kind: BtfKind, blob: bytes, pos: int, index: int, signed: int) -> tuple[str, int]:
        if kind is BtfKind.ENUM:
            name_off, value = struct.unpack_from("<Ii" if signed else "<II", blob, pos + 8 * index)
            return self._str(name_off), value
        name_off, lo, hi = struct.unpack_from("<III", blob, pos + 12 * index)
        value = hi << 32 | lo
        return self._str(name_off), value - (1 << 64) if signed and value >> 63 else value

    def get(self, type_id: int) -> BtfType:
        """The type with this id (ElfError when it does not exist)."""
        if not 0 <= type_id < len(self.types):
            raise ElfError(f"BTF type id {type_id} does not exist", section=".BTF")
        return self.types[type_id]

    def resolve(self, type_id: int) -> tuple[int, BtfType]:
        """Follow typedefs and qualifiers to the underlying type."""
        for _ in range(64):
            t = self.get(type_id)
            if t.kind not in _MODIFIERS:
                return type_id, t
            type_id = t.size_or_type
        raise ElfError("BTF typedef chain too long (a loop?)", section=".BTF")

    def size_of(self, type_id: int, depth: int = 0) -> int:
        """Byte size of a type, as the C compiler laid it out."""
        if depth > 32:
            raise ElfError("BTF type nesting too deep", section=".BTF")
        _, t = self.resolve(type_id)
        if t.kind in (BtfKind.INT, BtfKind.STRUCT, BtfKind.UNION, BtfKind.ENUM, BtfKind.ENUM64, BtfKind.FLOAT,
                      BtfKind.DATASEC):
            return t.size_or_type
        if t.kind is BtfKind.PTR:
            return 8
        if t.kind is BtfKind.ARRAY:
            return t.array[1] * self.size_of(t.array[0], depth + 1)
        raise ElfError(f"BTF type {t.kind.name} {t.name!r} has no size", section=".BTF")

    def find(self, kind: BtfKind, name: str) -> BtfType | None:
        """The first type of this kind and name."""
        for t in self.types:
            if t.kind is kind and t.name == name:
                return t
        return None


@dataclass(frozen=True)
class MapDef:
    """A map as the object declares it (before it is created)."""

    name: str  # the map's symbol name, or the data section's name
    map_type: int  # BPF_MAP_TYPE_*
    key_size: int  # bytes per key
    value_size: int  # bytes per value
    max_entries: int  # capacity
    flags: int  # BPF_F_* creation flags
    section: str  # where it was declared: ".maps", "maps", ".data", ".rodata", ".bss", ...
    origin: str  # "btf", "legacy" or "data"
    initial: bytes | None = None  # contents of a global-data map (its single value)
    extra: int = 0  # map_extra (a bloom filter's number of hash functions)
    inner: MapDef | None = None  # the inner map template of a map of maps (``__array(values, struct ...)``)


@dataclass(frozen=True)
class _Symbol:
    index: int  # position in the symbol table
    name: str  # symbol name ("" for section symbols)
    value: int  # st_value: offset in its section
    size: int  # st_size
    kind: str  # STT_* type
    shndx: int | None  # section index, None when undefined or special (ABS, COMMON)
    weak: bool = False  # STB_WEAK: an extern that may stay unresolved (it reads 0)


@dataclass(frozen=True)
class _Section:
    index: int  # section header index
    name: str  # section name
    kind: str  # SHT_* type
    flags: int  # SHF_* flags
    size: int  # sh_size
    link: int  # sh_link
    info: int  # sh_info
    data: bytes  # contents (zeros for NOBITS)

    @property
    def executable(self) -> bool:
        return self.kind == "SHT_PROGBITS" and bool(self.flags & 0x4) and self.size > 0


@dataclass(frozen=True)
class _Func:
    section: int  # index of its section
    start: int  # first instruction slot in the section
    count: int  # number of slots
    name: str  # symbol name


@dataclass(frozen=True)
class _Rel:
    offset: int  # byte offset in the code section
    symbol: int  # symbol table index
    kind: int  # R_BPF_* type


class ElfProgram:
    """One program of an ELF object: its code (relocated and linked) and program type.

    ``vm()`` builds a VM for it that shares the object's maps; ``run(...)`` runs it with the
    runner of its program type (``run_xdp`` for XDP, ...) in a VM kept for that purpose.
    """

    def __init__(self, obj: ElfObject, name: str, section: str, prog_type: ProgType, code: bytes,
                 core_failures: Mapping[int, str] | None = None, *, unavailable: str = "",
                 functions: Mapping[int, str] | None = None) -> None:
        self.obj = obj
        self.functions = dict(functions or {})  # entry slot -> name of each function linked after the first
        self.unavailable = unavailable  # why the program cannot run here (it uses kernel symbols), if so
        self.core_failures = dict(core_failures or {})  # pc -> the CO-RE relocation that poisoned it
        self.name = name
        self.section = section
        self.prog_type = prog_type
        self.code = code
        self._default: dict[str, VM] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The VM ``run`` keeps is remade on first use in the receiving process.
        return {**vars(self), "_default": {}}

    def __repr__(self) -> str:
        return (f"ElfProgram({self.name!r}, section={self.section!r}, prog_type={self.prog_type.name}, "
                f"insns={len(self.code) // SLOT_SIZE})")

    @property
    def program_type_name(self) -> str:
        """The short name of the program type ("xdp", "socket_filter", ...; "" when none)."""
        info = PROGRAM_TYPES.get(self.prog_type)
        return info.name if info is not None else ""

    @property
    def attach_type(self) -> AttachType:
        """The attach type libbpf loads the program with, from its section (fexit -> TRACE_FEXIT)."""
        return section_attach_type(self.section)

    def vm(self, **kwargs: Any) -> VM:
        """A new VM running this program, with the object's maps and the type's helpers (and, as
        the kernel, bounded loops allowed unless ``allow_loops=False``)."""
        from jitbpf.vm import VM

        if self.unavailable:
            raise ElfError(f"program {self.name!r}: {self.unavailable}", section=self.section)
        if self.prog_type is not ProgType.UNSPEC:
            kwargs.setdefault("prog_type", self.prog_type)
        # The kernel verifies bounded loops (for the privileged loader jitbpf models): C programs
        # written for it use them (a for loop over a few entries), so they are accepted here too.
        kwargs.setdefault("allow_loops", True)
        info = PROGRAM_TYPES.get(program_type(kwargs["prog_type"])) if kwargs.get("prog_type") is not None else None
        if info is not None:
            kwargs.setdefault("attach", self.section)  # its attach type: BTF-typed context, return values
        if self.obj.btf is not None and "functions" not in kwargs:
            from jitbpf.linux.subprogs import global_functions

            kwargs["functions"] = global_functions(self.obj.btf, self.functions, info.ctx_struct if info else "")
        if info is not None and info.btf_typed:
            if kwargs.get("btf") is None:
                kwargs["btf"] = self.obj.target_types(f"program {self.name!r} ({self.section})")
        elif self.section != ".text" and kwargs.get("prog_type") is None and kwargs.get("verify", True):
            # A section libbpf does not know: verified as plain memory, an accept would mean
            # nothing about the hook it was written for. (.text-only objects are plain programs.)
            raise ElfError(f"program {self.name!r}: section {self.section!r} names no program type; "
                           "give one (load_elf(..., prog_type=...) or vm(prog_type=...)) or "
                           "run it unverified (vm(verify=False))", section=self.section)
        vm = VM(self.code, **kwargs)
        use_standard = getattr(vm, "use_standard_helpers", None)
        if kwargs.get("prog_type") is None and use_standard is not None:
            use_standard()
        self.obj.attach(vm)
        try:
            if self.core_failures:
                vm.check()  # now, so that a failed CO-RE relocation is named where the program is loaded
        except VerifierError as exc:
            why = self.core_failures.get(exc.pc) if exc.pc is not None else None
            if why is None:
                raise
            raise VerifierError(f"{why} (the instruction can run, so the program cannot load)", pc=exc.pc,
                                insn=exc.insn, log=exc.log) from exc
        return vm

    def run(self, *args: Any, engine: str = "interp", **kwargs: Any) -> Any:
        """Run with the runner of the program type: ``run(packet)`` for XDP returns (action, packet), ...

        A program without a type runs as ``execute(mem)``; see ``VM.run_*`` for each type's arguments.
        """
        vm = self._default.get("vm")
        if vm is None:
            vm = self._default["vm"] = self.vm()
        runner = RUNNERS.get(self.prog_type)
        if runner is None:
            if engine == "jit":
                return vm.execute_jit(*args, **kwargs)
            return vm.execute(*args, **kwargs)
        return getattr(vm, runner)(*args, engine=engine, **kwargs)


RUNNERS: Mapping[ProgType, str] = MappingProxyType({
    ProgType.SOCKET_FILTER: "run_socket_filter",
    ProgType.KPROBE: "run_kprobe",
    ProgType.SCHED_CLS: "run_tc",
    ProgType.SCHED_ACT: "run_tc",
    ProgType.TRACEPOINT: "run_tracepoint",
    ProgType.RAW_TRACEPOINT: "run_tracepoint",
    ProgType.XDP: "run_xdp",
    ProgType.PERF_EVENT: "run_perf_event",
    ProgType.CGROUP_SKB: "run_cgroup_skb",
    ProgType.LWT_IN: "run_lwt",
    ProgType.LWT_OUT: "run_lwt",
    ProgType.LWT_XMIT: "run_lwt",
    ProgType.CGROUP_SOCK: "run_cgroup_sock",
    ProgType.SOCK_OPS: "run_sock_ops",
    ProgType.SK_SKB: "run_sk_skb",
    ProgType.CGROUP_DEVICE: "run_cgroup_device",
    ProgType.SK_MSG: "run_sk_msg",
    ProgType.CGROUP_SOCK_ADDR: "run_sock_addr",
    ProgType.CGROUP_SYSCTL: "run_sysctl",
    ProgType.CGROUP_SOCKOPT: "run_sockopt",
    ProgType.RAW_TRACEPOINT_WRITABLE: "run_tracepoint",
    ProgType.TRACING: "run_tracing",
    ProgType.LSM: "run_tracing",
    ProgType.NETFILTER: "run_tracing",
    ProgType.STRUCT_OPS: "run_tracing",
    ProgType.EXT: "run_tracing",
})  # the VM method that runs each program type


class _KernelSymbol(ElfError):
    """A program refers to a kernel function or variable (``__ksym``): it cannot run here."""


@dataclass
class ElfObject:
    """A loaded ELF object: its programs (by function name), maps (by name) and license."""

    name: str  # file name, or "<bytes>"
    programs: dict[str, ElfProgram] = field(default_factory=dict)  # function name -> program
    maps: dict[str, Any] = field(default_factory=dict)  # map name -> jitbpf.linux.maps map object
    map_defs: dict[str, MapDef] = field(default_factory=dict)  # map name -> its declaration
    map_handles: dict[str, int] = field(default_factory=dict)  # map name -> handle used in the code
    license: str = ""  # the "license" section
    kern_version: int = 0  # the "version" section, when present
    btf: Btf | None = None  # the object's BTF, when it has some
    variables: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # global -> (map, offset, size)
    # What BTF-typed programs' contexts are typed by: load_elf's btf= (None: the running kernel's).
    target_btf: Btf | str | os.PathLike[str] | bytes | None = None
    _types: BtfTypes | None = field(default=None, repr=False, compare=False)

    def target_types(self, what: str) -> BtfTypes:
        """The target BTF (read once), for the contexts of BTF-typed programs."""
        if self._types is None:
            from jitbpf.linux.programs import btf_types

            self._types = btf_types(self.target_btf, what)
        return self._types

    def variable(self, name: str) -> memoryview:
        """The live bytes of a global variable (in ``.data``, ``.rodata``, ``.bss``), to read or set
        (set ``.rodata`` before the programs run, as libbpf's skeletons do)."""
        if name not in self.variables:
            known = ", ".join(self.variables) or "none"
            raise ElfError(f"no global variable {name!r} in {self.name} (globals: {known})")
        map_name, offset, size = self.variables[name]
        view: memoryview = self.maps[map_name].view(0)
        return view[offset : offset + size]

    def program(self, key: str) -> ElfProgram:
        """A program by function name, or by section name when that section holds exactly one."""
        if key in self.programs:
            return self.programs[key]
        matches = [p for p in self.programs.values() if p.section == key]
        if len(matches) == 1:
            return matches[0]
        if matches:
            names = ", ".join(p.name for p in matches)
            raise ElfError(f"several programs ({names}): choose one by name", section=key)
        known = ", ".join(f"{p.name} ({p.section})" for p in self.programs.values()) or "none"
        raise ElfError(f"no program or section named {key!r} in {self.name} (programs: {known})")

    def sections(self) -> dict[str, list[ElfProgram]]:
        """Programs grouped by section name."""
        out: dict[str, list[ElfProgram]] = {}
        for p in self.programs.values():
            out.setdefault(p.section, []).append(p)
        return out

    def attach(self, vm: VM) -> None:
        """Give ``vm`` this object's maps under the handles its programs' code uses."""
        for name, m in self.maps.items():
            vm.add_map(m, handle=self.map_handles[name])

    def __getitem__(self, map_name: str) -> Any:
        """A map by name, as bcc's ``b["MAP"]``; the KeyError lists the object's maps."""
        try:
            return self.maps[map_name]
        except KeyError:
            raise KeyError(f"no map {map_name!r} in {self.name} (maps: {', '.join(self.maps) or 'none'})") from None


# -- loading ---------------------------------------------------------------------------------------


def load_elf(source: str | os.PathLike[str] | bytes | bytearray | memoryview, *, name: str | None = None,
             create_maps: bool = True, prog_type: ProgType | int | str | None = None,
             kconfig: Mapping[str, int | bool | str] | None = None,
             btf: Btf | str | os.PathLike[str] | bytes | None = None,
             map_settings: Mapping[str, Mapping[str, int]] | None = None) -> ElfObject:
    """Load an eBPF ELF object (a path or its bytes): programs, maps, global data, relocations.

    Every problem with the object raises ``ElfError`` naming the section or relocation at fault.
    With ``create_maps`` off, maps are described (``map_defs``) but not created. ``prog_type``
    types the programs whose section names no program type (as libbpf's
    ``bpf_program__set_type``); without it such programs have none, and ``vm()`` refuses them.

    ``__kconfig`` externs take their values from ``kconfig`` (``CONFIG_*`` names: ``True``/``"y"``,
    ``"m"``, ``False``/``"n"``, an integer, or a string for a char array), then from libbpf's
    defaults (see ``kconfig_defaults``); a weak extern found in neither reads 0, a strong one is
    an ElfError naming it. They live, as with libbpf, in a read-only ``.kconfig`` map.

    CO-RE relocations (``.BTF.ext``) are resolved against ``btf`` (a ``Btf``, a raw BTF file's
    path or bytes), else the running kernel's ``/sys/kernel/btf/vmlinux`` when readable, else the
    object's own BTF (the layout it was compiled against). One that cannot be resolved poisons
    its instruction (see ``jitbpf.linux.core``); ``ElfProgram.core_failures`` lists them.

    ``map_settings`` changes maps before they are created, as a libbpf loader does with
    ``bpf_map__set_max_entries`` and friends: by map name, any of ``max_entries``, ``key_size``,
    ``value_size``, ``flags`` and ``map_type`` (libbpf-tools size their stack maps so).
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        label = name or "<bytes>"
    else:
        path = os.fspath(source)
        label = name or os.path.basename(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ElfError(f"cannot read {path}: {exc.strerror or exc}") from exc
    default = program_type(prog_type) if prog_type is not None else ProgType.UNSPEC
    values = {**kconfig_defaults(), **(kconfig or {})}
    loader = _Loader(data, label, create_maps, default, values, btf)
    loader.map_settings = dict(map_settings or {})
    return loader.load()


VMLINUX_BTF = "/sys/kernel/btf/vmlinux"  # the running kernel's BTF


def _target_btf(btf: Btf | str | os.PathLike[str] | bytes | None) -> Btf | None:
    """The BTF CO-RE relocations are resolved against (None: the object's own)."""
    if isinstance(btf, Btf):
        return btf
    if isinstance(btf, bytes):
        return Btf(btf)
    path = os.fspath(btf) if btf is not None else VMLINUX_BTF
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        if btf is None:
            return None
        raise ElfError(f"cannot read the target BTF {path}: {exc.strerror or exc}") from exc
    return Btf(raw)


def kconfig_defaults() -> dict[str, int | bool | str]:
    """The ``__kconfig`` values libbpf supplies itself: ``LINUX_KERNEL_VERSION`` as
    ``KERNEL_VERSION(a, b, c)`` of the running kernel's release (0 when it cannot be parsed),
    ``LINUX_HAS_SYSCALL_WRAPPER`` 1 (x86-64 kernels since 4.17 wrap system calls) and
    ``LINUX_HAS_BPF_COOKIE`` 1."""
    parts = [int(p) if p.isdigit() else 0 for p in os.uname().release.split("-", 1)[0].split(".")[:3]]
    a, b, c = [*parts, 0, 0, 0][:3]
    return {"LINUX_KERNEL_VERSION": a << 16 | b << 8 | min(c, 255), "LINUX_HAS_SYSCALL_WRAPPER": 1,
            "LINUX_HAS_BPF_COOKIE": 1}


_TRISTATE = {"n": 0, "y": 1, "m": 2}  # libbpf's enum libbpf_tristate


def _kconfig_size(name: str, btf: Btf, type_id: int) -> int:
    """The size of a ``__kconfig`` extern of this BTF type, which must be one libbpf supports: a
    1, 2, 4 or 8-byte integer or enum (bool and tristate too), or a char array (a string)."""
    _, t = btf.resolve(type_id)
    size = btf.size_of(type_id)
    if t.kind is BtfKind.ARRAY:
        if not 0 < size <= MAX_GLOBAL_DATA or btf.size_of(t.array[0]) != 1:
            raise ElfError(f"__kconfig extern {name} is an array of {size} bytes: only char arrays of at most "
                           f"{MAX_GLOBAL_DATA} bytes are supported", section=".kconfig")
    elif t.kind not in (BtfKind.INT, BtfKind.ENUM, BtfKind.ENUM64) or size not in (1, 2, 4, 8):
        raise ElfError(f"__kconfig extern {name} has an unsupported type ({t.kind.name}, {size} bytes)",
                       section=".kconfig")
    return size


def _kconfig_bytes(name: str, value: int | bool | str, btf: Btf, type_id: int, size: int) -> bytes:
    """The bytes of one ``__kconfig`` extern of this BTF type, as libbpf encodes them."""
    _, t = btf.resolve(type_id)
    if t.kind is BtfKind.ARRAY:
        if not isinstance(value, str):
            raise ElfError(f"__kconfig extern {name} is a char array: give it a string, not {value!r}",
                           section=".kconfig")
        raw = value.encode()
        return raw[: size - 1].ljust(size, b"\0")
    if isinstance(value, str):
        number = _TRISTATE.get(value)
        if number is None:
            # (A number as libbpf reads one: an optional minus, then ASCII digits only.)
            digits = value.removeprefix("-")
            if not (digits.isascii() and digits.isdigit()):
                raise ElfError(f"__kconfig extern {name}: value {value!r} is not y, m, n or a number",
                               section=".kconfig")
            number = int(value)
    else:
        number = int(value)
    if t.kind not in (BtfKind.INT, BtfKind.ENUM, BtfKind.ENUM64) or size not in (1, 2, 4, 8):
        raise ElfError(f"__kconfig extern {name} has an unsupported type ({t.kind.name}, {size} bytes)",
                       section=".kconfig")
    return (number & ((1 << 8 * size) - 1)).to_bytes(size, "little")


def _libbpf_defaults(spec: MapDef) -> MapDef:
    """What libbpf fills in before creating a map: a perf event array declared without sizes gets
    4-byte keys and values and one slot per CPU."""
    from jitbpf.linux.maps import MapType, num_cpus

    if spec.map_type != MapType.PERF_EVENT_ARRAY:
        return spec
    return replace(spec, key_size=spec.key_size or 4, value_size=spec.value_size or 4,
                   max_entries=spec.max_entries or num_cpus())


class _Loader:
    def __init__(self, data: bytes, label: str, create_maps: bool, default_type: ProgType,
                 kconfig: Mapping[str, int | bool | str], target_btf: Btf | str | os.PathLike[str] | bytes | None
                 ) -> None:
        self.data = data
        self.target_btf = target_btf  # what CO-RE relocations resolve against (see load_elf)
        self.poisoned: dict[tuple[int, int], str] = {}  # (code section, slot) -> failed CO-RE relocation
        self.kconfig = kconfig  # values of __kconfig externs
        self.externs: dict[str, int] = {}  # __kconfig extern -> its offset in the .kconfig map
        self.default_type = default_type  # the type of programs whose section names none
        self.obj = ElfObject(label, target_btf=target_btf)
        self.create_maps = create_maps
        self.where: str | None = None  # section being read, for errors from pyelftools
        self.sections: list[_Section] = []
        self.symbols: list[_Symbol] = []
        self.funcs: dict[int, list[_Func]] = {}  # section index -> functions, by start
        self._func_starts: dict[int, list[int]] = {}  # ... and their starts (see _function_at)
        self.relocs: dict[int, dict[int, _Rel]] = {}  # code section index -> offset -> relocation
        self.map_at: dict[tuple[int, int], str] = {}  # (section index, offset) -> map name
        self.data_maps: dict[int, str] = {}  # data section index -> map name
        self.map_extent: dict[str, tuple[int, int]] = {}  # BTF map name -> (offset, size) in .maps
        self.values_off: dict[str, int] = {}  # BTF map name -> byte offset of its ".values" initialiser
        self.maps_relocs: list[tuple[int, int]] = []  # (offset in .maps, symbol) of .values entries
        self.map_settings: dict[str, Mapping[str, int]] = {}  # map name -> fields to change before creation

    @contextmanager
    def _guard(self, section: str | None) -> Iterator[None]:
        """Turn whatever pyelftools or struct raise on a malformed object into an ElfError."""
        previous, self.where = self.where, section
        try:
            yield
        except BpfError:
            raise
        except Exception as exc:  # pyelftools raises many kinds on corrupt input
            detail = str(exc) or type(exc).__name__
            raise ElfError(f"malformed ELF object: {detail}", section=section) from exc
        finally:
            self.where = previous

    def load(self) -> ElfObject:
        self._check_header()
        with self._guard(None):
            elf = ELFFile(io.BytesIO(self.data))
            machine = elf.header["e_machine"]
            if machine != "EM_BPF" and machine != EM_BPF:
                raise ElfError(f"wrong machine {machine}: not an eBPF object (expected EM_BPF)")
            if elf.header["e_type"] not in ("ET_REL", "ET_EXEC", "ET_DYN"):
                raise ElfError(f"unsupported ELF type {elf.header['e_type']}")
            self._read_sections(elf)
        self._read_license()
        self._split_functions()
        self._read_relocations(elf)
        self._declare_maps()
        self._apply_map_settings()
        self._core_relocate()
        if self.create_maps:
            self._create_maps()
        self._build_programs()
        if self.create_maps:
            self._fill_program_arrays()
        return self.obj

    # -- the file ----------------------------------------------------------------------------------

    def _check_header(self) -> None:
        data = self.data
        if len(data) < 4 or data[:4] != b"\x7fELF":
            raise ElfError("not an ELF object (bad magic)")
        if len(data) < 64:
            raise ElfError(f"truncated ELF header ({len(data)} bytes)")
        if data[4] != 2:
            raise ElfError("not a 64-bit ELF object (eBPF objects are ELFCLASS64)")
        if data[5] != 1:
            raise ElfError("big-endian eBPF objects (bpfeb) are not supported: compile with -target bpfel or bpf")
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        if shnum and (shentsize != 64 or shoff + shnum * 64 > len(data)):
            raise ElfError(f"section header table at {shoff:#x} ({shnum} entries) lies past the end of the file"
                           " (truncated?)")

    def _read_sections(self, elf: ELFFile) -> None:
        for index, sec in enumerate(elf.iter_sections()):
            with self._guard(f"#{index}"):
                name = sec.name
            with self._guard(name or f"#{index}"):
                hdr = sec.header
                kind, offset, size = hdr["sh_type"], int(hdr["sh_offset"]), int(hdr["sh_size"])
                if kind == "SHT_NOBITS":
                    body = b""  # no bytes in the file: zeros when used (.bss)
                else:
                    if offset + size > len(self.data):
                        raise ElfError(f"section data ({size} bytes at {offset:#x}) extends past the end of the"
                                       " file (truncated?)", section=name or f"#{index}")
                    body = self.data[offset : offset + size]
                self.sections.append(_Section(index, name, str(kind), int(hdr["sh_flags"]), size,
                                              int(hdr["sh_link"]), int(hdr["sh_info"]), body))
                if isinstance(sec, SymbolTableSection) and not self.symbols:
                    self._read_symbols(sec)

    def _read_symbols(self, sec: SymbolTableSection) -> None:
        for i, sym in enumerate(sec.iter_symbols()):
            shndx = sym["st_shndx"]
            self.symbols.append(_Symbol(i, sym.name, int(sym["st_value"]), int(sym["st_size"]),
                                        str(sym["st_info"]["type"]),
                                        shndx if isinstance(shndx, int) and shndx > 0 else None,
                                        sym["st_info"]["bind"] == "STB_WEAK"))

    def _section(self, index: int | None, what: str) -> _Section:
        if index is None or not 0 <= index < len(self.sections):
            raise ElfError(f"{what} refers to section {index}, which does not exist")
        return self.sections[index]

    def _by_name(self, name: str) -> _Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def _read_license(self) -> None:
        lic = self._by_name("license")
        if lic is not None:
            self.obj.license = lic.data.split(b"\0", 1)[0].decode("utf-8", "replace")
        ver = self._by_name("version")
        if ver is not None and len(ver.data) >= 4:
            self.obj.kern_version = struct.unpack_from("<I", ver.data)[0]

    # -- code --------------------------------------------------------------------------------------

    def _split_functions(self) -> None:
        for sec in self.sections:
            if not sec.executable:
                continue
            if sec.size % SLOT_SIZE:
                raise ElfError(f"code size {sec.size} is not a multiple of {SLOT_SIZE}", section=sec.name)
            syms = sorted((s for s in self.symbols if s.shndx == sec.index and s.kind == "STT_FUNC"),
                          key=lambda s: s.value)
            funcs: list[_Func] = []
            for i, s in enumerate(syms):
                if s.value % SLOT_SIZE or s.value >= sec.size:
                    raise ElfError(f"function {s.name} at offset {s.value:#x} is not at an instruction of the"
                                   " section", section=sec.name)
                end = s.value + s.size if s.size else (syms[i + 1].value if i + 1 < len(syms) else sec.size)
                if end > sec.size or end % SLOT_SIZE or end <= s.value:
                    raise ElfError(f"function {s.name} ({s.size} bytes at {s.value:#x}) does not fit its section",
                                   section=sec.name)
                funcs.append(_Func(sec.index, s.value // SLOT_SIZE, (end - s.value) // SLOT_SIZE, s.name))
            if not funcs:
                funcs.append(_Func(sec.index, 0, sec.size // SLOT_SIZE, sec.name))
            self.funcs[sec.index] = funcs

    def _read_relocations(self, elf: ELFFile) -> None:
        for sec in self.sections:
            if sec.kind not in ("SHT_REL", "SHT_RELA"):
                continue
            target = self.sections[sec.info] if 0 <= sec.info < len(self.sections) else None
            if target is not None and target.name == ".maps" and sec.kind == "SHT_REL":
                with self._guard(sec.name):
                    relsec = elf.get_section(sec.index)
                    if isinstance(relsec, RelocationSection):
                        self.maps_relocs += [(int(r["r_offset"]), int(r["r_info_sym"]))
                                             for r in relsec.iter_relocations()]
                continue
            if target is None or target.index not in self.funcs:
                continue  # debug info and BTF need no relocation here
            if sec.kind == "SHT_RELA":
                raise ElfError("RELA relocations are not supported in code (clang emits REL)", section=sec.name)
            table: dict[int, _Rel] = {}
            with self._guard(sec.name):
                relsec = elf.get_section(sec.index)
                if not isinstance(relsec, RelocationSection):
                    raise ElfError("relocation section cannot be read", section=sec.name)
                rows = [(int(r["r_offset"]), int(r["r_info_sym"]), int(r["r_info_type"]))
                        for r in relsec.iter_relocations()]
            for offset, sym, kind in rows:
                where = f"{sec.name} offset {offset:#x}"
                if kind == Reloc.NONE:
                    continue
                if kind not in (Reloc.R_BPF_64_64, Reloc.R_BPF_64_32):
                    name = Reloc(kind).name if kind in Reloc._value2member_map_ else str(kind)
                    raise ElfError(f"unsupported relocation type {name} in code at {where}", section=target.name)
                width = 16 if kind == Reloc.R_BPF_64_64 else 8
                if offset % SLOT_SIZE or offset + width > target.size:
                    raise ElfError(f"relocation at {where} is out of bounds of its {target.size}-byte section",
                                   section=target.name)
                if not 0 <= sym < len(self.symbols):
                    raise ElfError(f"relocation at {where} refers to symbol {sym}, which does not exist",
                                   section=target.name)
                table[offset] = _Rel(offset, sym, kind)
            self.relocs[target.index] = table

    def _core_relocate(self) -> None:
        """Apply the CO-RE relocations of ``.BTF.ext`` to the code sections, as libbpf does."""
        from jitbpf.linux import core
        ext = self._by_name(core.SECTION)
        if ext is None or self.obj.btf is None:
            return
        local = self.obj.btf
        relocs = core.read_relocations(ext.data, local)
        if not relocs:
            return
        needs_target = any(r.kind is not core.CoreKind.TYPE_ID_LOCAL for r in relocs)
        target = _target_btf(self.target_btf) if needs_target else None
        if target is not None:
            self.obj.target_btf = target  # read once: BTF-typed contexts use it too
        resolver = core.Resolver(local, target or local)
        patched: dict[int, bytearray] = {}
        for relo in relocs:
            sec = self._by_name(relo.section)
            if sec is None or sec.index not in self.funcs:
                raise ElfError(f"{relo.describe(local)}: no code section {relo.section!r}", section=core.SECTION)
            code = patched.setdefault(sec.index, bytearray(sec.data))
            failure = core.patch(code, relo, resolver)
            if failure is not None:
                self.poisoned[(sec.index, relo.insn_off // SLOT_SIZE)] = f"{relo.describe(local)}: {failure}"
        for index, code in patched.items():
            self.sections[index] = replace(self.sections[index], data=bytes(code))

    # -- maps --------------------------------------------------------------------------------------

    def _declare_maps(self) -> None:
        legacy = self._by_name("maps")
        if legacy is not None:
            self._legacy_maps(legacy)
        btf_maps = self._by_name(".maps")
        btf_sec = self._by_name(".BTF")
        if btf_sec is not None:
            try:
                self.obj.btf = Btf(btf_sec.data)
            except ElfError:
                if btf_maps is not None:
                    raise
                self.obj.btf = None  # BTF only matters for .maps; a program without them loads anyway
        if btf_maps is not None and btf_maps.size:
            self._btf_maps(btf_maps)
        self._kconfig_map()
        for sec in self.sections:
            is_data = any(sec.name == d or sec.name.startswith(d + ".") for d in DATA_SECTIONS)
            if not is_data or sec.size == 0 or not sec.flags & 0x2 or sec.executable:  # SHF_ALLOC
                continue
            if sec.size > MAX_GLOBAL_DATA:
                raise ElfError(f"global data of {sec.size} bytes is too large (at most {MAX_GLOBAL_DATA})",
                               section=sec.name)
            readonly = sec.name.startswith(".rodata")
            body = sec.data if sec.kind != "SHT_NOBITS" else bytes(sec.size)
            self._add_map(MapDef(sec.name, 2, 4, sec.size, 1, BPF_F_RDONLY_PROG if readonly else 0, sec.name,
                                 "data", body))
            self.data_maps[sec.index] = sec.name
            for sym in self.symbols:
                if sym.shndx == sec.index and sym.kind == "STT_OBJECT" and sym.name:
                    if sym.value + sym.size > sec.size:
                        raise ElfError(f"variable {sym.name} lies outside its section", section=sec.name)
                    self.obj.variables[sym.name] = (sec.name, sym.value, sym.size)

    def _kconfig_map(self) -> None:
        """Lay out the ``__kconfig`` externs in a read-only ``.kconfig`` map, as libbpf does."""
        btf = self.obj.btf
        datasec = btf.find(BtfKind.DATASEC, ".kconfig") if btf is not None else None
        if btf is None or datasec is None:
            return
        weak = {s.name for s in self.symbols if s.shndx is None and s.weak}
        body = bytearray()
        for _, var_id, _ in datasec.members:
            var = btf.get(var_id)
            size = _kconfig_size(var.name, btf, var.size_or_type)
            align = min(size, 8) if btf.resolve(var.size_or_type)[1].kind is not BtfKind.ARRAY else 1
            body.extend(bytes(-len(body) % max(align, 1)))
            self.externs[var.name] = len(body)
            value = self.kconfig.get(var.name)
            if value is None:
                if var.name not in weak:
                    what = ("is not one libbpf knows" if var.name.startswith("LINUX_")
                            else "has no value: give it in load_elf(kconfig={...})")
                    raise ElfError(f"__kconfig extern {var.name} {what}", section=".kconfig")
                body.extend(bytes(size))
            else:
                body.extend(_kconfig_bytes(var.name, value, btf, var.size_or_type, size))
        if body:
            self._add_map(MapDef(".kconfig", 2, 4, len(body), 1, BPF_F_RDONLY_PROG, ".kconfig", "data",
                                 bytes(body)))

    def _map_symbols(self, sec: _Section) -> list[_Symbol]:
        syms = sorted((s for s in self.symbols if s.shndx == sec.index and s.kind in ("STT_OBJECT", "STT_NOTYPE")
                       and s.name), key=lambda s: s.value)
        if not syms:
            raise ElfError("map section has no map symbols", section=sec.name)
        return syms

    def _legacy_maps(self, sec: _Section) -> None:
        syms = self._map_symbols(sec)
        for s in syms:
            if s.value + 16 > sec.size:
                raise ElfError(f"map {s.name} at offset {s.value:#x} is truncated (struct bpf_map_def needs at least"
                               " 16 bytes)", section=sec.name)
            raw = sec.data[s.value : s.value + 20].ljust(20, b"\0")
            map_type, key_size, value_size, max_entries, flags = struct.unpack("<5I", raw)
            self._add_map(MapDef(s.name, map_type, key_size, value_size, max_entries, flags, sec.name, "legacy"))
            self.map_at[(sec.index, s.value)] = s.name

    def _btf_maps(self, sec: _Section) -> None:
        btf = self.obj.btf
        if btf is None:
            raise ElfError("BTF-defined maps need the object's .BTF section (compile with -g)", section=sec.name)
        datasec = btf.find(BtfKind.DATASEC, ".maps")
        if datasec is None:
            raise ElfError("no BTF description of the .maps section", section=sec.name)
        described: dict[str, int] = {}
        for _, var_id, _ in datasec.members:
            var = btf.get(var_id)
            if var.kind is not BtfKind.VAR:
                raise ElfError(f"BTF .maps entry {var_id} is a {var.kind.name}, not a variable", section=".BTF")
            described[var.name] = var.size_or_type
        for s in self._map_symbols(sec):
            type_id = described.get(s.name)
            if type_id is None:
                raise ElfError(f"map {s.name} has no BTF description", section=sec.name)
            self._add_map(self._btf_map_def(btf, s.name, type_id, sec.name))
            self.map_at[(sec.index, s.value)] = s.name
            self.map_extent[s.name] = (s.value, s.size)

    def _btf_map_def(self, btf: Btf, name: str, type_id: int, section: str, *, inner_map: bool = False) -> MapDef:
        _, t = btf.resolve(type_id)
        if t.kind is not BtfKind.STRUCT:
            raise ElfError(f"map {name} is declared as a {t.kind.name}, not a struct", section=section)
        attrs: dict[str, int] = {}
        inner: MapDef | None = None
        for member, member_type, bit_offset in t.members:
            _, ptr = btf.resolve(member_type)
            if member == "values":
                if inner_map:  # (a template of maps of maps inside: the kernel has none, and a loop may hide here)
                    raise ElfError(f"map {name}: an inner map template has no .values", section=section)
                self.values_off[name] = (bit_offset & 0xFFFFFF) // 8  # initial contents: see .rel.maps
                inner = self._inner_map_def(btf, name, ptr, section)
                continue
            if ptr.kind is not BtfKind.PTR:
                raise ElfError(f"map {name}: attribute {member} is not declared with __uint/__type", section=section)
            target_id, target = btf.resolve(ptr.size_or_type)
            if member in ("key", "value"):
                attrs[f"{member}_size"] = btf.size_of(target_id)
            elif target.kind is BtfKind.ARRAY:
                attrs[member] = target.array[1]
            else:
                raise ElfError(f"map {name}: attribute {member} is not an __uint(...)", section=section)
        for required in ("type",):
            if required not in attrs:
                raise ElfError(f"map {name} has no {required}", section=section)
        if name in self.values_off:
            attrs.setdefault("value_size", 4)  # program and map ids, as libbpf sets for .values
        if inner is not None:
            if attrs.get("value_size", 4) != 4:
                raise ElfError(f"map {name}: the values of a map of maps are 4-byte map ids", section=section)
            attrs["value_size"] = 4
        return MapDef(name, attrs["type"], attrs.get("key_size", 0), attrs.get("value_size", 0),
                      attrs.get("max_entries", 0), attrs.get("map_flags", 0), section, "btf",
                      extra=attrs.get("map_extra", 0), inner=inner)

    def _inner_map_def(self, btf: Btf, name: str, values: BtfType, section: str) -> MapDef | None:
        """The template of ``__array(values, struct {...})`` when it names a map definition (a map
        of maps); None for the function pointers of a program array."""
        if values.kind is not BtfKind.ARRAY:
            raise ElfError(f"map {name}: .values is not declared with __array", section=section)
        _, elem = btf.resolve(values.array[0])
        if elem.kind is not BtfKind.PTR:
            raise ElfError(f"map {name}: .values is not an array of pointers", section=section)
        target_id, target = btf.resolve(elem.size_or_type)
        if target.kind is not BtfKind.STRUCT:
            return None
        return self._btf_map_def(btf, f"{name}.inner", target_id, section, inner_map=True)

    def _add_map(self, spec: MapDef) -> None:
        spec = _libbpf_defaults(spec)
        if spec.name in self.obj.map_defs:
            raise ElfError(f"map {spec.name} is declared twice", section=spec.section)
        self.obj.map_defs[spec.name] = spec
        self.obj.map_handles[spec.name] = len(self.obj.map_handles) + 1

    def _apply_map_settings(self) -> None:
        fields = {"max_entries", "key_size", "value_size", "flags", "map_type"}
        for name, changes in self.map_settings.items():
            spec = self.obj.map_defs.get(name)
            if spec is None:
                raise ElfError(f"map_settings names no map of the object: {name!r} "
                               f"(maps: {', '.join(self.obj.map_defs) or 'none'})")
            if not isinstance(changes, Mapping):
                raise ElfError(f"map_settings for {name!r}: give a dict of settings, not {type(changes).__name__}")
            unknown = set(changes) - fields
            if unknown:
                raise ElfError(f"map_settings for {name!r}: no such setting {', '.join(sorted(map(str, unknown)))} "
                               f"(settings: {', '.join(sorted(fields))})")
            bad = [k for k, v in changes.items() if not isinstance(v, int) or isinstance(v, bool)]
            if bad:
                raise ElfError(f"map_settings for {name!r}: {', '.join(bad)} must be an integer")
            new: dict[str, Any] = dict(changes)
            self.obj.map_defs[name] = replace(spec, **new)

    def _create_maps(self) -> None:
        from jitbpf.linux.btfvalues import spin_lock_offset
        from jitbpf.linux.maps import Array, MapShape, MapType, create_map

        for name, spec in self.obj.map_defs.items():
            options: dict[str, Any] = {}
            if spec.inner is not None:
                i = spec.inner
                if i.map_type not in MapType._value2member_map_:
                    raise ElfError(f"map {name}: its inner map template is of unknown type {i.map_type}",
                                   section=spec.section)
                options["inner"] = MapShape(MapType(i.map_type), i.key_size, i.value_size, i.max_entries, i.flags)
            try:
                m = create_map(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags,
                               name=name, map_extra=spec.extra, **options)
            except BpfError as exc:
                unset = [f for f in ("max_entries", "value_size") if getattr(spec, f) == 0]
                hint = (f"; the object leaves its {' and '.join(unset)} to the loader: give them with "
                        f"load_elf(..., map_settings={{{name!r}: {{{', '.join(f'{f!r}: N' for f in unset)}}}}})"
                        if unset else "")
                raise ElfError(f"cannot create map {name}: {exc.message}{hint}", section=spec.section) from exc
            if spec.initial is not None and any(spec.initial) and isinstance(m, Array):
                m.view(0)[:] = spec.initial
            if isinstance(m, Array) and spec.origin == "data" and spec.flags & BPF_F_RDONLY_PROG:
                m.freeze_on_load = True  # .rodata and .kconfig, which libbpf freezes before loading
            m.spin_lock_off = spin_lock_offset(self.obj, name)
            m.timer_off = spin_lock_offset(self.obj, name, "bpf_timer")
            self.obj.maps[name] = m

    def _fill_program_arrays(self) -> None:
        """Install what a ``.values`` initialiser names: the programs of a program array (tail
        call targets), the inner maps of a map of maps (slot i is key i, as libbpf sets it)."""
        for offset, sym_index in self.maps_relocs:
            where = f"relocation at .maps offset {offset:#x}"
            owner = next((n for n, (start, size) in self.map_extent.items() if start <= offset < start + size), None)
            if owner is None or owner not in self.values_off:
                raise ElfError(f"{where} is not inside a map's .values initialiser", section=".maps")
            rel = offset - self.map_extent[owner][0] - self.values_off[owner]
            if rel < 0 or rel % 8:
                raise ElfError(f"{where} is not at a slot of {owner}.values", section=".maps")
            if not 0 <= sym_index < len(self.symbols):
                raise ElfError(f"{where} refers to symbol {sym_index}, which does not exist", section=".maps")
            sym = self.symbols[sym_index]
            if self.obj.map_defs[owner].inner is not None:
                self._fill_map_of_maps(owner, rel // 8, sym.name)
                continue
            if self.obj.map_defs[owner].map_type != 3:  # BPF_MAP_TYPE_PROG_ARRAY
                raise ElfError(f"map {owner}: .values initialisers are supported for program arrays and maps "
                               "of maps only", section=".maps")
            prog = self.obj.programs.get(sym.name)
            if prog is None:
                raise ElfError(f"map {owner}: slot {rel // 8} names {sym.name!r}, which is not a program",
                               section=".maps")
            try:
                self.obj.maps[owner].set(rel // 8, prog.vm())
            except BpfError as exc:
                raise ElfError(f"map {owner}: cannot install {sym.name} at slot {rel // 8}: {exc.message}",
                               section=".maps") from exc

    def _fill_map_of_maps(self, owner: str, slot: int, inner: str) -> None:
        m = self.obj.maps.get(inner)
        if m is None:
            raise ElfError(f"map {owner}: slot {slot} names {inner!r}, which is not a map", section=".maps")
        outer = self.obj.maps[owner]
        if slot >= 1 << (8 * outer.key_size):
            raise ElfError(f"map {owner}: slot {slot} of .values does not fit its {outer.key_size}-byte key",
                           section=".maps")
        try:
            if outer.key_size == 4:
                outer[slot] = m
            else:
                outer[slot.to_bytes(outer.key_size, "little")] = m
        except BpfError as exc:
            raise ElfError(f"map {owner}: cannot store {inner} at slot {slot}: {exc.message}",
                           section=".maps") from exc

    # -- programs ----------------------------------------------------------------------------------

    def _build_programs(self) -> None:
        code_sections = [s for s in self.sections if s.index in self.funcs]
        entry_sections = [s for s in code_sections if s.name != ".text"] or code_sections
        for sec in entry_sections:
            prog_type = section_program_type(sec.name)
            if prog_type is ProgType.UNSPEC:
                prog_type = self.default_type
            for func in self.funcs[sec.index]:
                name = func.name if func.name not in self.obj.programs else f"{sec.name}/{func.name}"
                failures: dict[int, str] = {}
                functions: dict[int, str] = {}
                try:
                    code = self._link(func, failures, functions)
                except _KernelSymbol as exc:  # the object's other programs load: this one cannot run
                    self.obj.programs[name] = ElfProgram(self.obj, name, sec.name, prog_type, b"",
                                                         unavailable=exc.message)
                    continue
                self.obj.programs[name] = ElfProgram(self.obj, name, sec.name, prog_type, code, failures,
                                                     functions=functions)

    def _function_at(self, section: int, slot: int, where: str) -> _Func:
        sec = self.sections[section]
        if not sec.executable:
            raise ElfError(f"{where}: target section {sec.name} holds no code", section=sec.name)
        funcs = self.funcs[section]
        starts = self._func_starts.get(section)
        if starts is None:
            starts = self._func_starts[section] = [f.start for f in funcs]
        at = bisect.bisect_right(starts, slot) - 1  # (by start: one lookup per call, not a scan)
        if at >= 0 and slot < funcs[at].start + funcs[at].count:
            return funcs[at]
        for f in funcs:  # functions that overlap (sizes that say so): the first that holds it
            if f.start <= slot < f.start + f.count:
                return f
        raise ElfError(f"{where}: target instruction {slot} is outside every function of {sec.name}",
                       section=sec.name)

    def _link(self, entry: _Func, failures: dict[int, str], functions: dict[int, str]) -> bytes:
        """The entry function followed by every function it calls (transitively), calls patched;
        ``failures`` gets the linked pc of each instruction a failed CO-RE relocation poisoned,
        ``functions`` the entry and name of each function placed after the first."""
        out = bytearray()
        placed: dict[tuple[int, int], int] = {}
        work: list[_Func] = []

        def place(f: _Func) -> int:
            key = (f.section, f.start)
            if key not in placed:
                placed[key] = len(out) // SLOT_SIZE
                if out:
                    functions[placed[key]] = f.name
                sec = self.sections[f.section]
                out.extend(sec.data[f.start * SLOT_SIZE : (f.start + f.count) * SLOT_SIZE])
                work.append(f)
                for (index, slot), why in self.poisoned.items():
                    if index == f.section and f.start <= slot < f.start + f.count:
                        failures[placed[key] + slot - f.start] = why
            return placed[key]

        place(entry)
        while work:
            f = work.pop(0)
            sec = self.sections[f.section]
            base = placed[(f.section, f.start)]
            relocs = self.relocs.get(f.section, {})
            i = 0
            while i < f.count:
                pc, slot = base + i, f.start + i
                opcode, regs = out[pc * 8], out[pc * 8 + 1]
                imm = struct.unpack_from("<i", out, pc * 8 + 4)[0]
                rel = relocs.get(slot * SLOT_SIZE)
                where = f"relocation at {sec.name} offset {slot * SLOT_SIZE:#x}"
                if opcode == LDDW and i + 1 >= f.count:
                    raise ElfError(f"lddw at offset {slot * SLOT_SIZE:#x} is cut off by the end of {f.name}",
                                   section=sec.name)
                if rel is not None:
                    self._apply(out, pc, rel, sec, where, place, imm)
                elif opcode == CALL and regs >> 4 == CallSrc.LOCAL:
                    target = self._function_at(f.section, slot + imm + 1, f"call at {sec.name} offset "
                                               f"{slot * SLOT_SIZE:#x}")
                    start = place(target)
                    struct.pack_into("<i", out, pc * 8 + 4, start + (slot + imm + 1 - target.start) - pc - 1)
                elif opcode == LDDW and regs >> 4 == PseudoSrc.FUNC:
                    target = self._function_at(f.section, slot + imm + 1, f"lddw at {sec.name} offset "
                                               f"{slot * SLOT_SIZE:#x}")
                    start = place(target)
                    struct.pack_into("<i", out, pc * 8 + 4, start + (slot + imm + 1 - target.start) - pc - 1)
                i += 2 if opcode == LDDW else 1
        return bytes(out)

    def _target(self, sym: _Symbol, where: str, sec: _Section) -> RelocTarget:
        """What a relocation's symbol is (undefined symbols must be ``__kconfig`` externs)."""
        if sym.shndx is None:
            if sym.name in self.externs:
                return RelocTarget.KCONFIG
            if self._is_ksym(sym.name):
                raise _KernelSymbol(f"{where}: {sym.name!r} is a kernel symbol (__ksym): kernel functions and "
                                    "variables do not exist outside the kernel", section=sec.name)
            raise ElfError(f"{where}: symbol {sym.name!r} is undefined (extern variables other than __kconfig are"
                           " not supported)", section=sec.name)
        target_sec = self._section(sym.shndx, where)
        if target_sec.index in self.funcs:
            return RelocTarget.FUNCTION
        if target_sec.index in self.data_maps:
            return RelocTarget.DATA
        return RelocTarget.MAP

    def _apply(self, out: bytearray, pc: int, rel: _Rel, sec: _Section, where: str, place: Any, imm: int) -> None:
        """Patch the instruction at ``pc`` for ``rel``, as the table ``RELOCATIONS`` says."""
        sym = self.symbols[rel.symbol]
        label = sym.name or (self.sections[sym.shndx].name if sym.shndx is not None and sym.shndx < len(
            self.sections) else f"#{rel.symbol}")
        target = self._target(sym, where, sec)
        rule = RELOCATIONS.get((Reloc(rel.kind), target))
        if rule is None:
            raise ElfError(f"{where}: {Reloc(rel.kind).name} cannot refer to {label!r}, a {target.value}",
                           section=sec.name)
        opcode, regs = out[pc * 8], out[pc * 8 + 1]
        if opcode != rule.opcode or (rule.call_src is not None and regs >> 4 != rule.call_src):
            raise ElfError(f"{where}: {Reloc(rel.kind).name} must be on {rule.insn} (opcode {opcode:#x})",
                           section=sec.name)
        offset = sym.value + (imm if sym.kind == "STT_SECTION" else 0)
        site = _Site(out, pc, regs & 0xF, sym, label, offset, imm, sec, where, place)
        getattr(self, rule.apply)(site)

    def _reloc_kconfig(self, s: _Site) -> None:
        self._patch_map(s.out, s.pc, s.dst, PseudoSrc.MAP_VALUE, ".kconfig", self.externs[s.sym.name])

    def _reloc_call(self, s: _Site) -> None:
        if s.sym.value % SLOT_SIZE:
            raise ElfError(f"{s.where}: call target {s.label} is not at an instruction", section=s.sec.name)
        assert s.sym.shndx is not None
        slot = s.sym.value // SLOT_SIZE + s.imm + 1
        target = self._function_at(s.sym.shndx, slot, s.where)
        start = s.place(target)
        struct.pack_into("<i", s.out, s.pc * 8 + 4, start + (slot - target.start) - s.pc - 1)

    def _reloc_function_address(self, s: _Site) -> None:  # the address of a callback
        if s.offset % SLOT_SIZE:
            raise ElfError(f"{s.where}: function address {s.label}+{s.offset} is not at an instruction",
                           section=s.sec.name)
        assert s.sym.shndx is not None
        slot = s.offset // SLOT_SIZE
        target = self._function_at(s.sym.shndx, slot, s.where)
        start = s.place(target)
        s.out[s.pc * 8 + 1] = s.dst | PseudoSrc.FUNC << 4
        struct.pack_into("<i", s.out, s.pc * 8 + 4, start + (slot - target.start) - s.pc - 1)

    def _reloc_data(self, s: _Site) -> None:
        target_sec = self._section(s.sym.shndx, s.where)
        if not 0 <= s.offset < max(target_sec.size, 1):
            raise ElfError(f"{s.where}: offset {s.offset} is outside {target_sec.name} ({target_sec.size} bytes)",
                           section=s.sec.name)
        self._patch_map(s.out, s.pc, s.dst, PseudoSrc.MAP_VALUE, self.data_maps[target_sec.index], s.offset)

    def _reloc_map(self, s: _Site) -> None:
        target_sec = self._section(s.sym.shndx, s.where)
        map_name = self.map_at.get((target_sec.index, s.offset))
        if map_name is None:
            if target_sec.name in (".maps", "maps"):
                raise ElfError(f"{s.where}: unknown map {s.label!r} (no map at offset {s.offset:#x} of "
                               f"{target_sec.name})", section=s.sec.name)
            raise ElfError(f"{s.where}: symbol {s.label!r} is in section {target_sec.name}, which is neither a map"
                           " nor global data", section=s.sec.name)
        self._patch_map(s.out, s.pc, s.dst, PseudoSrc.MAP_FD, map_name, 0)

    def _is_ksym(self, name: str) -> bool:
        btf = self.obj.btf
        datasec = btf.find(BtfKind.DATASEC, ".ksyms") if btf is not None else None
        if btf is not None and datasec is not None and any(btf.get(v).name == name for _, v, _ in datasec.members):
            return True
        return btf is not None and any(t.kind is BtfKind.FUNC and t.name == name for t in btf.types)

    def _patch_map(self, out: bytearray, pc: int, dst: int, src: int, name: str, offset: int) -> None:
        out[pc * 8 + 1] = dst | src << 4
        struct.pack_into("<i", out, pc * 8 + 4, self.obj.map_handles[name])
        struct.pack_into("<i", out, pc * 8 + 12, offset)
