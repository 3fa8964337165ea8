"""Enter and exit hooks, one module per backend.

Each module exposes ``MODULE`` (the module whose import triggers patching),
``BACKEND`` (the ``anyio.backend`` attribute value) and
``patch(module, runtime) -> unpatch``.
"""
