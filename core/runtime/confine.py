"""``python -m core.runtime.confine SPEC -- PROGRAM ARGS...``: confine, then exec an agent.

How an ``[agent] command`` program is sandboxed: the bot starts this with the ``Spec`` as JSON,
it applies every layer to itself (``sandbox.confine``) and replaces itself with the program,
which inherits them all (uid, no capabilities, no_new_privs, Landlock, seccomp, rlimits survive
``execve``). A layer that fails under strict mode: one line on stderr (``agent.log``) and exit
70, before the program ever runs, so it never sees a key.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Final

from core.runtime import sandbox

EXIT_SANDBOX: Final = 70


def _spec(blob: str) -> sandbox.Spec:
    data = json.loads(blob)
    limits = sandbox.Limits(**data.pop("limits"))
    for key in ("read_paths", "exec_paths", "connect_ports"):
        data[key] = tuple(data[key])
    return sandbox.Spec(limits=limits, **data)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m core.runtime.confine SPEC -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    spec = _spec(argv[0])
    try:
        sandbox.confine(spec)
    except sandbox.SandboxError as exc:
        print(f"agent sandbox: {exc}; the agent was not started", file=sys.stderr)
        return EXIT_SANDBOX
    program = argv[2:]
    try:
        os.execvp(program[0], program)  # noqa: S606 - the operator's own [agent] command
    except OSError as exc:
        print(f"agent command {program[0]}: {exc.strerror}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
