"""A fork server for the test suite's CLI runs (`conftest.run_cli`).

A `python -m tunekit ...` process spends about 6 of its 8 seconds on a tiny recipe importing torch, transformers,
peft, trl and datasets. This process imports them once, then forks one child per request; the child sets the
request's working directory, environment and argv, sends stdout/stderr to the request's files and runs
`python -m tunekit` as the interpreter would (`runpy`, exit code from SystemExit, atexit handlers, non-daemon
threads joined). Of tunekit, only `tunekit.quiet` is imported here (its settings come before the libraries' import,
as in the CLI); the rest is imported fresh in every child: nothing of one run is seen by the next.

Protocol (this process's stdin/stdout, one JSON object a line): a request
{"args", "cwd", "env", "stdout", "stderr"} is answered {"pid": N} when the child starts and {"code": C} when it
ended (C as subprocess reports it: negative for a signal).
"""

from __future__ import annotations

import json
import os
import sys


def _child(req: dict) -> None:
    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_TRUNC)):
            f = os.open(path, flags)
            os.dup2(f, fd)
            os.close(f)
        import signal

        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)
        sys.path[0] = os.getcwd()  # as `python -m` puts the working directory first
        sys.argv = [sys.executable, *req["args"]]
        code = _run()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run() -> int:
    import atexit
    import runpy
    import threading
    import traceback

    code = 0
    try:
        runpy.run_module("tunekit", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    threading._shutdown()  # type: ignore[attr-defined]  # the interpreter joins non-daemon threads at exit
    atexit._run_exitfuncs()
    return code


def main() -> None:
    del sys.path[0]  # this file's folder (tests/): a child puts its working directory there
    from tunekit.quiet import quiet_libraries

    quiet_libraries()  # as the CLI does before it imports a library (a --verbose run is not forked: conftest)
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401
    from peft.tuners import lora  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401
    from trl.trainer import sft_trainer  # noqa: F401

    def answer(obj: dict) -> None:
        os.write(out, (json.dumps(obj) + "\n").encode())

    out = os.dup(1)  # answers go here; a child's fd 1 is its own stdout file
    answer({"ready": True})
    for line in sys.stdin.buffer:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(out)
            _child(req)
        answer({"pid": pid})
        _, status = os.waitpid(pid, 0)
        answer({"code": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
