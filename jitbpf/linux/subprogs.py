"""Global functions: the BTF prototypes against which the kernel verifies a program's non-static
functions.

The kernel verifies a global function once, on its own, for any arguments that match its BTF
prototype (and checks each call against the prototype), where a static function is verified
again at each call in its caller's state. The prototype's rules are the kernel's: the function
returns an integer or enum; each of at most five arguments is an integer or enum (any number), a
pointer tagged ``arg:ctx`` or to the program type's context struct (the context), or a pointer
to a sized type (that many bytes of memory, possibly NULL unless tagged ``arg:nonnull``).
Anything else is a prototype the kernel refuses. Functions whose arguments carry tags jitbpf
does not model (``arg:trusted``, ``arg:untrusted``, ``arg:arena``, dynptrs) are left to be
verified at each call, as static ones are.
"""

from __future__ import annotations

from collections.abc import Mapping

from jitbpf.errors import ElfError
from jitbpf.linux.elf import Btf, BtfKind, BtfType
from jitbpf.verifier import GlobalFunc, Param, ParamKind

MAX_ARGS = 5  # arguments a BPF function may take (r1-r5)
LINKAGE_GLOBAL = 1  # BTF_FUNC_GLOBAL
TAG_PREFIX = "arg:"  # decl tags on parameters that the kernel reads (__arg_ctx, __arg_nonnull, ...)
MODELLED_TAGS = frozenset({"arg:ctx", "arg:nonnull", "arg:nullable"})
NUMBERS = (BtfKind.INT, BtfKind.ENUM, BtfKind.ENUM64)
EINVAL = -22  # what the kernel's log prints with a size it cannot determine


def global_functions(btf: Btf, functions: Mapping[int, str], ctx_struct: str) -> dict[int, GlobalFunc]:
    """The global functions among ``functions`` (entry slot -> name), by entry slot, with their
    prototypes read from ``btf``; ``ctx_struct`` names the program type's context struct."""
    funcs = {t.name: (i, t) for i, t in enumerate(btf.types) if t.kind is BtfKind.FUNC}
    tags: dict[tuple[int, int], set[str]] = {}
    for t in btf.types:
        if t.kind is BtfKind.DECL_TAG and t.name.startswith(TAG_PREFIX):
            tags.setdefault((t.size_or_type, t.encoding), set()).add(t.name)
    found: dict[int, GlobalFunc] = {}
    for entry, name in functions.items():
        func_id, func = funcs.get(name, (0, None))
        if func is None or func.encoding != LINKAGE_GLOBAL:
            continue
        try:
            proto = _prototype(btf, func, func_id, tags, ctx_struct)
        except ElfError as exc:  # a malformed prototype: as the kernel, refuse the calls
            proto = GlobalFunc(name, error=f"the BTF prototype of {name}() is malformed: {exc.message}")
        if proto is not None:
            found[entry] = proto
    return found


def _prototype(btf: Btf, func: BtfType, func_id: int, tags: Mapping[tuple[int, int], set[str]],
               ctx_struct: str) -> GlobalFunc | None:
    """``func``'s prototype, or None when it uses what jitbpf verifies only at each call."""
    name = func.name
    proto = btf.get(func.size_or_type)
    if proto.kind is not BtfKind.FUNC_PROTO:
        return GlobalFunc(name, error=f"BTF type of {name}() is not a function prototype")
    if btf.resolve(proto.size_or_type)[1].kind not in NUMBERS:
        return GlobalFunc(name, error=f"Global function {name}() doesn't return scalar. Only those are supported.")
    if len(proto.members) > MAX_ARGS:
        return GlobalFunc(name, error=f"Function {name} has {len(proto.members)} > {MAX_ARGS} args")
    params: list[Param] = []
    for i, (_pname, type_id, _) in enumerate(proto.members):
        own = tags.get((func_id, i), set())
        if own - MODELLED_TAGS:
            return None
        _, t = btf.resolve(type_id)
        if t.kind is BtfKind.PTR:
            target_id, target = btf.resolve(t.size_or_type)
            if "arg:ctx" in own or (target.kind is BtfKind.STRUCT and ctx_struct and target.name == ctx_struct):
                params.append(Param(ParamKind.CTX))
                continue
            if target.kind is BtfKind.STRUCT and target.name == "bpf_dynptr":
                return None
            if target.kind not in (*NUMBERS, BtfKind.STRUCT, BtfKind.UNION, BtfKind.ARRAY, BtfKind.PTR,
                                   BtfKind.FLOAT):
                kind = "UNKNOWN" if target.kind is BtfKind.UNKN else target.kind.name
                return GlobalFunc(name, error=f"arg#{i} reference type('{kind} {target.name}') size cannot be "
                                              f"determined: {EINVAL}")
            params.append(Param(ParamKind.MEM, btf.size_of(target_id), nullable="arg:nonnull" not in own))
        elif "arg:ctx" in own:
            return GlobalFunc(name, error=f"arg#{i} has arg:ctx tag, but is not a pointer")
        elif t.kind in NUMBERS:
            params.append(Param(ParamKind.SCALAR))
        else:
            return GlobalFunc(name, error=f"Arg#{i} type {t.kind.name} in {name}() is not supported yet.")
    return GlobalFunc(name, tuple(params))
