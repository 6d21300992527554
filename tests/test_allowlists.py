"""The helpers each program type may call are the kernel's: the measured lists of
``jitbpf.linux.allowlists`` against the running kernel (as root, on the release they were
measured on), and what jitbpf's verifier says of one call of each helper."""

from __future__ import annotations

import platform

import pytest

from jitbpf.asm import assemble
from jitbpf.errors import VerifierError
from jitbpf.linux.allowlists import ALLOWED, ALLOWED_BY_SECTION, MEASURED_ON
from jitbpf.linux.helperids import KERNEL_HELPER_IDS
from jitbpf.linux.programs import PROGRAM_TYPES, ProgType, check_program_helpers, section_helpers
from jitbpf.vm import VM
from tests import kernel_oracle
from tools.allowlists import HOOKS, allowed

MEASURED = sorted(ProgType(t) for t in ALLOWED)
# Helpers a 6.18 build may refuse although mainline's lists (the ones measured) give them:
# a 6.18.44 build was seen refusing bpf_xdp_adjust_meta to XDP programs (mainline gives it them).
BUILD_DIFFERENCES: dict[ProgType, set[int]] = {ProgType.XDP: {54}}


def test_every_type_that_loads_without_a_target_is_measured() -> None:
    # netfilter's context is BTF-typed, but the kernel loads it without an attach target
    assert set(MEASURED) == {t for t, info in PROGRAM_TYPES.items() if not info.btf_typed} | {ProgType.NETFILTER}
    assert all(PROGRAM_TYPES[t].helpers == ALLOWED[int(t)] for t in MEASURED)


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.skipif(".".join(platform.release().split(".")[:2]) != MEASURED_ON,
                    reason=f"the lists were measured on Linux {MEASURED_ON}")
@pytest.mark.parametrize("prog_type", MEASURED, ids=[PROGRAM_TYPES[t].name for t in MEASURED])
def test_the_lists_are_the_running_kernels(prog_type: ProgType) -> None:
    running, measured = set(allowed(prog_type)), ALLOWED[int(prog_type)]
    assert running <= measured, f"the running kernel also gives {sorted(running - measured)}"
    assert measured - running <= BUILD_DIFFERENCES.get(prog_type, set()), \
        f"the running kernel refuses {sorted(measured - running)}"


@pytest.mark.parametrize("prog_type", MEASURED, ids=[PROGRAM_TYPES[t].name for t in MEASURED])
def test_a_refused_helper_is_named(prog_type: ProgType) -> None:
    refused = next(h for h in KERNEL_HELPER_IDS if h not in ALLOWED[int(prog_type)])
    vm = VM(assemble(f"call {refused}\nmov r0, 0\nexit"), prog_type=prog_type)
    with pytest.raises(VerifierError, match=f"may not call helper .*#{refused}"):
        vm.check()


@pytest.mark.skipif(not kernel_oracle.available(), reason="needs root and the BPF syscall")
@pytest.mark.skipif(".".join(platform.release().split(".")[:2]) != MEASURED_ON,
                    reason=f"the lists were measured on Linux {MEASURED_ON}")
@pytest.mark.parametrize("section", sorted(HOOKS))
def test_the_hooks_lists_are_the_running_kernels(section: str) -> None:
    assert allowed(*HOOKS[section]) == sorted(ALLOWED_BY_SECTION[section])


# bpf_setsockopt and bpf_getsockopt: the kernel gives them to cgroup/setsockopt programs only.
@pytest.mark.parametrize(("section", "helper", "refused"), [
    ("cgroup/getsockopt", 49, True), ("cgroup/getsockopt", 57, True),
    ("cgroup/setsockopt", 49, False), ("cgroup/setsockopt", 57, False),
])
def test_a_sockopt_hook_has_its_own_list(section: str, helper: int, refused: bool) -> None:
    info = PROGRAM_TYPES[ProgType.CGROUP_SOCKOPT]
    assert (helper not in section_helpers(info, section)) is refused
    vm = VM(assemble(f"call {helper}\nmov r0, 1\nexit"), prog_type=ProgType.CGROUP_SOCKOPT)
    with pytest.raises(VerifierError, match=f"may not call helper .*#{helper}"):
        check_program_helpers(vm, info, "cgroup/getsockopt")
    if not refused:
        check_program_helpers(vm, info, section)


@pytest.mark.parametrize("helper", [32767, 49])  # no such helper; bpf_setsockopt, which XDP may not call
def test_a_call_no_path_reaches_is_not_refused(helper: int) -> None:
    """As the kernel: a call is checked where a path reaches it, so dead code (code behind a
    condition CO-RE settles, say) may call what the program type or the kernel lacks; without
    the verifier every call is checked where it stands."""
    text = f"mov r0, 2\njeq r0, 2, +1\ncall {helper}\nexit"
    assert VM(assemble(text), prog_type=ProgType.XDP).run_xdp(bytes(64))[0] == 2
    with pytest.raises(VerifierError, match=r"nonexistent function|may not call helper") as reached:
        VM(assemble(text.replace("jeq r0, 2", "jeq r0, 3")), prog_type=ProgType.XDP).check()
    assert reached.value.pc == 2
    with pytest.raises(VerifierError, match=r"nonexistent function|may not call helper"):
        VM(assemble(text), prog_type=ProgType.XDP, verify=False).check()
