"""Write ``jitbpf/linux/allowlists.py``: which kernel helpers each program type may call, as the
running kernel answers a privileged loader. Each helper id is loaded once per program type as
``call N; r0 = 0; exit``: a log saying the type cannot use it (or knows no such function) is a
refusal, anything else (a load, or a complaint about the arguments) an allowance.
Usage (as root): .venv/bin/python tools/allowlists.py"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jitbpf.asm import assemble
from jitbpf.linux.helperids import KERNEL_HELPER_IDS
from jitbpf.linux.programs import PROGRAM_TYPES, ProgType
from tests import kernel_oracle

PROGRAM_TYPES_BY_NAME = {info.name: t for t, info in PROGRAM_TYPES.items()}
OUT = Path(__file__).resolve().parents[1] / "jitbpf" / "linux" / "allowlists.py"
REFUSALS = ("cannot use helper", "unknown func", "invalid func", "not supported for program type")
# The attach type each type is measured with where the kernel wants one (its lists depend on it):
# cgroup/connect4 (which may call bpf_bind), cgroup/sock_create, sk_lookup, sk_reuseport/migrate,
# flow_dissector, netfilter (whose context is BTF-typed, with no attach target), and
# cgroup/getsockopt (setsockopt programs may also call bpf_setsockopt and bpf_getsockopt: taking
# getsockopt's list, jitbpf refuses those calls rather than allow too much).
ATTACH = {ProgType.CGROUP_SOCK_ADDR: 10, ProgType.CGROUP_SOCK: 2, ProgType.SK_LOOKUP: 36, ProgType.SK_REUSEPORT: 40,
          ProgType.FLOW_DISSECTOR: 17, ProgType.CGROUP_SOCKOPT: 21, ProgType.NETFILTER: 45}
# Sections whose attach type gives their programs a list of their own (the type's and the attach
# type it is measured with): cgroup/setsockopt programs may call bpf_setsockopt and bpf_getsockopt.
HOOKS = {"cgroup/setsockopt": (ProgType.CGROUP_SOCKOPT, 22)}


def allowed(prog_type: ProgType, attach_type: int | None = None) -> list[int]:
    """The helper ids the kernel lets a program of ``prog_type`` call (loaded for ``attach_type``,
    by default the one ATTACH gives)."""
    out = []
    attach = ATTACH.get(prog_type, 0) if attach_type is None else attach_type
    for hid in KERNEL_HELPER_IDS:
        verdict = kernel_oracle.kernel_verify(assemble(f"call {hid}\nmov r0, 0\nexit"), int(prog_type),
                                              expected_attach_type=attach)
        if verdict.accepted or not any(r in verdict.log for r in REFUSALS):
            out.append(hid)
    return out


def main() -> int:
    if not kernel_oracle.available():
        print("needs root and the BPF syscall", file=sys.stderr)
        return 2
    lists: dict[tuple[int, ...], list[str]] = {}  # each distinct list, with the types that have it
    for prog_type, info in sorted(PROGRAM_TYPES.items()):
        if info.btf_typed and prog_type not in ATTACH:
            continue  # loading those needs an attach target: their lists stay written by hand
        lists.setdefault(tuple(allowed(prog_type)), []).append(info.name)
    hooks = {section: tuple(allowed(t, attach)) for section, (t, attach) in HOOKS.items()}
    for ids in hooks.values():
        lists.setdefault(ids, [])
    sets, rows = [], []
    var_of: dict[tuple[int, ...], str] = {}
    for ids, names in lists.items():
        lines, line = [], ""
        for hid in ids:
            item = f"{hid}, "
            if len(line) + len(item) > 112:
                lines.append(line.rstrip())
                line = ""
            line += item
        lines.append(line.rstrip())
        body = "\n".join(f"    {x}" for x in lines)
        hooked = [s for s, h in hooks.items() if h == ids]
        var = f"_{names[0].upper()}" if names else "_" + hooked[0].replace("/", "_").upper()
        var_of[ids] = var
        sets.append(f"{var} = frozenset({{  # {', '.join(names + hooked)}\n{body}\n}})")
        rows += [f"    {int(PROGRAM_TYPES_BY_NAME[n])}: {var},  # {n}" for n in names]
    release = ".".join(platform.release().split(".")[:2])
    OUT.write_text(f'''"""The kernel helpers each program type may call, by program type number: what Linux
{release} answers a privileged loader, measured by ``tools/allowlists.py`` (one load of each helper
id per type). Program types that need an attach target to load (the BTF-typed ones) are not
measured: ``jitbpf.linux.programs`` lists theirs."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

MEASURED_ON = "{release}"  # the kernel release (major.minor) measured

''' + "\n\n".join(sets) + '''

ALLOWED: Mapping[int, frozenset[int]] = MappingProxyType({
''' + "\n".join(sorted(rows, key=lambda r: int(r.split(":")[0]))) + '''
})

# Sections whose programs the kernel gives a list of their own, by their attach type.
ALLOWED_BY_SECTION: Mapping[str, frozenset[int]] = MappingProxyType({
''' + "\n".join(f'    "{s}": {var_of[ids]},' for s, ids in hooks.items()) + "\n})\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
