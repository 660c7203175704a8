"""`tunekit plan`: memory per device, time and fit of a recipe before anything loads (docs/plan.md).

hardware (GPU table) -> params (the model + method on the meta device: weights, gradients, optimizer state,
exact) -> activations (the model's shape x batch x sequence) -> sharding (ZeRO / FSDP / offload) -> estimate
(the parts per device, the verdict, the changes that make it fit) -> throughput (time) -> data_plan -> report.
"""
