"""XDP programs that mostly verify, so that they reach both engines, and one-field mutants of
them near the verifier's accept/reject boundary.

A program keeps r6 = ctx, r7 = a non-null value of the array ``A``, r2/r3 = data/data_end
(reloaded after each call, unless the snippet leaves them stale on purpose), r8/r9 = unknown
numbers, fp-80 .. fp-1 zeroed; random snippets follow, each a few instructions that may branch forward to ``out``.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from jitbpf.isa import LDDW_OPCODE, SIZE_BYTES, SIZE_SUFFIX, SLOT, InsnClass, JmpOp

WIDTHS = {suffix: SIZE_BYTES[size] for size, suffix in SIZE_SUFFIX.items()}  # access size suffix -> bytes
SIZES = tuple(WIDTHS)
ALU_OPS = ("add", "sub", "mul", "div", "mod", "and", "or", "xor", "lsh", "rsh", "arsh", "sdiv", "smod")
JUMPS = ("jeq", "jne", "jgt", "jge", "jlt", "jle", "jsgt", "jsge", "jslt", "jsle", "jset")
INTERESTING = (0, 1, -1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 255, 256, 0x7FFF, 0xFFFF, 0x7FFF_FFFF, -(2**31))
MAP_NAMES = ("A", "H", "R")  # created by the runner: an array, a hash, a ring buffer (see harness)

PROLOGUE = ("mov r6, r1", "stw [r10-4], 0", "mov r2, r10", "add r2, -4", "lddw r1, map:A", "call 1",
            "jeq r0, 0, out", "mov r7, r0", "ldxw r2, [r6+0]", "ldxw r3, [r6+4]", "mov r8, 0", "mov r9, 0",
            "mov r4, r2", "add r4, 4", "jgt r4, r3, +1", "ldxw r8, [r2+0]",
            # The frame the snippets use, fp-80 .. fp-5, initialised: what a read of uninitialised
            # stack finds is undefined (the kernel's test runs find their own stack's garbage).
            *(f"stdw [r10-{off}], 0" for off in range(16, 88, 8)), "stw [r10-8], 0")
RELOAD = ("ldxw r2, [r6+0]", "ldxw r3, [r6+4]")


class _Writer:
    """The lines of one program, and the labels and subprograms its snippets ask for."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.lines: list[str] = list(PROLOGUE)
        self.tail: list[str] = []  # subprograms, after the main program's exit
        self.labels = 0

    def label(self) -> str:
        self.labels += 1
        return f"l{self.labels}"

    def call(self, *lines: str) -> None:
        """A helper call: r1-r5 are gone afterwards, so the packet pointers are reloaded (mostly)."""
        self.lines += lines
        if self.rng.random() < 0.93:
            self.lines += RELOAD

    def offset(self, lo: int, hi: int) -> int:
        """Mostly in ``[lo, hi]``, sometimes just outside: the accept/reject boundary."""
        if self.rng.random() < 0.8:
            return self.rng.randint(lo, hi)
        return self.rng.choice((lo - 1, lo - 2, hi + 1, hi + 2, hi + 8))

    def imm(self) -> int:
        rng = self.rng
        return rng.choice(INTERESTING) if rng.random() < 0.6 else rng.randint(-100, 100)


def _packet_check(w: _Writer) -> None:
    w.lines += ["mov r4, r2", f"add r4, {w.offset(0, 64)}", "jgt r4, r3, out"]


def _packet_access(w: _Writer) -> None:
    rng, size = w.rng, w.rng.choice(SIZES)
    off = w.offset(0, 40)
    base = rng.choice(("r2", "r5"))
    if base == "r5":  # data + (r8 & mask): a variable offset the bounds check must cover
        w.lines += ["mov r9, r8", f"and r9, {rng.choice((1, 3, 7, 15, 255))}", "mov r5, r2", "add r5, r9"]
    if rng.random() < 0.75:  # its own bounds check, exact or a little short
        w.lines += [f"mov r4, {base}", f"add r4, {off + WIDTHS[size] - (rng.random() < 0.1)}", "jgt r4, r3, out"]
    match rng.randrange(3):
        case 0:
            w.lines.append(f"ldx{size} r0, [{base}{off:+d}]")
        case 1:
            w.lines.append(f"st{size} [{base}{off:+d}], {w.imm()}")
        case _:
            w.lines.append(f"stx{size} [{base}{off:+d}], r8")


def _map_value(w: _Writer) -> None:
    rng, size = w.rng, w.rng.choice(SIZES)
    w.lines += ["mov r9, r8", f"and r9, {rng.choice((1, 7, 15, 31))}"]
    if rng.random() < 0.5:
        w.lines.append(f"jgt r9, {rng.randint(0, 16)}, out")
    w.lines += ["mov r4, r7", "add r4, r9"]
    off = w.offset(0, 8)
    match rng.randrange(4):
        case 0:
            w.lines.append(f"ldx{size} r0, [r4{off:+d}]")
        case 1:
            w.lines.append(f"stx{size} [r4{off:+d}], r8")
        case 2:
            w.lines += ["mov r0, 1", f"lock {rng.choice(('add', 'or', 'xor', 'and'))}{rng.choice(('', '32'))} "
                        f"[r4{off:+d}], r0"]
        case _:
            w.lines += ["mov r0, r8", f"lock xchg [r7{w.offset(0, 8):+d}], r0", "mov r8, r0"]


def _stack(w: _Writer) -> None:
    rng, size = w.rng, w.rng.choice(SIZES)
    if rng.random() < 0.5:  # a variable offset into the initialised frame below fp-40
        w.lines += ["mov r9, r8", f"and r9, {rng.choice((1, 7, 31))}", "mov r4, r10",
                    f"add r4, {w.offset(-72, -40)}", "add r4, r9"]
        base = "r4"
    else:
        base = "r10"
    off = w.offset(-40, -8) // WIDTHS[size] * WIDTHS[size] if base == "r10" else w.offset(-8, 0)
    w.lines.append(f"stx{size} [{base}{off:+d}], r8" if rng.random() < 0.5 else f"ldx{size} r0, [{base}{off:+d}]")


def _alu(w: _Writer) -> None:
    rng = w.rng
    op, width = rng.choice(ALU_OPS), rng.choice(("", "32"))
    dst = rng.choice(("r8", "r9"))
    src = rng.choice(("r8", "r9", str(w.imm())))
    if op in ("lsh", "rsh", "arsh") and not src.startswith("r"):
        src = str(rng.randrange(32 if width else 64))
    w.lines.append(f"{op}{width} {dst}, {src}")
    if rng.random() < 0.15:
        w.lines.append(rng.choice(("neg r8", "be16 r8", "le32 r8", "be64 r9", "bswap32 r8", "movsx864 r8, r9",
                                   "movsx3264 r9, r8", "movsx832 r8, r8")))


def _branch(w: _Writer) -> None:
    """A forward jump over the next snippet, on a test of the unknown numbers."""
    rng = w.rng
    target = w.label()
    operand = rng.choice(("r9", str(w.imm())))
    w.lines.append(f"{rng.choice(JUMPS)}{rng.choice(('', '32'))} r8, {operand}, {target}")
    _snippet(w, exclude=_branch)
    w.lines.append(f"{target}: ja +0")


def _lookup(w: _Writer) -> None:
    rng = w.rng
    key = rng.choice(("stw [r10-8], 1", "stw [r10-8], 9", "stxw [r10-8], r8", "stxw [r10-8], r9"))
    name = rng.choice(("A", "H"))
    w.lines += [key, "mov r2, r10", "add r2, -8", f"lddw r1, map:{name}", "call 1"]
    skip = w.label()
    if rng.random() < 0.93:
        w.lines.append(f"jeq r0, 0, {skip}")
    w.lines.append(f"ldx{rng.choice(SIZES)} r8, [r0{w.offset(0, 8):+d}]")
    w.lines.append(f"{skip}: ja +0")
    w.lines += RELOAD


def _update(w: _Writer) -> None:
    rng = w.rng
    name = rng.choice(("A", "H"))
    w.call("stxw [r10-8], r8", "stxdw [r10-24], r9", "mov r2, r10", "add r2, -8", "mov r3, r10", "add r3, -24",
           f"lddw r1, map:{name}", f"mov r4, {rng.randrange(3)}", "call 2", "mov r9, r0")
    if rng.random() < 0.3:
        w.call("mov r2, r10", "add r2, -8", f"lddw r1, map:{name}", "call 3")


def _csum(w: _Writer) -> None:
    rng = w.rng
    w.call("mov r1, r10", f"add r1, {rng.choice((-32, -24, -16))}", f"mov r2, {rng.choice((0, 4, 8, 16, 12))}",
           "mov r3, r10", "add r3, -40", f"mov r4, {rng.choice((0, 4, 8))}", "mov r5, r8", "call 28", "mov r8, r0")


def _adjust(w: _Writer) -> None:
    """Move the packet's head or tail: every packet pointer is stale until reloaded."""
    rng = w.rng
    helper = rng.choice((44, 65))
    delta = rng.choice((-20, -14, -4, -1, 0, 1, 4, 14, 20, 60))
    w.call("mov r1, r6", f"mov r2, {delta}", f"call {helper}")


def _load_bytes(w: _Writer) -> None:
    rng = w.rng
    w.call("mov r1, r6", f"mov r2, {rng.choice((0, 4, 14, 40, 1499))}", "mov r3, r10",
           f"add r3, {rng.choice((-32, -24, -16))}", f"mov r4, {rng.choice((1, 4, 8, 16, 17))}",
           f"call {rng.choice((189, 190))}")


def _ringbuf(w: _Writer) -> None:
    rng = w.rng
    size = rng.choice((8, 16, 64))
    skip = w.label()
    w.lines += ["lddw r1, map:R", f"mov r2, {size}", "mov r3, 0", "call 131", f"jeq r0, 0, {skip}",
                f"stx{rng.choice(SIZES)} [r0{w.offset(0, size - 8):+d}], r8", "mov r1, r0", "mov r2, 0"]
    if rng.random() < 0.95:
        w.lines.append(f"call {rng.choice((132, 133))}")
    w.lines.append(f"{skip}: ja +0")
    w.lines += RELOAD


def _spill(w: _Writer) -> None:
    rng = w.rng
    w.lines.append("stxdw [r10-48], r7")
    if rng.random() < 0.2:
        w.lines.append(rng.choice(("stw [r10-48], 0", "stb [r10-44], 1", "stxdw [r10-48], r8")))
    w.lines += ["ldxdw r4, [r10-48]", f"stx{rng.choice(SIZES)} [r4{w.offset(0, 8):+d}], r8"]


def _loop(w: _Writer) -> None:
    """A bounded counted loop over the value of A."""
    rng = w.rng
    head, count = w.label(), rng.choice((2, 4, 8, 15, 16))
    w.lines += ["mov r5, 0", f"{head}: mov r4, r7", "mov r0, r5", "and r0, 15", "add r4, r0",
                "ldxb r0, [r4+0]", "add r8, r0", "add r5, 1", f"jlt r5, {count}, {head}"]


def _local_call(w: _Writer) -> None:
    rng = w.rng
    name = f"f{w.label()}"
    w.call("mov r1, r8", "mov r2, r10", "add r2, -16", f"call local {name}", "mov r8, r0")
    body = [f"{name}: mov r0, r1", f"stxdw [r2+{rng.choice((0, -8, 8))}], r1", f"add r0, {w.imm()}", "exit"]
    if rng.random() < 0.5:
        body[1:1] = ["stdw [r10-8], 1", "ldxdw r3, [r10-8]", "add r1, r3"]
    w.tail += body


def _bpf_loop(w: _Writer) -> None:
    rng = w.rng
    name = f"cb{w.label()}"
    w.call(f"mov r1, {rng.choice((0, 1, 5, 100))}", f"lddw r2, func:{name}", "mov r3, r10", "add r3, -16",
           "mov r4, 0", "call 181", "mov r9, r0")
    w.tail += [f"{name}: ldxdw r0, [r2+0]", "add r0, r1", "stxdw [r2+0], r0", f"mov r0, {rng.choice((0, 0, 1))}",
               "exit"]


Snippet = Callable[[_Writer], None]
SNIPPETS: tuple[Snippet, ...] = (_packet_check, _packet_access, _packet_access, _map_value, _stack, _alu, _alu,
                                 _branch, _lookup, _update, _csum, _adjust, _load_bytes, _ringbuf, _spill, _loop,
                                 _local_call, _bpf_loop)


def _snippet(w: _Writer, exclude: Snippet | None = None) -> None:
    choice = w.rng.choice(SNIPPETS)
    while choice is exclude:
        choice = w.rng.choice(SNIPPETS)
    choice(w)


def xdp_program(rng: random.Random) -> str:
    """The assembly text of one random XDP program using the maps of ``MAP_NAMES``."""
    w = _Writer(rng)
    for _ in range(rng.randint(1, 8)):
        _snippet(w)
    ret = rng.choice(("mov r0, 2", "mov r0, 1", "mov r0, 3", "mov r0, r8\nand r0, 3"))
    w.lines += [*ret.split("\n"), "exit", "out: mov r0, 2", "exit", *w.tail]
    return "\n".join(w.lines)


def mutate_bytecode(rng: random.Random, code: bytes) -> bytes:
    """``code`` with one field of one 8-byte slot changed, or two slots swapped."""
    slots = [list(SLOT.unpack_from(code, i)) for i in range(0, len(code) - len(code) % 8, 8)]
    if not slots:
        return code
    i = rng.randrange(len(slots))
    opcode, regs, off, imm = slot = slots[i]
    match rng.randrange(7):
        case 0:
            slot[3] = max(-(2**31), min(2**31 - 1, rng.choice((*INTERESTING, imm + 1, imm - 1, imm * 2))))
        case 1:
            slot[2] = max(-(2**15), min(2**15 - 1, off + rng.choice((-8, -1, 1, 8, -256))))
        case 2:
            slot[1] = (regs & 0xF0) | rng.randrange(11)
        case 3:
            slot[1] = (regs & 0x0F) | rng.randrange(11) << 4
        case 4:  # another size or operation of the same class
            slot[0] = (opcode & 0x07) | rng.randrange(32) << 3
        case 5 if opcode != LDDW_OPCODE:  # gone: a no-op jump in its place keeps the offsets
            slots[i] = [InsnClass.JMP | JmpOp.JA, 0, 0, 0]
        case _:
            j = rng.randrange(len(slots))
            slots[i], slots[j] = slots[j], slot
    return b"".join(SLOT.pack(*s) for s in slots)
