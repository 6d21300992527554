"""Copy-and-patch encoding: PeachPy encodes each x86-64 instruction shape once, its holes are
located, and code is then stamped out of the cached templates with ``struct.pack_into``."""

from __future__ import annotations

import contextlib
import enum
import functools
import hashlib
import importlib.util
import marshal
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitbpf.errors import JitError

# Debian and Ubuntu package PeachPy; PyPI's "peachpy" is an unrelated Python 2 release.
PEACHPY_MISSING = ("the JIT needs PeachPy, which is not installed ({reason}): on Debian or Ubuntu install "
                   "python3-peachpy (apt-get install python3-peachpy), elsewhere install it from its repository "
                   "(pip install git+https://github.com/Maratyszcza/PeachPy); the interpreter works without it")

Shape = tuple[str, ...]
"""An instruction shape: mnemonic, then operands ("rax", "i32", "q[r12+d8]", "rel32", ...)."""


class HoleKind(enum.Enum):
    """What a hole in a template holds; the value determines its width."""

    IMM8 = "i8"  # 8-bit immediate
    IMM16 = "i16"  # 16-bit immediate
    IMM32 = "i32"  # 32-bit immediate (sign-extended by 64-bit instructions)
    IMM64 = "i64"  # 64-bit immediate (movabs)
    DISP8 = "d8"  # 8-bit signed displacement of a memory operand
    DISP32 = "d32"  # 32-bit signed displacement of a memory operand
    REL32 = "rel32"  # branch offset from the end of the instruction


_WIDTH = {
    HoleKind.IMM8: 1,
    HoleKind.IMM16: 2,
    HoleKind.IMM32: 4,
    HoleKind.IMM64: 8,
    HoleKind.DISP8: 1,
    HoleKind.DISP32: 4,
    HoleKind.REL32: 4,
}
_PACKERS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"), 8: struct.Struct("<Q")}
# Two sentinel sets per hole width: every byte differs between the sets, and the values are large
# enough that PeachPy picks the encoding of that width (imm32, disp32) rather than a shorter one.
_SENTINEL_A = {1: 0x31, 2: 0x1131, 4: 0x1122_3344, 8: 0x1122_3344_5566_7788}
_SENTINEL_B = {1: 0x52, 2: 0x2252, 4: 0x2233_4455, 8: 0x2233_4455_6677_8899}
_SENTINEL_STEP = {1: 0x01, 2: 0x0101, 4: 0x0101_0101, 8: 0x0101_0101_0101_0101}
_MEMORY = re.compile(r"^([bwdqo]?)\[(\w+)(?:\+(\w+)\*([1248]))?(?:\+(d8|d32))?\]$")
_SIZES = {"b": "byte", "w": "word", "d": "dword", "q": "qword", "o": "oword"}
_LOCK = 0xF0  # the LOCK prefix byte
_STORE_MAGIC = b"jitbpf-templates\0"  # a template store file starts so, then the payload's SHA-256
_STORE_HEADER = len(_STORE_MAGIC) + 32


@dataclass(frozen=True, slots=True)
class Hole:
    """A field of a template patched at instantiation (like a relocation in an object file)."""

    offset: int  # byte offset in the template
    kind: HoleKind  # what goes there
    width: int  # bytes


@dataclass(frozen=True, slots=True)
class Template:
    """One encoded instruction shape: its bytes (holes hold sentinels) and where the holes are."""

    shape: Shape  # what was encoded
    code: bytes  # machine code with sentinels in the holes
    holes: tuple[Hole, ...]  # in operand order
    patches: tuple[tuple[int, struct.Struct, int], ...] = ()  # per hole: offset, packer, value mask

    def emit(self, buf: bytearray, *values: int) -> int:
        """Append the instruction to ``buf`` with ``values`` in the holes; return its offset.

        Values are truncated to the hole width (two's complement for negative values)."""
        start = len(buf)
        buf += self.code
        if self.patches or values:
            for (offset, packer, mask), value in zip(self.patches, values, strict=True):
                packer.pack_into(buf, start + offset, value & mask)
        return start


class TemplateStore:
    """Templates kept on disk between processes, so that a process whose programs need no new
    shape never imports PeachPy (which costs most of a first compile) nor encodes anything.

    The file's name carries a hash of this module and of the installed PeachPy's files (found
    without importing it): any change of either starts a new file. It lives in the per-user cache
    beside the native library, which is trusted the same way; its contents are checked anyway:
    the file as a whole by a digest of what ``save`` wrote (a file that does not match is
    ignored), each template when it is first used (types, hole positions). The store holds every
    shape any program needed, so templates are decoded on demand rather than all at start-up.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / f"templates-{_store_key()}.bin"

    def load(self) -> dict[Any, Any]:
        """The stored entries by shape, undecoded (see ``_decode_template``); empty for a file
        that does not check out."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return {}
        digest, payload = data[len(_STORE_MAGIC):_STORE_HEADER], data[_STORE_HEADER:]
        if not data.startswith(_STORE_MAGIC) or hashlib.sha256(payload).digest() != digest:
            return {}
        try:
            raw = marshal.loads(payload)
        except (EOFError, ValueError, TypeError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def save(self, templates: dict[Shape, Template]) -> None:
        """Write ``templates`` merged with what is stored already (by other processes too),
        atomically."""
        merged = {**self.load(), **{shape: (tpl.code, tuple((h.offset, h.kind.value, h.width) for h in tpl.holes))
                                    for shape, tpl in templates.items()}}
        payload = marshal.dumps(merged)
        data = _STORE_MAGIC + hashlib.sha256(payload).digest() + payload
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, prefix=".templates-", delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, self.path)
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp.name)  # a cache we cannot write only costs encoding time


def _decode_template(shape: Any, entry: Any) -> Template | None:
    if not (isinstance(shape, tuple) and shape and all(isinstance(t, str) for t in shape)):
        return None
    if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], bytes)
            and isinstance(entry[1], tuple)):
        return None
    code, raw_holes = entry
    holes = []
    for h in raw_holes:
        if not (isinstance(h, tuple) and len(h) == 3 and all(isinstance(v, int | str) for v in h)):
            return None
        offset, kind, width = h
        try:
            hole = Hole(int(offset), HoleKind(kind), int(width))
        except ValueError:
            return None
        if hole.width != _WIDTH[hole.kind] or not 0 <= hole.offset <= len(code) - hole.width:
            return None
        holes.append(hole)
    return _template(tuple(shape), code, holes)


def _store_key() -> str:
    """A hash of this module's source and of PeachPy's files (names, sizes, times), found without
    importing it."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    try:
        spec = importlib.util.find_spec("peachpy")
    except (ImportError, ValueError):
        spec = None  # no PeachPy: a store of its own, empty, so encoding says what is missing
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        for path in sorted(Path(location).rglob("*.py")):
            st = path.stat()
            digest.update(f"{path.relative_to(location)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


class Assembler:
    """The template cache: encodes a shape with PeachPy on first use, then serves it from memory
    (and, with a ``store``, from disk: see ``TemplateStore``).

    One instance can serve any number of compilers (see ``default_cache``); templates depend only
    on the shape, so the cache never needs invalidating.
    """

    def __init__(self, store: TemplateStore | None = None) -> None:
        self._store = store
        self._templates: dict[Shape, Template] = {}
        # What the store holds that no compile has asked for yet (decoded and moved over on use).
        self._stored: dict[Any, Any] = store.load() if store is not None else {}
        self._unsaved = False  # templates encoded since the store was last written
        self.derived: dict[Any, Any] = {}  # caches built on templates by the emitters (by their own keys)

    def __len__(self) -> int:
        return len(self._templates) + len(self._stored)

    def cached(self, shape: Shape) -> Template | None:
        """The template of a shape encoded before (in this process or a stored one), else None."""
        tpl = self._templates.get(shape)
        if tpl is None and self._stored:
            tpl = self._from_store(shape)
        return tpl

    def _from_store(self, shape: Shape) -> Template | None:
        entry = self._stored.pop(shape, None)
        if entry is None:
            return None
        tpl = _decode_template(shape, entry)
        if tpl is None:
            self._stored.clear()  # not a file this module wrote, digest or not: trust none of the rest
            return None
        self._templates[shape] = tpl
        return tpl

    def template(self, shape: Shape) -> Template:
        """The template of ``shape``, encoding it on first use."""
        tpl = self.cached(shape)
        if tpl is None:
            tpl = _build(shape)
            self._templates[shape] = tpl
            self._unsaved = True
        return tpl

    def persist(self) -> None:
        """Write newly encoded templates to the store (nothing when there are none)."""
        if self._unsaved and self._store is not None:
            self._unsaved = False
            self._store.save(dict(self._templates))

    def emit(self, buf: bytearray, shape: Shape, *values: int) -> int:
        """Append one instruction of ``shape`` with ``values`` in its holes; return its offset."""
        return self.template(shape).emit(buf, *values)

    def encode(self, shape: Shape, *values: int) -> bytes:
        """The bytes of one instruction (for tests and listings)."""
        buf = bytearray()
        self.template(shape).emit(buf, *values)
        return bytes(buf)


@functools.cache
def default_cache() -> Assembler:
    """The process-wide template cache, created on first use (its state lives on the object),
    backed by the per-user template store."""
    from jitbpf._native.build import cache_dir

    return Assembler(TemplateStore(cache_dir()))


def _operand(x86: Any, token: str, table: dict[int, int], kinds: list[HoleKind]) -> Any:
    """PeachPy operand for one token; each hole gets the next sentinel of ``table``."""

    def hole(kind: HoleKind) -> int:
        width = _WIDTH[kind]
        value = table[width] + len(kinds) * _SENTINEL_STEP[width]
        kinds.append(kind)
        return value

    if token in ("i8", "i16", "i32", "i64"):
        return hole(HoleKind(token))
    if token == "rel32":
        from peachpy.x86_64.operand import RIPRelativeOffset

        return RIPRelativeOffset(hole(HoleKind.REL32))
    m = _MEMORY.match(token)
    if m is not None:
        size, base, idx, scale, disp = m.groups()
        address = _register(x86, base)
        if idx is not None:
            address = address + _register(x86, idx) * int(scale)
        if disp is not None:
            address = address + hole(HoleKind(disp))
        return getattr(x86, _SIZES[size])[address] if size else [address]
    return _register(x86, token)


def _register(x86: Any, name: str) -> Any:
    reg = getattr(x86.registers, name, None)  # the package does not re-export rsp and friends
    if reg is None or not hasattr(reg, "lcode"):
        raise ValueError(f"unknown operand {name!r}")
    return reg


def peachpy_modules() -> tuple[Any, Any]:
    """PeachPy's ``x86_64`` package and its ``stream`` module; a ``JitError`` saying how to get
    PeachPy when it cannot be imported (one error, not an import traceback from deep inside)."""
    try:
        import peachpy.stream
        import peachpy.x86_64
    except ImportError as exc:
        raise JitError(PEACHPY_MISSING.format(reason=exc)) from None
    return peachpy.x86_64, peachpy.stream


def _encode(shape: Shape, table: dict[int, int], kinds: list[HoleKind]) -> bytes:
    x86, stream = peachpy_modules()
    mnemonic = shape[0]
    lock = mnemonic.startswith("lock ")
    cls = getattr(x86, mnemonic.removeprefix("lock ").upper(), None)
    if cls is None:
        raise ValueError(f"unknown mnemonic {mnemonic!r}")
    with stream.NullStream():  # never let an instruction register itself in a Function
        operands = [_operand(x86, tok, table, kinds) for tok in shape[1:]]
        code = bytes(cls(*operands).encode())
    return bytes([_LOCK]) + code if lock else code


def _build(shape: Shape) -> Template:
    # Two encodings with different sentinels in every hole show where each hole is.
    kinds: list[HoleKind] = []
    try:
        a = _encode(shape, _SENTINEL_A, kinds)
        b = _encode(shape, _SENTINEL_B, [])
    except (TypeError, ValueError, SyntaxError, AttributeError) as exc:
        raise ValueError(f"cannot encode {shape}: {exc}") from exc
    if len(a) != len(b):
        raise ValueError(f"encoding of {shape} depends on its hole values")
    holes: list[Hole] = []
    for n, kind in enumerate(kinds):
        width = _WIDTH[kind]
        packer = _PACKERS[width]
        pa = packer.pack(_SENTINEL_A[width] + n * _SENTINEL_STEP[width])
        off = a.find(pa)
        pb = packer.pack(_SENTINEL_B[width] + n * _SENTINEL_STEP[width])
        if off < 0 or a.find(pa, off + 1) >= 0 or b[off : off + width] != pb:
            raise ValueError(f"cannot locate hole {n} ({kind.value}) of {shape}")
        holes.append(Hole(off, kind, width))
    covered = {h.offset + i for h in holes for i in range(h.width)}
    if any(a[i] != b[i] for i in range(len(a)) if i not in covered):
        raise ValueError(f"encoding of {shape} changes outside its holes")
    if any(h.kind is HoleKind.REL32 and h.offset + 4 != len(a) for h in holes):
        raise ValueError(f"branch offset of {shape} is not at the end of the instruction")
    return _template(shape, a, holes)


def _template(shape: Shape, code: bytes, holes: list[Hole]) -> Template:
    patches = tuple((h.offset, _PACKERS[h.width], (1 << (8 * h.width)) - 1) for h in holes)
    return Template(shape, code, tuple(holes), patches)
