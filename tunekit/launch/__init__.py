"""Launch stage: one process, or tunekit relaunched under torchrun / accelerate launch.

    schema.py    the `launch:` recipe section
    rules.py     which methods and options combine with which strategies (checked at validate time), and the
                 machine-dependent checks made before any worker starts
    engines.py   DeepSpeed / FSDP2 configs (shipped by name, recipe overrides on top) and TrainingArguments keywords;
                 the engine checks and consolidated saves of a built trainer
    relaunch.py  re-executing `tunekit train` under torchrun / accelerate launch
    runtime.py   this process's place in a run (rank, world size, strategy) and the process group
    signals.py   SIGINT/SIGTERM across processes: repeats of one request, the parent's forwarding, and how workers
                 that stopped on a signal tell the parent
"""
