"""Pickling of VMs and maps, so that a loaded program can run in other processes (multiprocessing,
Dask, Ray) over inputs of their own.

A VM travels as what rebuilds it: its bytecode and options, its program type, its maps with their
contents and its helpers. Helpers that come with the program type or the standard set are
rebuilt by the receiving VM itself (they are bound to it); any other helper travels as its
Python function, which must then be picklable (a module-level function, not a lambda or a
closure), and one with only native code (an address in this process) cannot travel at all.
Maps travel as their shape and their elements, byte for byte: hash maps, arrays (per-CPU too) and
LPM tries; the others (event buffers, queues, maps of programs, sockets or devices) hold state of
this process and cannot be pickled.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from jitbpf import cfg
from jitbpf.helpers import Helper
from jitbpf.linux.maps import BpfMap, MapType

if TYPE_CHECKING:
    from jitbpf.vm import VM

# Maps whose whole state is their elements (get_next_key lists them all).
_ELEMENT_TYPES = frozenset({MapType.HASH, MapType.ARRAY, MapType.PERCPU_HASH, MapType.PERCPU_ARRAY,
                            MapType.LPM_TRIE})
# What a map object holds about its C storage in this process: made afresh on the other side.
_NATIVE_ATTRS = frozenset({"_nat", "_ptr", "address", "num_cpus", "_stride", "_closed", "_freed", "_users",
                           "_holders", "_regions"})
_EXIT = b"\x95" + bytes(7)  # a program of one exit, for the helper set a bare VM starts with


def reduce_map(m: BpfMap) -> tuple[Any, ...]:
    """``BpfMap.__reduce__``: the map's class, shape, Python-side attributes and elements."""
    if m.map_type not in _ELEMENT_TYPES:
        raise pickle.PicklingError(f"map {m.name!r} ({m.map_type.name}) cannot be pickled: it holds state of "
                                   "this process (events, queued values, programs, sockets or devices)")
    attrs = {k: v for k, v in vars(m).items() if k not in _NATIVE_ATTRS}
    shape = (m.map_type, m.key_size, m.value_size, m.max_entries, m.flags, m.name)
    return _rebuild_map, (type(m), shape, attrs, m.raw_items())


def _rebuild_map(cls: type[BpfMap], shape: tuple[Any, ...], attrs: dict[str, Any],
                 items: dict[bytes, bytes]) -> BpfMap:
    map_type, key_size, value_size, max_entries, flags, name = shape
    m = cls.__new__(cls)
    BpfMap.__init__(m, MapType(map_type), key_size, value_size, max_entries, flags, name)
    vars(m).update(attrs)
    for key, value in items.items():
        m._update_raw(key, value, 0, f"restoring {name!r}")
    return m


def _builtin_helpers(vm: VM) -> dict[int, str]:
    """Ids and names of the helpers a new VM like ``vm`` gets by itself (program type, standard set)."""
    from jitbpf.vm import VM

    with VM(_EXIT, verify=False, prog_type=vm.prog_type, **_attach_options(vm)) as bare:
        if vm.std is not None and bare.std is None:
            bare.use_standard_helpers()
        return {h.id: h.name for h in bare.helpers.values()}


def _attach_options(vm: VM) -> dict[str, Any]:
    """The attach target and target BTF a BTF-typed VM was made with (none for other types)."""
    state = vm.program_state
    if state is None or state.attach is None:
        return {}
    return {"attach": state.attach.section, "btf": state.btf_source}


def _portable(h: Helper) -> Helper:
    if h.native:
        raise pickle.PicklingError(f"helper {h.id} ({h.name}) is native code of this process and cannot be "
                                   "pickled: register it again in the receiving process")
    try:
        pickle.dumps(h.fn)
    except Exception as exc:  # pickle raises many types for what it cannot take
        raise pickle.PicklingError(f"helper {h.id} ({h.name}): its function cannot be pickled ({exc}); "
                                   "use a module-level function (not a lambda, closure or bound method "
                                   "of an unpicklable object)") from exc
    return Helper(h.id, h.name, h.fn, h.args, h.ret)


def reduce_vm(vm: VM) -> tuple[Any, ...]:
    """``VM.__reduce__``: what ``_rebuild_vm`` needs to make an equivalent VM elsewhere."""
    vm._ensure_open()
    builtin = _builtin_helpers(vm)
    custom = [_portable(h) for h in list(vm.helpers.values()) if builtin.get(h.id) != h.name]
    options = {
        "verify": vm.verify_enabled, "budget": vm.budget, "allow_loops": vm.allow_loops,
        "prog_type": vm.prog_type, "max_tail_calls": vm.max_tail_calls, "elide_checks": vm.elide_checks,
        "privileged": vm.privileged, "strict_alignment": vm.strict_alignment, "functions": vm.functions,
        # The limit it was made with is not kept: one that admits the program does as well.
        "max_insns": max(cfg.DEFAULT_MAX_INSNS, len(vm.program)), **_attach_options(vm),
    }
    state = {"std": vm.std is not None, "helpers": custom, "maps": dict(vm.maps), "checked": vm._checked,
             "compiled": vm._jit is not None}
    return _rebuild_vm, (type(vm), vm.program.to_bytes(), options, state)


def _rebuild_vm(cls: type[VM], code: bytes, options: dict[str, Any], state: dict[str, Any]) -> VM:
    vm = cls(code, **options)
    if state["std"] and vm.std is None:
        vm.use_standard_helpers()
    for h in state["helpers"]:
        vm.register_helper(h)
    for handle, m in state["maps"].items():
        vm.add_map(m, handle)
    if state["checked"] or state["compiled"]:
        vm.check()
    if state["compiled"]:
        vm.jit_compile()
    return vm
