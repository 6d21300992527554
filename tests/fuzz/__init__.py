"""Out-of-process fuzzing of jitbpf: generated and mutated inputs (bytecode, assembly, ELF objects
with their CO-RE target BTF, packet captures), each run in a worker process under a time limit.

A finding is a crash of the worker (a signal), a hang, an exception that is not a ``BpfError`` (or
is an ``InternalError``), the two engines disagreeing on a verified program, or a run of the
interpreter failing on an access the verifier proved in bounds. ``tools/fuzz.py`` is the command
line; ``tests/test_fuzzing.py`` runs a short campaign of each kind.
"""
