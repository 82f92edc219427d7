"""The local stack: emulators, simulated gateway, provisioning and the `make run` demo."""
