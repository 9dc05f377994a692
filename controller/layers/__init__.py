"""Policy layers, VFP-style: one module per layer, each owning its tables.

The order they run in is declared once, in `controller.compile.pipeline`. A layer may import
only dataplane/, topology/, controller/spaces/ and other layers.
"""
