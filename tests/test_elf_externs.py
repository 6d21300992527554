"""What libbpf does to an object before loading it: ``__kconfig`` externs in a read-only map,
``__ksym`` refused, ``.rodata`` set by the caller then frozen and folded as constants."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import ElfError, MapError, VerifierError
from jitbpf.linux.elf import kconfig_defaults, load_elf
from jitbpf.linux.maps import BPF_F_RDONLY_PROG, Array
from jitbpf.vm import VM
from tests.support import c_builder

CLANG = shutil.which("clang")
LIBBPF_HEADERS = Path("/usr/include/bpf/bpf_helpers.h")
HEADER = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    return c_builder(tmp_path_factory.mktemp("externs"), HEADER)


KCONFIG = """
extern int LINUX_KERNEL_VERSION __kconfig;
extern _Bool LINUX_HAS_SYSCALL_WRAPPER __kconfig;
extern int CONFIG_HZ __kconfig __weak;
extern char CONFIG_TRI __kconfig;
SEC("xdp") int prog(struct xdp_md *ctx)
{ return LINUX_KERNEL_VERSION + LINUX_HAS_SYSCALL_WRAPPER + CONFIG_HZ + CONFIG_TRI; }
"""


@pytest.mark.parametrize("engine", ["interp", "jit"])
@pytest.mark.parametrize(("given", "extra"), [({"CONFIG_TRI": "m"}, 2), ({"CONFIG_TRI": "y", "CONFIG_HZ": 250}, 251),
                                              ({"CONFIG_TRI": False, "LINUX_KERNEL_VERSION": 7}, 0)])
def test_kconfig_values(build: Callable[[str], Path], engine: str, given: dict[str, int | bool | str],
                        extra: int) -> None:
    obj = load_elf(build(KCONFIG), kconfig=given)
    version = given.get("LINUX_KERNEL_VERSION", kconfig_defaults()["LINUX_KERNEL_VERSION"])
    assert obj.map_defs[".kconfig"].flags & BPF_F_RDONLY_PROG
    action, _ = obj.programs["prog"].run(bytes(64), engine=engine)
    assert action == int(version) + 1 + extra


def test_kernel_version_default_is_the_running_kernel() -> None:
    import os

    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    assert int(kconfig_defaults()["LINUX_KERNEL_VERSION"]) >> 8 == major << 8 | minor


@pytest.mark.parametrize(("source", "given", "message"), [
    (KCONFIG, {}, "__kconfig extern CONFIG_TRI has no value"),
    (KCONFIG, {"CONFIG_TRI": "maybe"}, "CONFIG_TRI: value 'maybe' is not y, m, n"),
    ("extern int LINUX_NO_SUCH __kconfig;\nSEC(\"xdp\") int p(struct xdp_md *c) { return LINUX_NO_SUCH; }", {},
     "LINUX_NO_SUCH is not one libbpf knows"),
    ("extern char CONFIG_S[8] __kconfig;\nSEC(\"xdp\") int p(struct xdp_md *c) { return CONFIG_S[0]; }",
     {"CONFIG_S": 3}, "char array: give it a string"),
    ("extern const int some_kernel_var __ksym;\nSEC(\"xdp\") int p(struct xdp_md *c) { return some_kernel_var; }",
     {}, "'some_kernel_var' is a kernel symbol"),
    ("extern int bpf_kfunc_x(int) __ksym;\nSEC(\"xdp\") int p(struct xdp_md *c) { return bpf_kfunc_x(1); }",
     {}, "'bpf_kfunc_x' is a kernel symbol"),
])
def test_extern_errors(build: Callable[[str], Path], source: str, given: dict[str, int | bool | str],
                       message: str) -> None:
    with pytest.raises(ElfError, match=message):  # a kernel symbol: when its program is used
        load_elf(build(source), kconfig=given).programs["p"].vm()


def test_kconfig_string(build: Callable[[str], Path]) -> None:
    obj = load_elf(build("extern char CONFIG_S[4] __kconfig;\n"
                         "SEC(\"xdp\") int p(struct xdp_md *c) { return CONFIG_S[1] + CONFIG_S[3]; }"),
                   kconfig={"CONFIG_S": "abcdef"})
    assert obj.programs["p"].run(bytes(64))[0] == ord("b")


RODATA = """
const volatile int mode = 0;
const volatile unsigned char extra = 0;
SEC("xdp") int prog(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    if (mode == 1)
        return *(unsigned char *)data;  /* unchecked: verifiable only while mode is not 1 */
    return mode + extra;
}
"""


@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_rodata_set_before_verification_is_folded(build: Callable[[str], Path], engine: str) -> None:
    obj = load_elf(build(RODATA))
    obj.variable("mode")[:] = (5).to_bytes(4, "little")
    obj.variable("extra")[:] = b"\xff"
    assert obj.programs["prog"].run(bytes(64), engine=engine)[0] == 5 + 255  # the unchecked path is pruned
    with pytest.raises(TypeError):
        obj.variable("mode")[:] = bytes(4)  # frozen once a program was verified, as libbpf freezes it
    other = load_elf(build(RODATA))
    other.variable("mode")[:] = (1).to_bytes(4, "little")
    with pytest.raises(VerifierError, match="outside of the packet"):
        other.programs["prog"].run(bytes(64), engine=engine)


def test_frozen_array_refuses_writes() -> None:
    a = Array(value_size=4, max_entries=1, flags=BPF_F_RDONLY_PROG)
    a[0] = b"\x07\0\0\0"
    a.freeze()
    assert bytes(a.view(0)) == b"\x07\0\0\0"
    with pytest.raises(MapError, match="frozen"):
        a[0] = b"\x08\0\0\0"
    assert a.view(0).readonly


def test_a_read_only_map_of_the_program_stays_writable_from_python() -> None:
    """Only a loader's global data is frozen before verification; a BPF_F_RDONLY_PROG map of the
    program's own is frozen by its owner (BPF_MAP_FREEZE), and until then read as a variable."""
    ro = Array(value_size=4, max_entries=1, flags=BPF_F_RDONLY_PROG, name="ro")
    vm = VM(assemble("lddw r1, map_value:ro+0\nldxw r0, [r1+0]\nexit", maps={"ro": 1}))
    vm.add_map(ro, 1)
    vm.check()
    ro[0] = (9).to_bytes(4, "little")
    assert vm.execute() == 9 and vm.execute_jit() == 9
    assert not ro.frozen


def test_a_program_using_kernel_symbols_leaves_the_others_loadable(build: Callable[[str], Path]) -> None:
    obj = load_elf(build("extern int bpf_kfunc_here(void) __ksym;\n"
                         "SEC(\"xdp\") int uses_it(struct xdp_md *c) { return bpf_kfunc_here(); }\n"
                         "SEC(\"xdp\") int plain(struct xdp_md *c) { return 2; }"))
    assert obj.programs["plain"].vm().run_xdp(bytes(64))[0] == 2
    assert "kernel symbol" in obj.programs["uses_it"].unavailable
    with pytest.raises(ElfError, match="'bpf_kfunc_here' is a kernel symbol"):
        obj.programs["uses_it"].vm()


def test_a_map_sized_by_its_loader_names_the_setting(build: Callable[[str], Path]) -> None:
    """Tools that size a map at load time (bpf_map__set_max_entries) leave max_entries 0 in the
    object: the refusal says how to give it, and the object loads once it is given."""
    src = ("struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, int); __type(value, long); }\n"
           "  counts SEC(\".maps\");\n"
           "SEC(\"xdp\") int prog(struct xdp_md *c) { int k = 0; long *v = bpf_map_lookup_elem(&counts, &k);\n"
           "  return v ? 2 : 1; }")
    with pytest.raises(ElfError, match=r"map_settings=\{'counts': \{'max_entries': N\}\}"):
        load_elf(build(src))
    obj = load_elf(build(src), map_settings={"counts": {"max_entries": 4}})
    assert obj.maps["counts"].max_entries == 4
    assert obj.programs["prog"].vm().run_xdp(bytes(64))[0] == 2
