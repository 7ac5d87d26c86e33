"""The local stack: real Kafka, Redis and a Kubernetes control plane as processes.

Nothing here is a mock. Each component is installed from a package registry at a
pinned version into a cache outside the checkout (see :mod:`.install`), then
started on free loopback ports (see :mod:`.components`). ``make stack-up``, the
pytest fixtures and ``make demo`` all go through :class:`.stack.Stack`.
"""
